//! Reading the message pipeline's event log for consumer groups.
//!
//! The log (`eventos` in the ingest database) is split into [`PARTITIONS`] partitions by
//! tenant. A consumer group keeps one durable cursor per partition (`cursores`: the last
//! acknowledged `(xid, id)`), and its live subscribers (`membros`, renewed every
//! [`HEARTBEAT`]) divide the partitions among themselves: partition `p` goes to the
//! subscriber ranked `p % live` (by member id). A subscriber streams its partitions from
//! their cursors, in `(xid, id)` order and only rows of transactions older than every one
//! still running, so a row committed late can never fall behind a cursor. Delivery is at
//! least once: what was sent but not acknowledged is sent again after a reconnect, and
//! while the members of a group change, two of them may briefly share a partition. Only
//! events relayed under their tenant's own server are delivered (see
//! `EventLog::deliverable`). A group's cursors and members belong to the scope (the servers
//! served) of the routers that started it: row-level security hides them from routers of
//! any other scope, which are told the group is kept elsewhere.

use crate::error::RouterError;
use crate::inbox::Inbox;
use crate::routes::RouteKey;
use proto::domain::v1 as dm;
use proto::model::ToWire;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::EventKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Partitions of the log.
pub const PARTITIONS: i16 = 16;
/// How often a subscriber renews its membership.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A member not seen for this long has left its group.
const MEMBER_TTL_MS: f64 = 10_000.0;
/// How long a stream woken by a relay waits for more before it reads.
const COALESCE: Duration = Duration::from_millis(10);
/// Most events read per query.
const READ_BATCH: i64 = 500;
/// Why a group cannot be kept here: its rows belong to routers of another scope.
const GROUP_ELSEWHERE: &str = "this consumer group is kept by routers that serve other \
     database servers: subscribe through one of them, or name another group";

const JOIN: &str = "INSERT INTO membros (grupo, membro) VALUES ($1, $2) \
     ON CONFLICT (grupo, membro) DO UPDATE SET visto_em = now()";
const MEMBERS: &str = "SELECT membro FROM membros WHERE grupo = $1 \
     AND visto_em > now() - $2 * interval '1 millisecond' ORDER BY membro";
const LEAVE: &str = "DELETE FROM membros WHERE grupo = $1 AND membro = $2";
/// A group seen for the first time starts where the log ends now (or at its start).
const START: &str = "INSERT INTO cursores (grupo, particao, xid, evento) \
     SELECT $1, p, CASE WHEN $3 THEN '0'::xid8 ELSE pg_snapshot_xmin(pg_current_snapshot()) END, 0 \
     FROM unnest($2::int2[]) AS p ON CONFLICT DO NOTHING";
const CURSORS: &str = "SELECT particao, xid::text, evento FROM cursores \
     WHERE grupo = $1 AND particao = ANY($2)";
const READ: &str = "SELECT e.particao, e.xid::text, e.id, e.empresa_id, e.tipo, e.dados, \
       (extract(epoch FROM e.criado_em) * 1000)::int8, e.servidor \
     FROM unnest($1::int2[], $2::text[], $3::int8[]) AS c(p, x, i) \
     CROSS JOIN LATERAL (SELECT * FROM eventos e WHERE e.particao = c.p \
       AND (e.xid, e.id) > (c.x::xid8, c.i) \
       AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) \
       ORDER BY e.xid, e.id LIMIT $4) e \
     ORDER BY e.particao, e.xid, e.id";
const ACK: &str =
    "INSERT INTO cursores (grupo, particao, xid, evento) VALUES ($1, $2, $3::text::xid8, $4) \
     ON CONFLICT (grupo, particao) DO UPDATE SET xid = EXCLUDED.xid, evento = EXCLUDED.evento, \
       atualizado_em = now() \
     WHERE (cursores.xid, cursores.evento) < (EXCLUDED.xid, EXCLUDED.evento)";

