//! The router's HTTP side: `/metrics` (Prometheus) and `/healthz`. (WhatsApp webhooks join
//! here in their own issue.)

use crate::metrics::Metrics;
use crate::pools::Pools;
use crate::routes::RouteCache;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// HTTP connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 1024;

/// What the HTTP handlers read.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pools: Arc<Pools>,
    pub routes: Arc<RouteCache>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn handle(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let m = &state.metrics;
            m.pools_open
                .set(i64::try_from(state.pools.open_pools()).unwrap_or(i64::MAX));
            m.routes_cached
                .set(i64::try_from(state.routes.entries()).unwrap_or(i64::MAX));
            for (server, open, budget) in state.pools.server_connections() {
                m.server_connections
                    .with_label_values(&[server.as_str()])
                    .set(i64::from(open));
                m.server_budget
                    .with_label_values(&[server.as_str()])
                    .set(i64::from(budget));
            }
            let mut r = text(StatusCode::OK, m.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (_, "/metrics" | "/healthz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves HTTP on `listener` until `shutdown`, then lets open requests finish (bounded).
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                continue;
            }
        };
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = handle(&state, &req);
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        tasks.spawn(async move {
            let _ = watched.await;
            drop(permit);
        });
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http connections still open after 10 s; closing them");
    }
}
