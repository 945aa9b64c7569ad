//! Workers: drain the inbox per tenant into its database.
//!
//! A tenant is ready when this router committed rows for it (woken at once), a domain
//! write through this router left events in its outbox (ready on its relay turn: at most
//! one apply start per `inbox.relay_every_ms`, so a busy tenant's writes share relays) or
//! a poll of the inbox finds it pending (rows written by other routers, or left by a
//! failed apply once its backoff is over). Ready tenants are served round robin, at most
//! `inbox.workers` at once and each by one worker at a time; an apply takes up to
//! `inbox.apply_rows` of the tenant's oldest rows, so a busy tenant cannot hold the
//! workers. Across routers, a transaction-scoped advisory lock on the tenant keeps one
//! apply per tenant at a time, so rows are applied in inbox order.
//!
//! One apply, in one ingest transaction: lock the tenant and read its pending rows (one
//! statement); one visit to the tenant's database (delete the outbox rows the previous
//! apply relayed, store the rows in one transaction with the webhook statements:
//! idempotent by `wamid`, statuses monotonic; read the outbox); one statement marking the
//! rows applied and relaying the events; commit. A crash between the commits applies the
//! rows again, which changes nothing, and relays the events again, which the log ignores.
//! A tenant database that is down or over budget puts the tenant in backoff
//! (`inbox_atrasos`, seen by every router and by `tenantctl inbox status`); rows the
//! tenant's database refuses for good are tried one by one and the refused ones become
//! dead letters. A tenant being restored is paused.

use super::{is_data_error, Inbox, Wake};
use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::path::{check_status, Access, TenantPath};
use crate::routes::{CachedRoute, RouteKey, Unroutable};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::{DeadLetterKind, WebhookSource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use whatsapp_ingest::store::{self, Batch, Stored};

/// Pending tenants not in backoff.
const PENDING: &str = "SELECT p.empresa_id FROM \
     (SELECT DISTINCT empresa_id FROM inbox WHERE aplicado_em IS NULL) p \
     LEFT JOIN inbox_atrasos a USING (empresa_id) \
     WHERE a.proxima_em IS NULL OR a.proxima_em <= now() LIMIT 100000";
/// Locks the tenant (a session lock, released by [`UNLOCK`] or with the connection) and
/// reads its oldest pending rows: one row with `ok = false` when another apply holds it,
/// one with no id when nothing is pending. With the ingest server's clock (ms since the
/// epoch), which dates the outbox read that follows for [`FINISH`]'s relay marks.
const CLAIM: &str = "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($1) AS ok, \
       extract(epoch FROM now())::float8 * 1000 AS t) \
     SELECT l.ok, i.id, i.servidor, i.fonte, i.numero, i.lote, i.idade, l.t FROM l LEFT JOIN LATERAL \
       (SELECT id, servidor, fonte, numero, lote, \
          extract(epoch FROM now() - recebido_em)::float8 AS idade \
        FROM inbox WHERE l.ok AND empresa_id = $2 AND aplicado_em IS NULL ORDER BY id LIMIT $3) i \
     ON true";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
/// Marks rows applied, clears the tenant's backoff and its stale relay mark (when `$4`:
/// the visit succeeded; `$12` is [`RELAYED`]'s cutoff) and relays events: one statement,
/// one transaction. The rows are also looked up by `id = ANY($1)`, so whichever join the
/// plan picks, it reads them through the primary key (never a scan of the whole inbox).
pub const FINISH: &str = "WITH m AS (UPDATE inbox SET aplicado_em = now(), erro = e.erro \
       FROM unnest($1::int8[], $2::text[]) AS e(id, erro) \
       WHERE inbox.id = e.id AND inbox.id = ANY($1::int8[]) RETURNING 1), \
     b AS (DELETE FROM inbox_atrasos WHERE empresa_id = $3 AND $4 RETURNING 1), \
     v AS (INSERT INTO eventos (empresa_id, servidor, banco, origem_id, particao, tipo, dados, criado_em) \
       SELECT $3, $5, $6, o, $7, t, d, to_timestamp(ms / 1000.0) \
       FROM unnest($8::int8[], $9::text[], $10::text[], $11::int8[]) AS x(o, t, d, ms) \
       ON CONFLICT (empresa_id, banco, origem_id) DO NOTHING RETURNING 1), \
     r AS (DELETE FROM relay_pendentes WHERE empresa_id = $3 AND $4 \
       AND marcado_em < to_timestamp($12::float8 / 1000) RETURNING 1) \
     SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM b) + (SELECT count(*) FROM v) \
       + (SELECT count(*) FROM r)";
/// Deletes the tenant's relay mark if it was stale before this apply read the outbox
/// (`$2`: the claim's time less three windows, in ms): every write it covered has ended
/// and its events were just read.
const RELAYED: &str =
    "DELETE FROM relay_pendentes WHERE empresa_id = $1 AND marcado_em < to_timestamp($2::float8 / 1000)";
const BACKOFF: &str = "INSERT INTO inbox_atrasos AS a (empresa_id, servidor, tentativas, proxima_em, ultimo_erro) \
     VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', $5) \
     ON CONFLICT (empresa_id) DO UPDATE SET tentativas = a.tentativas + 1, ultimo_erro = $5, \
       servidor = $2, proxima_em = now() + least($4, $3 * 2 ^ least(a.tentativas, 20)) * interval '1 millisecond'";

/// Deletes the outbox rows already relayed (`$2`) and reads the next ones.
const OUTBOX: &str = "WITH f AS (DELETE FROM eventos_saida WHERE id = ANY($2)) \
     SELECT id, tipo, dados::text, (extract(epoch FROM criado_em) * 1000)::int8 \
     FROM eventos_saida WHERE id <> ALL($2) ORDER BY id LIMIT $1";

/// Most outbox events one apply relays.
const OUTBOX_BATCH: i64 = 1_000;

/// One event in a tenant's outbox.
struct OutboxEvent {
    id: i64,
    kind: String,
    data: String,
    at_ms: i64,
}

/// First backoff of a failing tenant, in milliseconds (doubled per failure).
const FIRST_BACKOFF_MS: f64 = 100.0;

/// Advisory-lock key of a tenant's apply (`ib` in the top bytes: apart from other locks).
fn lock_key(tenant_id: i64) -> i64 {
    (0x6962_i64 << 48) | (tenant_id & 0xffff_ffff_ffff)
}

/// How an apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing (more) pending.
    Done,
    /// It took a full batch: more may be pending.
    More,
    /// Not now: another router holds the tenant, or it is being restored or deleted.
    Later,
    /// Its database failed: not before the backoff is over, whatever wakes it.
    Failed,
}

