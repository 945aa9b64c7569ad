//! Workers: drain the inbox per tenant into its database.
//!
//! A tenant is ready when this router committed rows for it (woken at once) or a poll of
//! the inbox finds it pending (rows written by other routers, or left by a failed apply
//! once its backoff is over). Ready tenants are served round robin, at most
//! `inbox.workers` at once and each by one worker at a time; an apply takes up to
//! `inbox.apply_rows` of the tenant's oldest rows, so a busy tenant cannot hold the
//! workers. Across routers, a transaction-scoped advisory lock on the tenant keeps one
//! apply per tenant at a time, so rows are applied in inbox order.
//!
//! One apply: lock the tenant in the ingest database, read its pending rows, store them in
//! the tenant's database in one transaction (the webhook statements: idempotent by
//! `wamid`, statuses monotonic), mark them applied, commit. A crash between the two
//! commits re-applies the rows, which changes nothing. A tenant database that is down or
//! over budget puts the tenant in backoff (`inbox_atrasos`, seen by every router and by
//! `tenantctl inbox status`); rows the tenant's database refuses for good are tried one
//! by one and the refused ones become dead letters. A tenant being restored is paused.

use super::{is_data_error, Inbox};
use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::path::{check_status, Access, TenantPath};
use crate::routes::{CachedRoute, RouteKey, Unroutable};
use std::collections::{HashSet, VecDeque};
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
const ROWS: &str = "SELECT id, servidor, fonte, numero, lote, \
     extract(epoch FROM now() - recebido_em)::float8 \
     FROM inbox WHERE empresa_id = $1 AND aplicado_em IS NULL ORDER BY id LIMIT $2";
const MARK: &str = "UPDATE inbox SET aplicado_em = now(), erro = e.erro \
     FROM unnest($1::int8[], $2::text[]) AS e(id, erro) WHERE inbox.id = e.id";
const CLEAR_BACKOFF: &str = "DELETE FROM inbox_atrasos WHERE empresa_id = $1";
const BACKOFF: &str = "INSERT INTO inbox_atrasos AS a (empresa_id, servidor, tentativas, proxima_em, ultimo_erro) \
     VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', $5) \
     ON CONFLICT (empresa_id) DO UPDATE SET tentativas = a.tentativas + 1, ultimo_erro = $5, \
       servidor = $2, proxima_em = now() + least($4, $3 * 2 ^ least(a.tentativas, 20)) * interval '1 millisecond'";

const OUTBOX: &str = "SELECT id, tipo, dados::text, (extract(epoch FROM criado_em) * 1000)::int8 \
     FROM eventos_saida ORDER BY id LIMIT $1";
const RELAY: &str = "INSERT INTO eventos (empresa_id, servidor, banco, origem_id, particao, tipo, dados, criado_em) \
     SELECT $1, $2, $3, o, $4, t, d, to_timestamp(ms / 1000.0) \
     FROM unnest($5::int8[], $6::text[], $7::text[], $8::int8[]) AS x(o, t, d, ms) \
     ON CONFLICT (empresa_id, banco, origem_id) DO NOTHING";

/// Most outbox events one apply relays.
const OUTBOX_BATCH: i64 = 1_000;

/// One event in a tenant's outbox.
struct OutboxEvent {
    id: i64,
    kind: String,
    data: String,
    at_ms: i64,
}

