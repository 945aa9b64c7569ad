//! Accepted connections for the gRPC servers (`serve_with_incoming*`), bounded: at most
//! `max_connections` at once (past it a new connection is closed at once, never queued),
//! and a client that sends nothing within `first_byte_timeout` of connecting (a TLS or
//! HTTP/2 handshake that never starts) is disconnected. `TCP_NODELAY` is set: tonic applies
//! its own only to listeners it binds, and without it small gRPC frames wait on Nagle and
//! delayed ACKs (~40 ms).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds of a gRPC listener.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a new connection has to send its first byte.
    pub first_byte_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: 10_000,
            first_byte_timeout: Duration::from_secs(10),
        }
    }
}

/// An accepted connection holding its slot until it closes.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the client must have spoken by.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The bounded stream of accepted connections of `listener`.
pub fn incoming(
    listener: TcpListener,
    bounds: Bounds,
) -> impl futures_util::Stream<Item = io::Result<Guarded>> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => return Some((Err(e), (listener, slots))),
            };
            // Full: drop it (the client sees the connection close), never queue it.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let guarded = Guarded {
                stream,
                _slot: slot,
                first_byte: Some(Box::pin(tokio::time::sleep(bounds.first_byte_timeout))),
            };
            return Some((Ok(guarded), (listener, slots)));
        }
    })
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .first_byte
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent nothing in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The `[grpc]` settings both daemons take: connection bounds and HTTP/2 limits.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcLimits {
    /// Connections open at once; past it a new connection is closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Time a new connection has to start its (TLS or HTTP/2) handshake, in milliseconds.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Concurrent streams (calls) per connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval, in seconds (a dead peer is dropped after 20 s more).
    #[serde(default = "defaults::keepalive_secs")]
    pub keepalive_secs: u64,
}

mod defaults {
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_concurrent_streams() -> u32 {
        1_024
    }
    pub fn keepalive_secs() -> u64 {
        30
    }
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_connections: defaults::max_connections(),
            handshake_timeout_ms: defaults::handshake_timeout_ms(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            keepalive_secs: defaults::keepalive_secs(),
        }
    }
}

impl GrpcLimits {
    /// The listener bounds.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_connections: self.max_connections,
            first_byte_timeout: Duration::from_millis(self.handshake_timeout_ms),
        }
    }

    /// A tonic server builder with the HTTP/2 limits applied.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(self.keepalive_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
    }

    /// Whether the values make sense (names the first that does not).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0
            || self.handshake_timeout_ms == 0
            || self.max_concurrent_streams == 0
            || self.keepalive_secs == 0
        {
            return Err("grpc.max_connections, handshake_timeout_ms, max_concurrent_streams and keepalive_secs must be above 0".into());
        }
        Ok(())
    }
}