/// What one pending row carried.
struct Row {
    id: i64,
    server: String,
    source: WebhookSource,
    phone: String,
    batch: String,
    age_secs: f64,
}

/// Ready tenants, each applied by one worker at a time. Tenants with an open connection
/// are applied in arrival order by any worker; tenants without one (their apply opens a
/// connection, and when more tenants are busy than a server's budget holds, closes
/// another tenant's) only by [`Ready::cold_slots`] workers at a time, oldest first. Plain
/// round robin over more busy tenants than connections would open a connection for nearly
/// every apply, each evicting the one the next apply needs; this way most applies run on
/// open connections and the others gather bigger batches meanwhile.
#[derive(Default)]
struct Ready {
    order: VecDeque<i64>,
    queued: HashSet<i64>,
    running: HashSet<i64>,
    /// Running applies that had to open a connection.
    cold_running: HashSet<i64>,
    /// Woken while running: ready again once its apply ends (`true`: for inbox rows, at
    /// once; `false`: for events only, on its relay turn).
    again: HashMap<i64, bool>,
    /// When each tenant's last apply started (recent ones only): a relay of domain-write
    /// events waits until `relay_every` after it.
    started: HashMap<i64, Instant>,
    /// Tenants waiting for their relay turn, and when it comes (the heap may hold entries
    /// of tenants no longer waiting: they were woken for rows meanwhile).
    deferred: HashMap<i64, Instant>,
    turns: BinaryHeap<Reverse<(Instant, i64)>>,
    relay_every: Duration,
    /// Tenants whose database failed: failures in a row and when to try again. Wakes
    /// before then are ignored, so a tenant whose database is down costs one attempt
    /// per backoff, not one per delivery.
    backoff: HashMap<i64, (u32, Instant)>,
    /// First and longest backoff.
    backoff_range: (Duration, Duration),
}

/// How far down the queue a tenant with an open connection is looked for.
const WARM_SCAN: usize = 512;

