//! The control plane's Prometheus endpoint (`metrics_listen`, off by default): plain
//! HTTP/1 `GET /metrics` in the text exposition format. Labels stay bounded (no tenants,
//! no users). What the catalog and the ingest database hold (tenants, fleet runs, backup
//! ages, the inbox) is read at each scrape, so every replica reports the same; job
//! durations, the catalog pool and directory subscribers are this replica's.

use crate::accounts::Accounts;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// What the endpoint reports.
#[derive(Clone)]
pub struct Sources {
    pub accounts: Accounts,
    pub catalog: crate::catalog::Catalog,
    pub jobs: crate::telemetry::Jobs,
    pub directory: crate::directory::Directory,
    /// The message pipeline (inbox depth and lag, event consumers), read at each scrape.
    pub ingest: crate::ingest::Ingest,
    pub stuck_after_secs: u64,
}

impl Sources {
    async fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "# HELP control_plane_password_hashes_total Argon2id computations (logins, password changes, unknown emails alike).\n\
             # TYPE control_plane_password_hashes_total counter\n\
             control_plane_password_hashes_total {}\n",
            self.accounts.hashes_computed()
        );
        out.push_str(&self.jobs.render());
        let pool = self.catalog.pool_status();
        let _ = write!(
            out,
            "# HELP control_plane_catalog_pool_connections Catalog connections this replica holds.\n\
             # TYPE control_plane_catalog_pool_connections gauge\n\
             control_plane_catalog_pool_connections {}\n\
             # HELP control_plane_catalog_pool_idle Of those, idle.\n\
             # TYPE control_plane_catalog_pool_idle gauge\n\
             control_plane_catalog_pool_idle {}\n\
             # HELP control_plane_catalog_pool_waiting Requests waiting for a catalog connection.\n\
             # TYPE control_plane_catalog_pool_waiting gauge\n\
             control_plane_catalog_pool_waiting {}\n\
             # HELP control_plane_catalog_pool_max Most catalog connections this replica opens.\n\
             # TYPE control_plane_catalog_pool_max gauge\n\
             control_plane_catalog_pool_max {}\n\
             # HELP control_plane_directory_subscribers Routers watching this replica's directory for changes.\n\
             # TYPE control_plane_directory_subscribers gauge\n\
             control_plane_directory_subscribers {}\n",
            pool.size,
            pool.available,
            pool.waiting,
            pool.max_size,
            self.directory.subscribers()
        );
        let catalog_up = match crate::catalog::fleet_state(&self.catalog).await {
            Ok(state) => {
                state.render(&mut out);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics cannot read the catalog");
                false
            }
        };
        let _ = write!(
            out,
            "# HELP control_plane_catalog_up Whether the catalog answered this scrape.\n\
             # TYPE control_plane_catalog_up gauge\n\
             control_plane_catalog_up {}\n",
            u8::from(catalog_up)
        );
        let up = match self.ingest.status(self.stuck_after_secs).await {
            Ok(s) => {
                let _ = write!(
                    out,
                    "# HELP control_plane_inbox_depth Webhook deliveries in the inbox not applied yet.\n\
                     # TYPE control_plane_inbox_depth gauge\n\
                     control_plane_inbox_depth {}\n\
                     # HELP control_plane_inbox_oldest_pending_seconds Age of the oldest delivery not applied yet.\n\
                     # TYPE control_plane_inbox_oldest_pending_seconds gauge\n\
                     control_plane_inbox_oldest_pending_seconds {}\n\
                     # HELP control_plane_inbox_stuck_tenants Tenants behind by more than ingest.stuck_after_secs, or failing.\n\
                     # TYPE control_plane_inbox_stuck_tenants gauge\n\
                     control_plane_inbox_stuck_tenants {}\n\
                     # HELP control_plane_inbox_apply_lag_seconds Age of the oldest pending delivery, per database server.\n\
                     # TYPE control_plane_inbox_apply_lag_seconds gauge\n",
                    s.depth,
                    s.oldest_age_secs,
                    s.stuck.len()
                );
                for (server, _, age) in &s.servers {
                    let _ = writeln!(
                        out,
                        "control_plane_inbox_apply_lag_seconds{{server=\"{}\"}} {age}",
                        server.replace(['\\', '"', '\n'], "_")
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics cannot read the inbox");
                false
            }
        };
        if let Ok((groups, members)) = self.ingest.consumers().await {
            let _ = write!(
                out,
                "# HELP control_plane_event_consumer_groups Consumer groups with a live subscriber.\n\
                 # TYPE control_plane_event_consumer_groups gauge\n\
                 control_plane_event_consumer_groups {groups}\n\
                 # HELP control_plane_event_subscribers Live event-stream subscribers (all routers).\n\
                 # TYPE control_plane_event_subscribers gauge\n\
                 control_plane_event_subscribers {members}\n"
            );
        }
        let _ = write!(
            out,
            "# HELP control_plane_ingest_up Whether the ingest database answered this scrape.\n\
             # TYPE control_plane_ingest_up gauge\n\
             control_plane_ingest_up {}\n",
            u8::from(up)
        );
        out
    }
}

/// Serves `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, sources: Sources, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sources = sources.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sources = sources.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (StatusCode::OK, sources.render().await)
                    } else {
                        (StatusCode::NOT_FOUND, "not found\n".to_string())
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// Binds the metrics listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))
}
