//! The control plane's Prometheus endpoint (`metrics_listen`, off by default): plain
//! HTTP/1 `GET /metrics` in the text exposition format. Labels stay bounded (no tenants,
//! no users).

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
}

impl Sources {
    fn render(&self) -> String {
        format!(
            "# HELP control_plane_password_hashes_total Argon2id computations (logins, password changes, unknown emails alike).\n\
             # TYPE control_plane_password_hashes_total counter\n\
             control_plane_password_hashes_total {}\n",
            self.accounts.hashes_computed()
        )
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
                        (StatusCode::OK, sources.render())
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