impl Ready {
    fn push(&mut self, id: i64) {
        if let Some((_, until)) = self.backoff.get(&id) {
            if Instant::now() < *until {
                return;
            }
        }
        self.deferred.remove(&id);
        if self.running.contains(&id) {
            self.again.insert(id, true);
        } else if self.queued.insert(id) {
            self.order.push_back(id);
        }
    }

    /// Wakes a tenant for events of domain writes: ready at once unless an apply of it
    /// started less than `relay_every` ago; then on its turn, so that one relay carries
    /// the events of every write meanwhile.
    fn push_events(&mut self, id: i64, now: Instant) {
        if self.queued.contains(&id) || self.deferred.contains_key(&id) {
            return;
        }
        if self.running.contains(&id) {
            self.again.entry(id).or_insert(false);
            return;
        }
        match self.started.get(&id).map(|at| *at + self.relay_every) {
            Some(turn) if turn > now => {
                self.deferred.insert(id, turn);
                self.turns.push(Reverse((turn, id)));
            }
            _ => self.push(id),
        }
    }

    /// The earliest relay turn of a tenant still waiting for it (dropping stale ones).
    fn first_turn(&mut self) -> Option<(Instant, i64)> {
        while let Some(Reverse((at, id))) = self.turns.peek().copied() {
            if self.deferred.get(&id) == Some(&at) {
                return Some((at, id));
            }
            self.turns.pop();
        }
        None
    }

    /// When the next relay turn comes, if any tenant waits for one.
    fn next_turn(&mut self) -> Option<Instant> {
        self.first_turn().map(|(at, _)| at)
    }

    /// Makes the tenants whose relay turn has come ready.
    fn turns_due(&mut self, now: Instant) {
        while let Some((at, id)) = self.first_turn() {
            if at > now {
                break;
            }
            self.turns.pop();
            self.push(id);
        }
    }

    /// Workers that may be opening connections at once.
    fn cold_slots(cfg: &crate::config::Inbox) -> usize {
        match cfg.cold_workers {
            0 => (cfg.workers / 4).max(1),
            n => n,
        }
    }

    /// The next tenant to apply: the longest waiting one if it needs a connection and
    /// fewer than `cold_slots` applies are opening connections; else the first with an
    /// open connection (`warm`); else none for now.
    fn next(&mut self, warm: impl Fn(i64) -> bool, cold_slots: usize) -> Option<i64> {
        let front = *self.order.front()?;
        let cold_free = self.cold_running.len() < cold_slots;
        let at = if !warm(front) && cold_free {
            0
        } else {
            match self.order.iter().take(WARM_SCAN).position(|t| warm(*t)) {
                Some(at) => at,
                None if cold_free => 0,
                None => return None,
            }
        };
        let id = self.order.remove(at)?;
        if !warm(id) {
            self.cold_running.insert(id);
        }
        self.queued.remove(&id);
        self.running.insert(id);
        let now = Instant::now();
        if self.started.len() >= 4096 {
            let every = self.relay_every;
            self.started.retain(|_, at| now.duration_since(*at) < every);
        }
        self.started.insert(id, now);
        Some(id)
    }

    fn finished(&mut self, id: i64, outcome: Outcome) {
        self.running.remove(&id);
        self.cold_running.remove(&id);
        let woken = self.again.remove(&id);
        if outcome == Outcome::Failed {
            let (first, most) = self.backoff_range;
            let failures = self.backoff.get(&id).map_or(0, |(n, _)| *n) + 1;
            let wait = first
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(most);
            self.backoff.insert(id, (failures, Instant::now() + wait));
            return;
        }
        self.backoff.remove(&id);
        match (outcome, woken) {
            (Outcome::More, _) | (Outcome::Done, Some(true)) => self.push(id),
            (Outcome::Done, Some(false)) => self.push_events(id, Instant::now()),
            _ => {}
        }
    }
}

/// The workers' dependencies.
pub struct Workers {
    pub inbox: Arc<Inbox>,
    pub path: Arc<TenantPath>,
    pub metrics: Arc<Metrics>,
    /// Per tenant: outbox ids relayed but not yet deleted there (with the database they
    /// are in), deleted on the tenant's next apply. Lost in a crash, they are relayed
    /// again, which the log ignores.
    pub relayed: std::sync::Mutex<HashMap<i64, (String, Vec<i64>)>>,
}