/// The partition of a tenant's events.
pub fn partition(tenant_id: i64) -> i16 {
    (tenant_id.rem_euclid(i64::from(PARTITIONS))) as i16
}

/// A position in one partition: everything up to `(xid, id)` is behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub partition: i16,
    pub xid: u64,
    pub id: i64,
}

impl Cursor {
    /// `partition.xid.id`.
    pub fn parse(raw: &str) -> Result<Cursor, RouterError> {
        let bad =
            || RouterError::InvalidArgument(format!("cursor {raw:?} is not one this stream sent"));
        let mut parts = raw.split('.');
        let (Some(p), Some(x), Some(i), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let cursor = Cursor {
            partition: p.parse().map_err(|_| bad())?,
            xid: x.parse().map_err(|_| bad())?,
            id: i.parse().map_err(|_| bad())?,
        };
        if !(0..PARTITIONS).contains(&cursor.partition) || cursor.id <= 0 {
            return Err(bad());
        }
        Ok(cursor)
    }

    fn token(&self) -> String {
        format!("{}.{}.{}", self.partition, self.xid, self.id)
    }
}

/// What one subscription receives.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The group, namespaced by the caller's identity.
    pub group: String,
    /// Only these tenants (`None`: every tenant this router's login sees).
    pub tenants: Option<HashSet<i64>>,
    /// Only these kinds (`None`: all).
    pub kinds: Option<HashSet<EventKind>>,
    /// A new group starts at the oldest event kept instead of the end of the log.
    pub from_oldest: bool,
    /// When the caller's token expires (seconds since the epoch); the stream ends then.
    pub expires: u64,
    /// The token's ids (token, session), checked against revocations while streaming.
    pub token_ids: Vec<String>,
}

/// One event as read from the log.
struct LoggedEvent {
    cursor: Cursor,
    tenant_id: i64,
    /// `None`: a kind this router does not know.
    kind: Option<EventKind>,
    data: String,
    at_ms: i64,
    /// The server it was relayed under.
    server: String,
}

/// Reads the event log for subscribers and records their acknowledgements.
pub struct EventLog {
    pub inbox: Arc<Inbox>,
    pub routes: Arc<crate::routes::RouteCache>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Numbers this router's subscribers (member ids are unique per process).
    pub members: std::sync::atomic::AtomicU64,
}

impl EventLog {
    /// Advances the group's cursors to the acknowledged events (never backwards).
    pub async fn ack(&self, group: &str, cursors: &[Cursor]) -> Result<(), RouterError> {
        let mut newest: HashMap<i16, Cursor> = HashMap::new();
        for c in cursors {
            let e = newest.entry(c.partition).or_insert(*c);
            *e = (*e).max(*c);
        }
        let conn = self.inbox.connection(|c| &c.reader).await?;
        let ack = conn.prepare_cached(ACK).await.map_err(unavailable)?;
        for c in newest.values() {
            conn.execute(&ack, &[&group, &c.partition, &c.xid.to_string(), &c.id])
                .await
                .map_err(group_error)?;
        }
        Ok(())
    }

