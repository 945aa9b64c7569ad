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

/// Per-connection read-ahead buffer (hyper's minimum is 8 KiB).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How long a request may wait for its share of the body buffer before it gets 503.
const BUFFER_WAIT: Duration = Duration::from_secs(1);

/// What the HTTP handlers read.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pools: Arc<Pools>,
    pub routes: Arc<RouteCache>,
    /// WhatsApp webhooks, when configured.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// Connection and timing bounds.
    pub limits: crate::config::Http,
    /// Body bytes that may be buffered at once (`limits.max_buffered_bytes` permits).
    pub buffer: Arc<Semaphore>,
}

impl HttpState {
    /// The body-buffer semaphore for `limits` (one permit per byte).
    pub fn buffer_for(limits: &crate::config::Http) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(limits.max_buffered_bytes))
    }
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
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Response<Full<Bytes>>> {
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
    // Bytes are reserved from the shared buffer as they arrive (a client that stalls holds
    // nothing), and the reservation lives as long as the caller holds the body.
    let overloaded = || {
        state
            .metrics
            .webhooks
            .with_label_values(&["overloaded"])
            .inc();
        text(StatusCode::SERVICE_UNAVAILABLE, "busy; retry later\n")
    };
    let mut reservation = match Arc::clone(&state.buffer).try_acquire_many_owned(0) {
        Ok(p) => p,
        Err(_) => return Err(overloaded()),
    };
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut reserved = 0usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.limits.body_read_timeout_ms);
    loop {
        let next = tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut body));
        let frame = match next.await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(text(StatusCode::BAD_REQUEST, "could not read the body\n"))
            }
            Err(_) => {
                state
                    .metrics
                    .webhooks
                    .with_label_values(&["slow_body"])
                    .inc();
                return Err(text(
                    StatusCode::REQUEST_TIMEOUT,
                    "body not received in time\n",
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(too_large());
        }
        if needed > reserved {
            // The whole declared body at once (one allocation, no growth copies), else what
            // arrived.
            let want = declared.unwrap_or(needed).clamp(needed, limit);
            let more = u32::try_from(want - reserved).unwrap_or(u32::MAX);
            let got = tokio::time::timeout(
                BUFFER_WAIT,
                Arc::clone(&state.buffer).acquire_many_owned(more),
            );
            match got.await {
                Ok(Ok(permit)) => reservation.merge(permit),
                _ => return Err(overloaded()),
            }
            reserved = want;
            buf.reserve_exact(want - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok((Bytes::from(buf), reservation))
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
        Answer::Busy => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many deliveries waiting; retry later\n",
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
    let (body, _reservation) = match read_body(state, req, hooks.cfg.body_limit_bytes).await {
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
            let (body, _reservation) = match read_body(state, req, hooks.cfg.body_limit_bytes).await
            {
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
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    let header_timeout = Duration::from_millis(state.limits.header_read_timeout_ms);
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                // Out of file descriptors, say: give the others a moment to close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Full: answer at once and close, never queue.
            state
                .metrics
                .webhooks
                .with_label_values(&["overloaded"])
                .inc();
            tasks.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(busy)).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            // hyper reads ahead into its own buffer: keep it small so bodies wait in the
            // socket, not in memory outside the shared body bound.
            .max_buf_size(READ_BUFFER_BYTES)
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