/// An ingest connection holding a tenant's apply lock. Dropped without [`Held::keep`] (an
/// error or a cancelled apply), it closes the connection, which releases the lock.
struct Held(Option<deadpool_postgres::Object>);

impl Held {
    fn get(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("held until kept or dropped")
    }

    /// Deletes the tenant's stale relay mark ([`RELAYED`]), unlocks (one round trip) and
    /// returns the connection to its pool.
    async fn release(self, key: i64, tenant_id: i64, marks_before: f64) -> Result<(), RouterError> {
        let relay: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenant_id, &marks_before];
        let unlock: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let c = self.get();
        let (relayed, unlock_stmt) = (cached(c, RELAYED).await?, cached(c, UNLOCK).await?);
        let (relayed, unlocked) = futures_util::join!(
            c.execute(&relayed, &relay),
            c.query_one(&unlock_stmt, &unlock)
        );
        relayed.map_err(ingest)?;
        unlocked.map_err(ingest)?;
        self.keep();
        Ok(())
    }

    /// The lock is released: the connection may go back to its pool.
    fn keep(mut self) {
        self.0.take();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Detached from the pool and dropped: the connection closes.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

impl Workers {
    /// Applies pending rows until `cancel` fires; applies under way are finished.
    pub async fn run(self, mut wake: mpsc::Receiver<(i64, Wake)>, cancel: CancellationToken) {
        let me = Arc::new(self);
        let mut queue = Ready {
            backoff_range: (
                Duration::from_millis(FIRST_BACKOFF_MS as u64),
                Duration::from_millis(me.inbox.cfg.max_backoff_ms),
            ),
            relay_every: Duration::from_millis(me.inbox.cfg.relay_every_ms),
            ..Ready::default()
        };
        let mut applies: JoinSet<(i64, Outcome)> = JoinSet::new();
        let mut poll = tokio::time::interval(Duration::from_millis(me.inbox.cfg.poll_ms));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let window = me.inbox.cfg.relay_window_ms;
        let mut sweep = tokio::time::interval(Duration::from_millis(window));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let turn = queue.next_turn();
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some((id, why)) = wake.recv() => match why {
                    Wake::Rows => queue.push(id),
                    Wake::Events => queue.push_events(id, Instant::now()),
                },
                _ = tokio::time::sleep_until(turn.unwrap_or_else(Instant::now).into()), if turn.is_some() => {
                    queue.turns_due(Instant::now());
                }
                _ = poll.tick() => match me.pending().await {
                    Ok(ids) => ids.into_iter().for_each(|id| queue.push(id)),
                    Err(e) => tracing::debug!(error = %e, "inbox poll failed"),
                },
                // Events of domain writes whose router died before relaying them.
                _ = sweep.tick() => match me.stale_marks().await {
                    Ok(ids) => ids.into_iter().for_each(|id| queue.push(id)),
                    Err(e) => tracing::debug!(error = %e, "relay mark sweep failed"),
                },
                Some(done) = applies.join_next(), if !applies.is_empty() => {
                    if let Ok((id, outcome)) = done {
                        queue.finished(id, outcome);
                    }
                }
            }
            let mut connected = None;
            while applies.len() < me.inbox.cfg.workers && !queue.order.is_empty() {
                let warm = connected.get_or_insert_with(|| me.path.pools.connected());
                let cold = Ready::cold_slots(&me.inbox.cfg);
                let Some(id) = queue.next(|t| warm.contains(&t), cold) else {
                    break;
                };
                let me = Arc::clone(&me);
                applies.spawn(async move { (id, me.apply(id).await) });
            }
        }
        while applies.join_next().await.is_some() {}
    }

    /// Tenants whose relay mark is stale ([`super::relay`]).
    async fn stale_marks(&self) -> Result<Vec<i64>, RouterError> {
        let stale = self.stale_ms();
        let conn = self.inbox.connection(|c| &c.worker).await?;
        let rows = conn
            .query(&cached(&conn, super::relay::STALE).await?, &[&stale])
            .await
            .map_err(ingest)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// When a relay mark is stale, in milliseconds.
    fn stale_ms(&self) -> f64 {
        3.0 * self.inbox.cfg.relay_window_ms as f64
    }

    /// Tenants with pending rows this router may apply.
    async fn pending(&self) -> Result<Vec<i64>, RouterError> {
        let conn = self.inbox.connection(|c| &c.worker).await?;
        let rows = conn
            .query(&cached(&conn, PENDING).await?, &[])
            .await
            .map_err(ingest)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn apply(&self, tenant_id: i64) -> Outcome {
        let _timer = self.metrics.inbox_apply_seconds.start_timer();
        match self.try_apply(tenant_id).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(tenant = tenant_id, error = %e, "inbox apply failed");
                self.metrics
                    .inbox_applies
                    .with_label_values(&["failed"])
                    .inc();
                Outcome::Failed
            }
        }
    }

    async fn try_apply(&self, tenant_id: i64) -> Result<Outcome, RouterError> {
        let route = match self.path.route(&RouteKey::id(tenant_id)?).await {
            Ok(r) => r,
            // Deleted: its rows are erased when it is purged.
            Err(RouterError::TenantNotFound) => return Ok(Outcome::Later),
            Err(e) => return Err(e),
        };
        if check_status(route.status, Access::Deliver).is_err() {
            return Ok(Outcome::Later);
        }
        let key = lock_key(tenant_id);
        let limit = self.inbox.cfg.apply_rows;
        let conn = self.inbox.connection(|c| &c.worker).await?;
        let claimed = conn
            .query(&cached(&conn, CLAIM).await?, &[&key, &tenant_id, &limit])
            .await
            .map_err(ingest)?;
        if !claimed.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(Outcome::Later);
        }
        // From here the tenant is locked on this connection: released by UNLOCK, or by
        // closing the connection if anything stops this apply before it.
        let conn = Held(Some(conn));
        let marks_before = claimed[0].get::<_, f64>(7) - self.stale_ms();
        let rows: Vec<Row> = claimed
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| Row {
                id: r.get(1),
                server: r.get(2),
                source: if r.get::<_, &str>(3) == "evolution" {
                    WebhookSource::Evolution
                } else {
                    WebhookSource::Meta
                },
                phone: r.get(4),
                batch: r.get(5),
                age_secs: r.get(6),
            })
            .collect();
        let full = rows.len() as i64 >= limit;
        let lag = rows.iter().map(|r| r.age_secs).fold(0.0, f64::max);
        let mut marks: Vec<(i64, Option<String>)> = Vec::with_capacity(rows.len());
        let mut good: Vec<(&Row, Batch)> = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.server != route.route.server {
                // Written under another server (a router scoped to it): never applied here.
                tracing::warn!(tenant = tenant_id, row = row.id, server = %row.server, "inbox row names a server that is not the tenant's; refused");
                marks.push((row.id, Some("not the tenant's server".into())));
                continue;
            }
            match serde_json::from_str::<Batch>(&row.batch) {
                Ok(b) => good.push((row, b)),
                Err(_) => marks.push((row.id, Some("unreadable batch".into()))),
            }
        }
        let forget = self.take_relayed(tenant_id, &route.route.database);
        let (done, events, failed) = self.visit_all(&route, &good, &forget).await;
        marks.extend(done);
        if failed.is_some() {
            self.keep_relayed(tenant_id, &route.route.database, forget);
        }
        if rows.is_empty() && events.is_empty() && failed.is_none() {
            conn.release(key, tenant_id, marks_before).await?;
            return Ok(Outcome::Done);
        }
        let r = &route.route;
        let (ids, errors): (Vec<i64>, Vec<Option<String>>) = marks.into_iter().unzip();
        let origins: Vec<i64> = events.iter().map(|e| e.id).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let at: Vec<i64> = events.iter().map(|e| e.at_ms).collect();
        let (clear, partition) = (failed.is_none(), crate::events::partition(tenant_id));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
            &ids,
            &errors,
            &tenant_id,
            &clear,
            &r.server,
            &r.database,
            &partition,
            &origins,
            &kinds,
            &data,
            &at,
            &marks_before,
        ];
        let unlock: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        // One round trip: the commit of the marks and events, then the unlock.
        let c = conn.get();
        let (finish, unlock_stmt) = (cached(c, FINISH).await?, cached(c, UNLOCK).await?);
        let (finished, unlocked) = futures_util::join!(
            c.query_one(&finish, &params),
            c.query_one(&unlock_stmt, &unlock)
        );
        finished.map_err(ingest)?;
        unlocked.map_err(ingest)?;
        conn.keep();
        if !events.is_empty() {
            self.inbox.events_recorded();
            self.keep_relayed(tenant_id, &r.database, origins);
        }
        if !rows.is_empty() {
            self.metrics
                .inbox_lag
                .with_label_values(&[&r.server])
                .set(lag);
        }
        self.metrics
            .inbox_applies
            .with_label_values(&["applied"])
            .inc_by(ids.len() as u64);
        let more = full || events.len() as i64 >= OUTBOX_BATCH;
        match failed {
            None if more => Ok(Outcome::More),
            None => Ok(Outcome::Done),
            Some(e) => {
                self.back_off(tenant_id, &r.server, &e).await;
                Ok(Outcome::Failed)
            }
        }
    }

    /// Outbox ids relayed from the tenant's current database, to delete there.
    fn take_relayed(&self, tenant_id: i64, database: &str) -> Vec<i64> {
        let mut relayed = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        match relayed.remove(&tenant_id) {
            Some((db, ids)) if db == database => ids,
            _ => Vec::new(),
        }
    }

    fn keep_relayed(&self, tenant_id: i64, database: &str, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        let mut relayed = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        let entry = relayed
            .entry(tenant_id)
            .or_insert_with(|| (database.to_string(), Vec::new()));
        if entry.0 != database {
            *entry = (database.to_string(), Vec::new());
        }
        entry.1.extend(ids);
    }

    /// Stores the rows and reads the outbox: in one visit to the tenant's database when
    /// it takes the rows together; when it refuses their data, row by row (refused rows
    /// become dead letters), then the outbox. The rows done (with the reason of refused
    /// ones), the outbox's events, and why it stopped, if it did.
    async fn visit_all(
        &self,
        route: &Arc<CachedRoute>,
        good: &[(&Row, Batch)],
        forget: &[i64],
    ) -> (
        Vec<(i64, Option<String>)>,
        Vec<OutboxEvent>,
        Option<RouterError>,
    ) {
        let merged = (!good.is_empty()).then(|| {
            let mut merged = Batch::default();
            for (_, b) in good {
                merged.messages.extend(b.messages.iter().cloned());
                merged.statuses.extend(b.statuses.iter().cloned());
                merged.skipped += b.skipped;
            }
            merged
        });
        let all = || good.iter().map(|(r, _)| (r.id, None)).collect();
        match self.visit(route, merged.as_ref(), forget).await {
            Ok(events) => return (all(), events, None),
            Err(e) if !permanent(&e) || good.is_empty() => {
                return (Vec::new(), Vec::new(), Some(e))
            }
            Err(_) => {}
        }
        let done = match self.store_each(route, good).await {
            Ok(done) => done,
            Err((done, e)) => return (done, Vec::new(), Some(e)),
        };
        match self.visit(route, None, &[]).await {
            Ok(events) => (done, events, None),
            Err(e) => (done, Vec::new(), Some(e)),
        }
    }

    /// One visit to the tenant's database: deletes relayed outbox rows, stores `batch`
    /// (one transaction), reads up to [`OUTBOX_BATCH`] outbox events (none from a database
    /// whose schema has no outbox yet: its fleet migration is pending).
    async fn visit(
        &self,
        route: &Arc<CachedRoute>,
        batch: Option<&Batch>,
        forget: &[i64],
    ) -> Result<Vec<OutboxEvent>, RouterError> {
        let deadline = Instant::now() + Duration::from_millis(self.inbox.cfg.apply_timeout_ms);
        let no_outbox = |e: &tokio_postgres::Error| {
            e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        };
        let (stored, events) = self
            .path
            .run_exclusive(
                Arc::clone(route),
                Access::Deliver,
                deadline,
                async |conn, _sector| {
                    // Prepared before the store (cached per connection), so the store and
                    // the read still go out together; on a new connection all at once (one
                    // round trip), and the status statement only for a batch with statuses.
                    // A database without an outbox yet refuses the outbox's preparation.
                    let [ingest_sql, status_sql] = store::Statements::SQL;
                    let statuses = batch.is_some_and(|b| !b.statuses.is_empty());
                    let (ingest, status, outbox) = futures_util::join!(
                        async {
                            match batch {
                                Some(_) => conn.prepare(ingest_sql).await.map(Some),
                                None => Ok(None),
                            }
                        },
                        async {
                            if statuses {
                                conn.prepare(status_sql).await.map(Some)
                            } else {
                                Ok(None)
                            }
                        },
                        conn.prepare(OUTBOX)
                    );
                    let (ingest, status) = (ingest.map_err(tenant_db)?, status.map_err(tenant_db)?);
                    let outbox = match outbox {
                        Ok(s) => Some(s),
                        Err(e) if no_outbox(&e) => None,
                        Err(e) => return Err(tenant_db(e)),
                    };
                    let read = async |c: &tokio_postgres::Client| match &outbox {
                        None => Ok(Vec::new()),
                        Some(outbox) => match c.query(outbox, &[&OUTBOX_BATCH, &forget]).await {
                            Ok(rows) => Ok(rows
                                .iter()
                                .map(|r| OutboxEvent {
                                    id: r.get(0),
                                    kind: r.get(1),
                                    data: r.get(2),
                                    at_ms: r.get(3),
                                })
                                .collect()),
                            Err(e) if no_outbox(&e) => Ok(Vec::new()),
                            Err(e) => Err(tenant_db(e)),
                        },
                    };
                    match (batch, ingest, status) {
                        // Messages only: the store and the outbox read in one round trip
                        // (pipelined; each its own transaction, the read after the store).
                        (Some(b), Some(ingest), None) => {
                            let c = &conn.client;
                            let (stored, events) =
                                futures_util::join!(store::store_messages(c, &ingest, b), read(c));
                            Ok((Some(stored.map_err(tenant_db)?), events?))
                        }
                        (Some(b), Some(ingest), Some(status)) => {
                            let st = store::Statements { ingest, status };
                            let stored = store::store(&mut conn.client, &st, b)
                                .await
                                .map_err(tenant_db)?;
                            Ok((Some(stored), read(&conn.client).await?))
                        }
                        _ => Ok((None, read(&conn.client).await?)),
                    }
                },
            )
            .await?;
        if let Some(stored) = stored {
            self.count(route, stored);
        }
        Ok(events)
    }

    /// Stores the rows one by one (the tenant's database refused them together); refused
    /// rows become dead letters. The rows done and, if it had to stop, why.
    async fn store_each(
        &self,
        route: &Arc<CachedRoute>,
        good: &[(&Row, Batch)],
    ) -> Result<Vec<(i64, Option<String>)>, (Vec<(i64, Option<String>)>, RouterError)> {
        let mut done = Vec::with_capacity(good.len());
        for (row, batch) in good {
            match self.visit(route, Some(batch), &[]).await {
                Ok(_) => done.push((row.id, None)),
                Err(e) if permanent(&e) => {
                    let reason = e.to_string();
                    if let Err(e) = self.refuse(route, row, &reason).await {
                        return Err((done, e));
                    }
                    done.push((row.id, Some(reason)));
                }
                Err(e) => return Err((done, e)),
            }
        }
        Ok(done)
    }

    /// Counts what a store did (metrics, the tenant's usage).
    fn count(&self, route: &CachedRoute, stored: Stored) {
        let m = &self.metrics.webhook_items;
        m.with_label_values(&["message"])
            .inc_by(u64::from(stored.messages));
        m.with_label_values(&["duplicate"])
            .inc_by(u64::from(stored.duplicates));
        m.with_label_values(&["status"])
            .inc_by(u64::from(stored.statuses));
        m.with_label_values(&["skipped"])
            .inc_by(u64::from(stored.skipped));
        self.path
            .routes
            .usage
            .messages(route.route.tenant_id, u64::from(stored.messages));
    }

    /// Files a row the tenant's database refuses as a dead letter.
    async fn refuse(
        &self,
        route: &Arc<CachedRoute>,
        row: &Row,
        reason: &str,
    ) -> Result<(), RouterError> {
        self.path
            .routes
            .record_unroutable(Unroutable {
                source: row.source,
                kind: DeadLetterKind::ItemRefused,
                tenant_id: Some(route.route.tenant_id),
                phone_number_id: &row.phone,
                body: row.batch.as_bytes(),
                reason,
            })
            .await?;
        self.metrics
            .inbox_applies
            .with_label_values(&["refused"])
            .inc();
        Ok(())
    }

    async fn back_off(&self, tenant_id: i64, server: &str, e: &RouterError) {
        let max = self.inbox.cfg.max_backoff_ms as f64;
        let reason = e.to_string();
        let recorded = async {
            let conn = self.inbox.connection(|c| &c.worker).await?;
            conn.execute(
                BACKOFF,
                &[&tenant_id, &server, &FIRST_BACKOFF_MS, &max, &reason],
            )
            .await
            .map_err(ingest)
        };
        if let Err(e) = recorded.await {
            tracing::warn!(tenant = tenant_id, error = %e, "cannot record an inbox backoff");
        }
        tracing::info!(tenant = tenant_id, error = %reason, "tenant's inbox apply failed; retrying with backoff");
    }
}