/// Writes outbox events to the event log (once each, whatever is retried).
async fn relay(
    tx: &deadpool_postgres::Transaction<'_>,
    route: &CachedRoute,
    events: &[OutboxEvent],
) -> Result<(), RouterError> {
    let r = &route.route;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let at: Vec<i64> = events.iter().map(|e| e.at_ms).collect();
    tx.execute(
        RELAY,
        &[
            &r.tenant_id,
            &r.server,
            &r.database,
            &crate::events::partition(r.tenant_id),
            &ids,
            &kinds,
            &data,
            &at,
        ],
    )
    .await
    .map_err(ingest)?;
    Ok(())
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
    /// Not now: another router holds the tenant, it is being restored or deleted, or it
    /// failed and is in backoff.
    Later,
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

/// Ready tenants, round robin, each applied by one worker at a time.
#[derive(Default)]
struct Ready {
    order: VecDeque<i64>,
    queued: HashSet<i64>,
    running: HashSet<i64>,
    /// Woken while running: ready again once its apply ends.
    again: HashSet<i64>,
}

impl Ready {
    fn push(&mut self, id: i64) {
        if self.running.contains(&id) {
            self.again.insert(id);
        } else if self.queued.insert(id) {
            self.order.push_back(id);
        }
    }

    fn next(&mut self) -> Option<i64> {
        let id = self.order.pop_front()?;
        self.queued.remove(&id);
        self.running.insert(id);
        Some(id)
    }

    fn finished(&mut self, id: i64, outcome: Outcome) {
        self.running.remove(&id);
        let woken = self.again.remove(&id);
        if outcome == Outcome::More || (woken && outcome != Outcome::Later) {
            self.push(id);
        }
    }
}

/// The workers' dependencies.
pub struct Workers {
    pub inbox: Arc<Inbox>,
    pub path: Arc<TenantPath>,
    pub metrics: Arc<Metrics>,
}

impl Workers {
    /// Applies pending rows until `cancel` fires; applies under way are finished.
    pub async fn run(self, mut wake: mpsc::Receiver<i64>, cancel: CancellationToken) {
        let me = Arc::new(self);
        let mut queue = Ready::default();
        let mut applies: JoinSet<(i64, Outcome)> = JoinSet::new();
        let mut poll = tokio::time::interval(Duration::from_millis(me.inbox.cfg.poll_ms));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(id) = wake.recv() => queue.push(id),
                _ = poll.tick() => match me.pending().await {
                    Ok(ids) => ids.into_iter().for_each(|id| queue.push(id)),
                    Err(e) => tracing::debug!(error = %e, "inbox poll failed"),
                },
                Some(done) = applies.join_next(), if !applies.is_empty() => {
                    if let Ok((id, outcome)) = done {
                        queue.finished(id, outcome);
                    }
                }
            }
            while applies.len() < me.inbox.cfg.workers {
                let Some(id) = queue.next() else { break };
                let me = Arc::clone(&me);
                applies.spawn(async move { (id, me.apply(id).await) });
            }
        }
        while applies.join_next().await.is_some() {}
    }

    /// Tenants with pending rows this router may apply.
    async fn pending(&self) -> Result<Vec<i64>, RouterError> {
        let conn = self.inbox.connection(|c| &c.worker).await?;
        let rows = conn.query(PENDING, &[]).await.map_err(ingest)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn apply(&self, tenant_id: i64) -> Outcome {
        match self.try_apply(tenant_id).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(tenant = tenant_id, error = %e, "inbox apply failed");
                self.metrics
                    .inbox_applies
                    .with_label_values(&["failed"])
                    .inc();
                Outcome::Later
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
        let mut conn = self.inbox.connection(|c| &c.worker).await?;
        let tx = conn.transaction().await.map_err(ingest)?;
        let locked: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&lock_key(tenant_id)],
            )
            .await
            .map_err(ingest)?
            .get(0);
        if !locked {
            return Ok(Outcome::Later);
        }
        let limit = self.inbox.cfg.apply_rows;
        let rows: Vec<Row> = tx
            .query(ROWS, &[&tenant_id, &limit])
            .await
            .map_err(ingest)?
            .iter()
            .map(|r| Row {
                id: r.get(0),
                server: r.get(1),
                source: if r.get::<_, &str>(2) == "evolution" {
                    WebhookSource::Evolution
                } else {
                    WebhookSource::Meta
                },
                phone: r.get(3),
                batch: r.get(4),
                age_secs: r.get(5),
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
        let result = self.store_all(&route, &good).await;
        let mut failed = match result {
            Ok(done) => {
                marks.extend(done);
                None
            }
            Err((done, e)) => {
                marks.extend(done);
                Some(e)
            }
        };
        // The events the tenant's database recorded (by these rows, or by domain writes).
        let events = match failed {
            None => match self.outbox(&route).await {
                Ok(events) => events,
                Err(e) => {
                    failed = Some(e);
                    Vec::new()
                }
            },
            Some(_) => Vec::new(),
        };
        if rows.is_empty() && events.is_empty() && failed.is_none() {
            tx.commit().await.map_err(ingest)?;
            return Ok(Outcome::Done);
        }
        if !events.is_empty() {
            relay(&tx, &route, &events).await?;
        }
        let (ids, errors): (Vec<i64>, Vec<Option<String>>) = marks.into_iter().unzip();
        if !ids.is_empty() {
            tx.execute(MARK, &[&ids, &errors]).await.map_err(ingest)?;
        }
        if failed.is_none() {
            tx.execute(CLEAR_BACKOFF, &[&tenant_id])
                .await
                .map_err(ingest)?;
        }
        tx.commit().await.map_err(ingest)?;
        if !events.is_empty() {
            self.inbox.events_recorded();
            // Relayed for good: the outbox may forget them (a failure here only means
            // they are relayed again, and the log keeps them once).
            let relayed: Vec<i64> = events.iter().map(|e| e.id).collect();
            if let Err(e) = self.forget(&route, &relayed).await {
                tracing::debug!(tenant = tenant_id, error = %e, "relayed events not deleted from the outbox yet");
            }
        }
        if !rows.is_empty() {
            self.metrics
                .inbox_lag
                .with_label_values(&[&route.route.server])
                .set(lag);
        }
        let applied = ids.len() as u64;
        self.metrics
            .inbox_applies
            .with_label_values(&["applied"])
            .inc_by(applied);
        let more = full || events.len() as i64 >= OUTBOX_BATCH;
        match failed {
            None if more => Ok(Outcome::More),
            None => Ok(Outcome::Done),
            Some(e) => {
                self.back_off(tenant_id, &route.route.server, &e).await;
                Ok(Outcome::Later)
            }
        }
    }

    /// Up to [`OUTBOX_BATCH`] events from the tenant's outbox, oldest first (none from a
    /// database whose schema has no outbox yet: its fleet migration is pending).
    async fn outbox(&self, route: &Arc<CachedRoute>) -> Result<Vec<OutboxEvent>, RouterError> {
        let deadline = Instant::now() + Duration::from_millis(self.inbox.cfg.apply_timeout_ms);
        self.path
            .run(
                Arc::clone(route),
                Access::Deliver,
                deadline,
                async |conn, _sector| match conn.client.query(OUTBOX, &[&OUTBOX_BATCH]).await {
                    Ok(rows) => Ok(rows
                        .iter()
                        .map(|r| OutboxEvent {
                            id: r.get(0),
                            kind: r.get(1),
                            data: r.get(2),
                            at_ms: r.get(3),
                        })
                        .collect()),
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        Ok(Vec::new())
                    }
                    Err(e) => Err(tenant_db(e)),
                },
            )
            .await
    }

    /// Deletes relayed events from the tenant's outbox.
    async fn forget(&self, route: &Arc<CachedRoute>, ids: &[i64]) -> Result<(), RouterError> {
        let deadline = Instant::now() + Duration::from_millis(self.inbox.cfg.apply_timeout_ms);
        self.path
            .run(
                Arc::clone(route),
                Access::Deliver,
                deadline,
                async |conn, _sector| {
                    conn.client
                        .execute("DELETE FROM eventos_saida WHERE id = ANY($1)", &[&ids])
                        .await
                        .map(|_| ())
                        .map_err(tenant_db)
                },
            )
            .await
    }

    /// Stores the rows' batches: all in one transaction, or (when the tenant's database
    /// refuses the data) one by one, refused rows becoming dead letters. Returns the rows
    /// done (with the reason of refused ones) and, if it had to stop, why.
    async fn store_all(
        &self,
        route: &Arc<CachedRoute>,
        good: &[(&Row, Batch)],
    ) -> Result<Vec<(i64, Option<String>)>, (Vec<(i64, Option<String>)>, RouterError)> {
        if good.is_empty() {
            return Ok(Vec::new());
        }
        let mut merged = Batch::default();
        for (_, b) in good {
            merged.messages.extend(b.messages.iter().cloned());
            merged.statuses.extend(b.statuses.iter().cloned());
            merged.skipped += b.skipped;
        }
        match self.store(route, &merged).await {
            Ok(()) => return Ok(good.iter().map(|(r, _)| (r.id, None)).collect()),
            Err(e) if !permanent(&e) => return Err((Vec::new(), e)),
            Err(_) => {}
        }
        let mut done = Vec::with_capacity(good.len());
        for (row, batch) in good {
            match self.store(route, batch).await {
                Ok(()) => done.push((row.id, None)),
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

    async fn store(&self, route: &Arc<CachedRoute>, batch: &Batch) -> Result<(), RouterError> {
        let deadline = Instant::now() + Duration::from_millis(self.inbox.cfg.apply_timeout_ms);
        let stored: Stored = self
            .path
            .run(
                Arc::clone(route),
                Access::Deliver,
                deadline,
                async |conn, _sector| {
                    let [ingest, status] = store::Statements::SQL;
                    let stmts = store::Statements {
                        ingest: conn.prepare(ingest).await.map_err(tenant_db)?,
                        status: conn.prepare(status).await.map_err(tenant_db)?,
                    };
                    store::store(&mut conn.client, &stmts, batch)
                        .await
                        .map_err(tenant_db)
                },
            )
            .await?;
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
        Ok(())
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
