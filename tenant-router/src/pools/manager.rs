//! deadpool manager for one tenant's connections: each connection takes a permit of its
//! server's budget before connecting and gives it back only once the server backend has
//! gone: after we close our side, PostgreSQL's backend leaves its process array and then
//! exits, which closes the socket, so the permit is released when the socket reads EOF.

use super::budget::{BudgetPermit, ServerBudget};
use crate::error::RouterError;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::{CancelToken, Client, NoTls, Statement};

/// Longest wait for a closed connection's backend to exit before its permit is given back
/// anyway (a server that stopped answering).
const BACKEND_EXIT_WAIT: Duration = Duration::from_secs(2);

/// One tenant connection with its own prepared-statement cache.
pub struct PgConn {
    /// The connection.
    pub client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
    /// The session's `statement_timeout` in milliseconds as last set (`None`: not known);
    /// its lock is held while a statement and its limit are queued (see `session`).
    session: Mutex<Option<u32>>,
    /// The limit the tenant's connections last set: a new one starts with it.
    last_limit: Arc<AtomicU32>,
    server_addr: Arc<(String, u16)>,
}

/// Cancels the query a connection is running (a new connection to the server carrying the
/// backend's cancel key).
pub struct Canceller {
    token: CancelToken,
    server_addr: Arc<(String, u16)>,
}

impl Canceller {
    /// Asks the server to cancel the running query; best effort.
    pub async fn cancel(self) {
        if let Ok(stream) =
            TcpStream::connect((self.server_addr.0.as_str(), self.server_addr.1)).await
        {
            let _ = self.token.cancel_query_raw(stream, NoTls).await;
        }
    }
}

impl PgConn {
    /// What cancels this connection's running query from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            server_addr: Arc::clone(&self.server_addr),
        }
    }

    /// A prepared statement for `sql`, prepared once per connection (calls sharing the
    /// connection may both prepare it the first time; either statement works).
    pub async fn prepare(&self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared(sql) {
            return Ok(s);
        }
        let s = self.client.prepare(sql).await?;
        self.keep_prepared(sql, &s);
        Ok(s)
    }

    /// The statement for `sql` if this connection has prepared it.
    pub(crate) fn prepared(&self, sql: &'static str) -> Option<Statement> {
        self.statements().get(sql).cloned()
    }

    /// Remembers a statement prepared on this connection.
    pub(crate) fn keep_prepared(&self, sql: &'static str, s: &Statement) {
        self.statements().insert(sql, s.clone());
    }

    fn statements(&self) -> MutexGuard<'_, HashMap<&'static str, Statement>> {
        self.statements.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's statement time limit as last set; held while queueing a statement.
    pub(crate) fn session_limit(&self) -> MutexGuard<'_, Option<u32>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a limit just set on the session (under its lock), for the tenant's next
    /// connection to start with.
    pub(crate) fn limit_set(&self, session: &mut Option<u32>, ms: u32) {
        *session = Some(ms);
        self.last_limit.store(ms, Ordering::Relaxed);
    }
}

/// Why a tenant connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server is failing fast after repeated connect failures.
    #[error("server marked down")]
    Down,
    /// PostgreSQL refused the tenant's credentials (rotated password, moved tenant).
    #[error("authentication failed")]
    Auth,
    /// Connecting failed or took too long.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The tenant has connections and the server's budget has no free permit: wait for
    /// one of the tenant's own connections.
    #[error("no free connection budget")]
    Saturated,
    /// PostgreSQL refused or broke the startup (classified by `create`).
    #[error("connect failed: {0}")]
    Postgres(tokio_postgres::Error),
}

impl From<ConnectError> for RouterError {
    fn from(e: ConnectError) -> RouterError {
        match e {
            ConnectError::Saturated => RouterError::ResourceExhausted(
                "no connection to the tenant database became free before the deadline".into(),
            ),
            ConnectError::Down | ConnectError::Connect(_) | ConnectError::Postgres(_) => {
                RouterError::Unavailable("tenant database unavailable".into())
            }
            ConnectError::Auth => {
                RouterError::Unavailable("tenant database refused the stored credentials".into())
            }
        }
    }
}

/// A connection's driver, whatever its TLS: it ends when the client is dropped.
fn drive<S, T>(
    conn: tokio_postgres::Connection<S, T>,
) -> futures_util::future::BoxFuture<'static, ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tenant connection ended");
        }
    })
}

/// What one call adds to a tenant's use count (so that decay keeps fractions of a call).
const USE_WEIGHT: u64 = 256;

/// Opens connections for one tenant.
pub struct TenantManager {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) server: Arc<ServerBudget>,
    pub(crate) tenant: i64,
    pub(crate) connect_timeout: Duration,
    /// The server's host and port (`pg` has them too, but connections are opened here).
    pub(crate) server_addr: Arc<(String, u16)>,
    /// The tenant's connections, open or opening.
    pub(crate) live: Arc<AtomicUsize>,
    /// Calls for the tenant lately, [`USE_WEIGHT`] each, a 32nd forgotten every second (see
    /// `ServerBudget::decay_uses`): calls of the last 22 seconds weigh half. Rarely called
    /// tenants are told apart only over a long window.
    pub(crate) uses: AtomicU64,
    /// Until when the inbox is expected to visit the tenant (after a write through this
    /// router: the relay of its events): its last connection is not closed for another
    /// tenant meanwhile unless no other can be (see `ServerBudget::close_coldest_idle`).
    pub(crate) visit_expected: Mutex<Option<std::time::Instant>>,
    /// The statement limit the tenant's connections last set (0: none yet). A new
    /// connection gets it in its startup packet, which saves a `SET` round trip on the
    /// first statement of a tenant whose calls keep one limit (the inbox's applies do).
    pub(crate) last_limit: Arc<AtomicU32>,
    /// TLS to the server, verified against the configured CA (`None`: plaintext).
    pub(crate) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// A tenant connection's socket, holding its server budget permit. When the driver drops it
