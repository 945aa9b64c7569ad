//! The router's HTTP side: WhatsApp webhooks (`GET`/`POST /webhooks/whatsapp`),
//! `/metrics` (Prometheus) and `/healthz`.

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
    /// WhatsApp webhooks, when configured.
    pub webhooks: Option<crate::webhook::Webhooks>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/webhooks/whatsapp" {
        return whatsapp(state, req).await;
    }
    if let Some(instance) = req.uri().path().strip_prefix("/webhooks/evolution/") {
        let instance = instance.to_string();
        return evolution(state, &instance, req).await;
    }
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

/// Reads a body of at most `limit` bytes; `Err` is the response to send instead.
async fn read_body(
    state: &HttpState,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        state
            .metrics
            .webhooks
            .with_label_values(&["too_large"])
            .inc();
        text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), limit))
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "could not read the body\n")),
    }
}

fn answer(a: crate::webhook::Answer) -> Response<Full<Bytes>> {
    use crate::webhook::Answer;
    match a {
        Answer::Ok => text(StatusCode::OK, "ok\n"),
        Answer::BadRequest => text(
            StatusCode::BAD_REQUEST,
            "not a webhook this endpoint takes\n",
        ),
        Answer::Unauthorized => text(StatusCode::UNAUTHORIZED, "invalid signature or token\n"),
        Answer::Retry => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not stored; retry later\n",
        ),
    }
}

async fn evolution(
    state: &HttpState,
    instance: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(hooks) = &state.webhooks else {
        return text(StatusCode::NOT_FOUND, "webhooks are not configured\n");
    };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let token = header("apikey").or_else(|| {
        header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
    });
    let body = match read_body(state, req, hooks.cfg.body_limit_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    answer(
        hooks
            .deliver_evolution(instance, token.as_deref(), &body)
            .await,
    )
}

async fn whatsapp(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::webhook::parse_query;
    let Some(hooks) = &state.webhooks else {
        return text(StatusCode::NOT_FOUND, "webhooks are not configured\n");
    };
    match *req.method() {
        Method::GET => {
            let query = parse_query(req.uri().query().unwrap_or(""));
            match hooks.verify(&query) {
                Some(challenge) => text(StatusCode::OK, challenge.to_string()),
                None => text(StatusCode::FORBIDDEN, "verification failed\n"),
            }
        }
        Method::POST => {
            let signature = req
                .headers()
                .get("x-hub-signature-256")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = match read_body(state, req, hooks.cfg.body_limit_bytes).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            answer(hooks.deliver(&body, signature.as_deref()).await)
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
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
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
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
