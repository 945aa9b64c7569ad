//! Durable relay marks: events of domain writes reach the log even when the router that
//! made the write dies before relaying them.
//!
//! A domain write's events land in the tenant's outbox in the write's own transaction;
//! the router relays them to the event log soon after the write (it wakes its workers,
//! which relay a tenant at most once per `inbox.relay_every_ms`: one relay carries the
//! events of every write meanwhile).
//! Before the write, the router records the tenant in the ingest database
//! (`relay_pendentes`, at most once per half `inbox.relay_window_ms` per tenant, waiting
//! for that commit). A record not renewed for three windows is stale: every write it
//! covered has ended, and if the router died before relaying them, any router's workers
//! find the record, relay the tenant's outbox and delete the record (only once their
//! outbox read started after it went stale).
//!
//! What is left: a write running longer than the window whose router dies between its
//! commit and the relay has its events relayed with the tenant's next delivery or write.

use super::Inbox;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Records the tenant (renews the record).
const MARK: &str = "INSERT INTO relay_pendentes AS r (empresa_id, servidor) VALUES ($1, $2) \
     ON CONFLICT (empresa_id) DO UPDATE SET marcado_em = now(), servidor = $2";
/// Tenants whose record is stale (`$1`: three windows, in milliseconds).
pub(crate) const STALE: &str = "SELECT empresa_id FROM relay_pendentes \
     WHERE marcado_em < now() - $1::float8 * interval '1 millisecond' LIMIT 100000";

/// How long a write waits for its mark at most: past it, the write goes on unmarked.
const MARK_WAIT: Duration = Duration::from_secs(1);

/// Marks are kept per tenant this long after the last one was recorded before being
/// dropped from memory (a bound on the map, not a correctness matter).
const FORGET_AFTER_WINDOWS: u32 = 4;

/// The marks this router recorded: when, and whether the record is committed yet.
#[derive(Default)]
pub(crate) struct Marks {
    recorded: std::sync::Mutex<HashMap<i64, (Instant, watch::Receiver<bool>)>>,
}

impl Inbox {
    /// Records the tenant before a domain write unless this router did within half a
    /// window (then waits for that record to be committed). Never fails the write: an
    /// unavailable inbox leaves the events to the relay right after the write.
    pub async fn before_write(&self, tenant_id: i64, server: &str) {
        let window = Duration::from_millis(self.cfg.relay_window_ms);
        let now = Instant::now();
        let (done, mut wait) = {
            let mut marks = self
                .marks
                .recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match marks.get(&tenant_id) {
                Some((at, committed)) if now.duration_since(*at) < window / 2 => {
                    (None, committed.clone())
                }
                _ => {
                    let (tx, rx) = watch::channel(false);
                    if marks.len() >= 4096 {
                        marks.retain(|_, (at, _)| {
                            now.duration_since(*at) < window * FORGET_AFTER_WINDOWS
                        });
                    }
                    marks.insert(tenant_id, (now, rx.clone()));
                    (Some(tx), rx)
                }
            }
        };
        let Some(done) = done else {
            // Another write of this tenant is recording it: wait for that commit.
            let _ = tokio::time::timeout(MARK_WAIT, wait.wait_for(|c| *c)).await;
            return;
        };
        let record = async {
            let conn = self.connection(|c| &c.worker).await?;
            let mark = conn
                .prepare_cached(MARK)
                .await
                .map_err(|e| crate::error::RouterError::from_db(&e))?;
            conn.execute(&mark, &[&tenant_id, &server])
                .await
                .map_err(|e| crate::error::RouterError::from_db(&e))
        };
        match tokio::time::timeout(MARK_WAIT, record).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(tenant = tenant_id, error = %e, "cannot record a relay mark")
            }
            Err(_) => tracing::warn!(tenant = tenant_id, "recording a relay mark timed out"),
        }
        // Marked or not, writes waiting on this one go on.
        let _ = done.send(true);
    }
}