/// (our side is closed), a task reads until the server closes its side too, which PostgreSQL
/// does only as the backend process exits, after it has left the process array (so
/// `pg_stat_activity` and `max_connections` no longer count it); then the permit is freed.
struct Socket {
    inner: Option<TcpStream>,
    permit: Option<(BudgetPermit, Live)>,
}

/// Counts a tenant's connections (open or opening) while it lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(n: &Arc<AtomicUsize>) -> Live {
        n.fetch_add(1, Ordering::Relaxed);
        Live(Arc::clone(n))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Socket {
    fn stream(self: Pin<&mut Self>) -> Option<Pin<&mut TcpStream>> {
        self.get_mut().inner.as_mut().map(Pin::new)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Some(s) => s.poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let (Some(mut stream), Some(permit)) = (self.inner.take(), self.permit.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // Our side is shut down (Terminate sent); the server closes its side as the
            // backend exits.
            let _ = stream.shutdown().await;
            let mut buf = [0u8; 512];
            let _ = tokio::time::timeout(BACKEND_EXIT_WAIT, async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            drop(permit);
        });
    }
}

impl TenantManager {
    /// Counts a call for the tenant.
    pub(crate) fn note_use(&self) {
        self.uses.fetch_add(USE_WEIGHT, Ordering::Relaxed);
    }

    /// Keeps the tenant's last connection for the inbox's visit expected within `within`.
    pub(crate) fn expect_visit(&self, within: Duration) {
        *self
            .visit_expected
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now() + within);
    }

    /// The expected visit came (or will not be waited for any more).
    pub(crate) fn visited(&self) {
        *self
            .visit_expected
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether a visit of the inbox is expected now.
    pub(crate) fn visit_pending(&self) -> bool {
        self.visit_expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// Forgets a 32nd of the tenant's use count (called every second).
    pub(crate) fn decay_uses(&self) {
        let _ = self
            .uses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u - u / 32));
    }
}

impl deadpool::managed::Manager for TenantManager {
    type Type = PgConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<PgConn, ConnectError> {
        self.server.check_up().map_err(|_| ConnectError::Down)?;
        // A tenant that has a connection grows only into a free permit: under pressure its
        // calls wait for its own connections instead of queueing behind cold tenants (and
        // closing others' connections) for one more.
        let permit = if self.live.load(Ordering::Relaxed) > 0 {
            self.server.try_acquire().ok_or(ConnectError::Saturated)?
        } else {
            self.server.acquire(self.tenant).await
        };
        let permit = (permit, Live::new(&self.live));
        let first_limit = self.last_limit.load(Ordering::Relaxed);
        let pg = match first_limit {
            0 => std::borrow::Cow::Borrowed(&self.pg),
            ms => {
                let mut pg = self.pg.clone();
                // Built from a number only.
                pg.options(format!("-c statement_timeout={ms}"));
                std::borrow::Cow::Owned(pg)
            }
        };
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let stream = TcpStream::connect((self.server_addr.0.as_str(), self.server_addr.1))
                .await
                .map_err(|e| ConnectError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let socket = Socket {
                inner: Some(stream),
                permit: Some(permit),
            };
            match &self.tls {
                None => pg
                    .connect_raw(socket, NoTls)
                    .await
                    .map(|(client, conn)| (client, drive(conn)))
                    .map_err(ConnectError::Postgres),
                Some(tls) => {
                    use tokio_postgres::tls::MakeTlsConnect;
                    let host = self.server_addr.0.as_str();
                    let connector = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<
                        Socket,
                    >>::make_tls_connect(&mut tls.clone(), host)
                    .map_err(|e| ConnectError::Connect(format!("tls: {e}")))?;
                    pg.connect_raw(socket, connector)
                        .await
                        .map(|(client, conn)| (client, drive(conn)))
                        .map_err(ConnectError::Postgres)
                }
            }
        })
        .await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(ConnectError::Postgres(e))) => {
                use tokio_postgres::error::SqlState;
                let code = e.as_db_error().map(|d| d.code().clone());
                if matches!(
                    code,
                    Some(SqlState::INVALID_PASSWORD)
                        | Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                ) {
                    return Err(ConnectError::Auth);
                }
                if code.is_none()
                    || code == Some(SqlState::CANNOT_CONNECT_NOW)
                    || code == Some(SqlState::TOO_MANY_CONNECTIONS)
                {
                    self.server.record_connect(false);
                }
                return Err(ConnectError::Connect(e.to_string()));
            }
            Ok(Err(e)) => {
                self.server.record_connect(false);
                return Err(e);
            }
            Err(_) => {
                self.server.record_connect(false);
                return Err(ConnectError::Connect("timed out".into()));
            }
        };
        self.server.record_connect(true);
        // The driver task ends when the client is dropped; its socket then waits for the
        // backend to exit before giving the budget permit back (see `Socket`).
        tokio::spawn(connection);
        Ok(PgConn {
            client,
            statements: Mutex::new(HashMap::new()),
            session: Mutex::new((first_limit > 0).then_some(first_limit)),
            last_limit: Arc::clone(&self.last_limit),
            server_addr: Arc::clone(&self.server_addr),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            return Err(deadpool::managed::RecycleError::message(
                "connection closed",
            ));
        }
        if self.server.close_for_debt() {
            return Err(deadpool::managed::RecycleError::message(
                "connection closed: this router's share of the server went down",
            ));
        }
        if self.server.should_yield() {
            return Err(deadpool::managed::RecycleError::message(
                "connection given up for a tenant waiting for the budget",
            ));
        }
        Ok(())
    }
}