/// Whether the tenant's database refused the data itself (it would refuse it again).
fn permanent(e: &RouterError) -> bool {
    matches!(
        e,
        RouterError::InvalidArgument(_) | RouterError::AlreadyExists(_) | RouterError::NotFound(_)
    )
}

/// `sql` prepared on the ingest connection, once per connection (the statements of an
/// apply run hundreds of times a second: no parse and plan each time).
async fn cached(
    conn: &deadpool_postgres::Object,
    sql: &str,
) -> Result<tokio_postgres::Statement, RouterError> {
    conn.prepare_cached(sql).await.map_err(ingest)
}

fn tenant_db(e: tokio_postgres::Error) -> RouterError {
    RouterError::from_db(&e)
}

fn ingest(e: tokio_postgres::Error) -> RouterError {
    tracing::warn!(error = %e, "ingest database");
    if is_data_error(&e) {
        RouterError::Internal("the inbox refused a statement".into())
    } else {
        RouterError::Unavailable("the inbox is unavailable".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_tenants_prefer_open_connections_and_cold_ones_get_their_slots_oldest_first() {
        let mut q = Ready::default();
        for t in [1, 2, 3, 4] {
            q.push(t);
        }
        q.push(2); // Already queued: once.
        let warm = |t: i64| t == 3 || t == 4;
        // The oldest (1) is cold and a cold slot is free: it goes first.
        assert_eq!(q.next(warm, 1), Some(1));
        // The only cold slot is taken: warm tenants go ahead of the cold 2.
        assert_eq!(q.next(warm, 1), Some(3));
        assert_eq!(q.next(warm, 1), Some(4));
        assert_eq!(q.next(warm, 1), None, "2 waits for a cold slot");
        // Woken while running: ready again once done; a full batch: ready again too.
        q.push(3);
        q.finished(3, Outcome::Done);
        q.finished(4, Outcome::More);
        q.finished(1, Outcome::Later);
        assert_eq!(q.next(warm, 1), Some(2), "the cold slot is free again");
        assert_eq!(q.next(warm, 1), Some(3));
        assert_eq!(q.next(warm, 1), Some(4));
        assert_eq!(
            q.next(warm, 1),
            None,
            "1 ended Later: back only when woken or polled"
        );
    }

    #[test]
    fn events_of_writes_wait_for_their_relay_turn_and_rows_do_not() {
        let every = Duration::from_millis(25);
        let mut q = Ready {
            relay_every: every,
            ..Ready::default()
        };
        let warm = |_| true;
        // Never applied: a write's events are relayed at once.
        q.push_events(1, Instant::now());
        assert_eq!(q.next(warm, 1), Some(1));
        // Writes during the relay: one more relay, on its turn (not at once).
        q.push_events(1, Instant::now());
        q.push_events(1, Instant::now());
        q.finished(1, Outcome::Done);
        assert_eq!(q.next(warm, 1), None, "waits for its turn");
        let turn = q.next_turn().expect("a turn is set");
        let started = q.started[&1];
        assert_eq!(turn, started + every);
        q.turns_due(turn - Duration::from_millis(1));
        assert_eq!(q.next(warm, 1), None, "not before its turn");
        q.turns_due(turn);
        assert_eq!(q.next(warm, 1), Some(1), "on its turn");
        assert_eq!(q.next_turn(), None);
        q.finished(1, Outcome::Done);
        // Rows do not wait: they take the tenant out of its turn.
        q.push_events(1, Instant::now());
        assert!(q.next_turn().is_some());
        q.push(1);
        assert_eq!(q.next_turn(), None, "the stale turn is dropped");
        assert_eq!(q.next(warm, 1), Some(1));
        q.finished(1, Outcome::Done);
        assert_eq!(
            q.next(warm, 1),
            None,
            "applied once, not again on the old turn"
        );
        // A full batch goes on at once even within the turn.
        q.push_events(2, Instant::now());
        assert_eq!(q.next(warm, 1), Some(2));
        q.finished(2, Outcome::More);
        assert_eq!(q.next(warm, 1), Some(2));
    }
}
