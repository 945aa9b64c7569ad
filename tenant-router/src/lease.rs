//! This router process's lease: its share of every database server's connection budget.
//!
//! Router replicas never split a server's budget among themselves: the control plane
//! divides it (what its own jobs leave) among the live router processes in proportion to
//! the demand each reports, and grants each a limit that the others' claims leave free.
//! The keeper renews every few hundred milliseconds with, per server it has seen, its
//! demand (connections open plus calls waiting, the peak since the last renewal), the
//! limit it enforces and the connections it holds; it applies each grant to the server's
//! budget at once (see `pools::ServerBudget::set_limit`). A server seen for the first time
//! starts at 0 and is asked for at once.
//!
//! Failing safe: the control plane drops a lease not renewed for `lease_ms` and hands its
//! share to others, so a router that cannot renew stops opening connections before then,
//! three quarters of the way from the last successful request's start (the rest leaves
//! time for calls running on connections to finish and return them). At shutdown, once
//! its connections are closed, it gives its leases back so others grow at once.

use crate::metrics::Metrics;
use crate::pools::{Pools, ServerBudget};
use crate::routes::RouteCache;
use proto::control::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Renewal pace while the control plane cannot be reached.
const RETRY: Duration = Duration::from_millis(250);
/// Least time between two renewals when woken early.
const MIN_GAP: Duration = Duration::from_millis(50);
/// Longest one renewal request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait at shutdown for connections to close before giving the leases back.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Keeps this process's lease.
pub struct LeaseKeeper {
    pub routes: Arc<RouteCache>,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
    /// This process's id in the control plane's leases.
    pub instance: String,
}

/// An id for this process: the host name (a pod's name in Kubernetes), the process id and
/// the start time, so an operator can tell which process holds which lease.
pub fn instance_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(30)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!(
        "{host}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    );
    id.trim_start_matches('-').to_string()
}

impl LeaseKeeper {
    /// Renews until `cancel`, then gives the leases back.
    pub async fn run(self, cancel: CancellationToken) {
        let mut seq = 0u64;
        // Until when the grants in force may be used.
        let mut valid_until: Option<Instant> = None;
        let mut next = Duration::ZERO;
        let mut last = Instant::now() - MIN_GAP;
        loop {
            let expires_in = valid_until.map(|v| v.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(next.min(expires_in.unwrap_or(Duration::MAX))) => {}
                _ = self.pools.lease_wake().notified() => {
                    let gap = MIN_GAP.saturating_sub(last.elapsed());
                    if !gap.is_zero() {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(gap) => {}
                        }
                    }
                }
            }
            last = Instant::now();
            if valid_until.is_some_and(|v| Instant::now() >= v) {
                self.expire();
                valid_until = None;
            }
            let servers = self.pools.servers();
            if servers.is_empty() {
                next = RETRY;
                continue;
            }
            seq += 1;
            let sent = Instant::now();
            match self.renew(&servers, seq).await {
                Ok(reply) => {
                    let lease = Duration::from_millis(u64::from(reply.lease_ms)) * 3 / 4;
                    if Instant::now() >= sent + lease {
                        // Answered too late to be used.
                        self.expire();
                        valid_until = None;
                        next = RETRY;
                        continue;
                    }
                    self.metrics.lease_renewals.with_label_values(&["ok"]).inc();
                    for grant in &reply.servers {
                        if let Some(s) = servers.iter().find(|s| s.name == grant.server) {
                            s.grant(grant.limit, grant.capped);
                        }
                    }
                    valid_until = Some(sent + lease);
                    next = Duration::from_millis(u64::from(reply.renew_ms.clamp(20, 60_000)));
                }
                Err(status) => {
                    self.metrics
                        .lease_renewals
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(code = ?status.code(), message = status.message(), "cannot renew this router's lease");
                    next = RETRY;
                }
            }
        }
        self.release(seq + 1).await;
    }

    async fn renew(
        &self,
        servers: &[Arc<ServerBudget>],
        seq: u64,
    ) -> Result<pb::LeaseReply, tonic::Status> {
        let req = pb::LeaseRequest {
            instance: self.instance.clone(),
            seq,
            servers: servers
                .iter()
                .map(|s| pb::ServerDemand {
                    server: s.name.clone(),
                    demand: s.take_demand(),
                    limit: s.limit(),
                    held: s.open(),
                })
                .collect(),
            release: false,
        };
        tokio::time::timeout(REQUEST_TIMEOUT, self.routes.lease(req, REQUEST_TIMEOUT))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("lease renewal timed out")))
    }

    /// The lease ran out unrenewed: no new connections anywhere until the next grant.
    fn expire(&self) {
        self.metrics
            .lease_renewals
            .with_label_values(&["expired"])
            .inc();
        tracing::error!("this router's lease ran out unrenewed: no new tenant connections until the control plane grants one again");
        for s in self.pools.servers() {
            s.set_limit(0);
        }
    }

    /// Shutting down: once every connection is closed, the leases go back at once (if
    /// not, they run out in time).
    async fn release(&self, seq: u64) {
        for s in self.pools.servers() {
            s.set_limit(0);
        }
        let deadline = Instant::now() + RELEASE_WAIT;
        while self.pools.servers().iter().any(|s| s.open() > 0) {
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let req = pb::LeaseRequest {
            instance: self.instance.clone(),
            seq,
            servers: Vec::new(),
            release: true,
        };
        if let Err(s) = self.routes.lease(req, Duration::from_secs(1)).await {
            tracing::debug!(code = ?s.code(), "leases not given back; they run out");
        }
    }
}