    /// Streams the subscription into `tx` until the receiver goes away, `cancel` fires or
    /// the caller's token expires or is revoked; then leaves the group.
    pub async fn pump(
        self: Arc<Self>,
        sub: Subscription,
        tx: mpsc::Sender<Result<dm::Event, tonic::Status>>,
        cancel: CancellationToken,
    ) {
        let member = member_id(
            self.members
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let mut watch = self.inbox.events_watch();
        let poll = Duration::from_millis(self.inbox.cfg.events_poll_ms);
        let mut positions: HashMap<i16, Cursor> = HashMap::new();
        let mut next_beat = Instant::now();
        self.metrics.event_subscribers.inc();
        'stream: loop {
            if let Some(end) = self.token_over(&sub) {
                let _ = tx.send(Err(end)).await;
                break;
            }
            if Instant::now() >= next_beat {
                match self.membership(&sub, &member, &positions).await {
                    Ok(Some(moved)) => positions = moved,
                    Ok(None) => {}
                    Err(e @ RouterError::FailedPrecondition(_)) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "event stream cannot renew its membership")
                    }
                }
                next_beat = Instant::now() + HEARTBEAT;
            }
            let mut full = false;
            if !positions.is_empty() {
                match self.read(&positions).await {
                    Ok(events) => {
                        full = events.len() as i64 >= READ_BATCH;
                        for e in events {
                            match self.deliverable(&sub, &e).await {
                                Ok(Some(kind)) => {
                                    let event = dm::Event {
                                        cursor: e.cursor.token(),
                                        tenant_id: e.tenant_id,
                                        kind: kind.to_wire(),
                                        data_json: e.data,
                                        occurred_at_ms: e.at_ms,
                                    };
                                    // The subscriber is gone: so is the stream (a
                                    // full batch must not read again for no one).
                                    if tx.send(Ok(event)).await.is_err() {
                                        break 'stream;
                                    }
                                    self.metrics.events_streamed.inc();
                                }
                                Ok(None) => {}
                                // Not passed over: read again after a pause.
                                Err(err) => {
                                    tracing::debug!(tenant = e.tenant_id, error = %err, "event stream cannot check an event's origin");
                                    full = false;
                                    break;
                                }
                            }
                            positions.insert(e.cursor.partition, e.cursor);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "event stream cannot read the log"),
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                // Relays come in bursts under load: one read takes a few of them.
                _ = watch.changed() => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        self.metrics.event_subscribers.dec();
        if let Ok(conn) = self.inbox.connection(|c| &c.reader).await {
            let _ = conn.execute(LEAVE, &[&sub.group, &member]).await;
        }
    }

    /// Why the stream must end now, if it must.
    fn token_over(&self, sub: &Subscription) -> Option<tonic::Status> {
        if caller_auth::now_secs() >= sub.expires {
            return Some(tonic::Status::unauthenticated(
                "token expired; subscribe again with a new one",
            ));
        }
        if sub
            .token_ids
            .iter()
            .any(|id| self.routes.revocations.is_revoked(id))
        {
            return Some(tonic::Status::unauthenticated("token revoked"));
        }
        None
    }

    /// Renews the membership; the new partitions and their starting positions when they
    /// changed (`None`: unchanged).
    async fn membership(
        &self,
        sub: &Subscription,
        member: &str,
        positions: &HashMap<i16, Cursor>,
    ) -> Result<Option<HashMap<i16, Cursor>>, RouterError> {
        let conn = self.inbox.connection(|c| &c.reader).await?;
        conn.execute(JOIN, &[&sub.group, &member])
            .await
            .map_err(group_error)?;
        let members: Vec<String> = conn
            .query(MEMBERS, &[&sub.group, &MEMBER_TTL_MS])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let live = members.len().max(1) as i16;
        let rank = members.iter().position(|m| m == member).unwrap_or(0) as i16;
        let mine: Vec<i16> = (0..PARTITIONS).filter(|p| p % live == rank).collect();
        let current: HashSet<i16> = positions.keys().copied().collect();
        if current == mine.iter().copied().collect() {
            return Ok(None);
        }
        conn.execute(START, &[&sub.group, &mine, &sub.from_oldest])
            .await
            .map_err(unavailable)?;
        let rows = conn
            .query(CURSORS, &[&sub.group, &mine])
            .await
            .map_err(unavailable)?;
        // Row-level security hides cursors kept under another scope; starting them did
        // nothing.
        if rows.len() < mine.len() {
            return Err(RouterError::FailedPrecondition(GROUP_ELSEWHERE.into()));
        }
        let mut moved = HashMap::with_capacity(mine.len());
        for r in &rows {
            let partition: i16 = r.get(0);
            // Partitions kept go on from where this stream is (ahead of the cursor).
            let cursor = match positions.get(&partition) {
                Some(c) => *c,
                None => Cursor {
                    partition,
                    xid: r.get::<_, &str>(1).parse().unwrap_or(0),
                    id: r.get(2),
                },
            };
            moved.insert(partition, cursor);
        }
        Ok(Some(moved))
    }

    /// The event's kind if the subscription gets it: one of its tenants and kinds, a kind
    /// this router knows (a newer one may have written it), and relayed under the server
    /// its tenant lives on. Row-level security lets a router's login write events only under
    /// the servers it serves, but for any tenant: a stolen login of a router for another
    /// server could file forged events for a tenant it cannot reach. Those are passed over,
    /// as the inbox passes over rows filed under another server. `Err` when the tenant's
    /// route cannot be had now.
    async fn deliverable(
        &self,
        sub: &Subscription,
        e: &LoggedEvent,
    ) -> Result<Option<EventKind>, RouterError> {
        let Some(kind) = e.kind else { return Ok(None) };
        let wanted = sub
            .tenants
            .as_ref()
            .is_none_or(|t| t.contains(&e.tenant_id))
            && sub.kinds.as_ref().is_none_or(|k| k.contains(&kind));
        if !wanted {
            return Ok(None);
        }
        let Ok(key) = RouteKey::id(e.tenant_id) else {
            return Ok(None);
        };
        let home = match self.routes.get(&key).await {
            Ok(route) => route,
            Err(RouterError::TenantNotFound) => return Ok(None),
            Err(err) => return Err(err),
        };
        if home.route.server != e.server {
            tracing::warn!(tenant = e.tenant_id, server = %e.server, "event filed under a server that is not the tenant's; not delivered");
            return Ok(None);
        }
        Ok(Some(kind))
    }

    /// The next events of the stream's partitions.
    async fn read(
        &self,
        positions: &HashMap<i16, Cursor>,
    ) -> Result<Vec<LoggedEvent>, RouterError> {
        let conn = self.inbox.connection(|c| &c.reader).await?;
        let parts: Vec<i16> = positions.keys().copied().collect();
        let xids: Vec<String> = parts.iter().map(|p| positions[p].xid.to_string()).collect();
        let ids: Vec<i64> = parts.iter().map(|p| positions[p].id).collect();
        let read = conn.prepare_cached(READ).await.map_err(unavailable)?;
        let rows = conn
            .query(&read, &[&parts, &xids, &ids, &READ_BATCH])
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let cursor = Cursor {
                partition: r.get(0),
                xid: r.get::<_, &str>(1).parse().unwrap_or(0),
                id: r.get(2),
            };
            out.push(LoggedEvent {
                cursor,
                tenant_id: r.get(3),
                kind: EventKind::parse(r.get::<_, &str>(4)).ok(),
                data: r.get(5),
                at_ms: r.get(6),
                server: r.get(7),
            });
        }
        Ok(out)
    }
}

/// A member id no other router can guess (and so take first): the process, a counter and
/// 64 bits from the standard library's randomly keyed hasher.
fn member_id(n: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{:x}-{n:x}-{:016x}", std::process::id(), h.finish())
}

/// Writing a group's rows: refused by row-level security when another scope keeps them.
fn group_error(e: tokio_postgres::Error) -> RouterError {
    match e.code() {
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            RouterError::FailedPrecondition(GROUP_ELSEWHERE.into())
        }
        _ => unavailable(e),
    }
}

fn unavailable(e: tokio_postgres::Error) -> RouterError {
    tracing::warn!(error = %e, "event log");
    RouterError::Unavailable("the event log is unavailable".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            partition: 3,
            xid: 1234,
            id: 99,
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), c);
        for bad in [
            "", "1.2", "1.2.3.4", "16.1.1", "-1.1.1", "1.x.1", "1.1.0", "a.b.c",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(partition(35), 3);
    }
}
