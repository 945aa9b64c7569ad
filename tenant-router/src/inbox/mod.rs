//! The message pipeline's durable inbox, as a router uses it.
//!
//! The webhook path hands each signed delivery's per-tenant batches to [`Inbox::submit`],
//! which returns once they are committed to the ingest database (`synchronous_commit=on`;
//! the control plane refuses a server without `fsync`): that is when the sender is answered
//! 200. Concurrent deliveries are committed together by a few writer tasks (group commit,
//! [`writer`]). Workers ([`apply`]) then drain the inbox per tenant, in arrival order,
//! through the same path and connection budget as gRPC calls.
//!
//! The router reaches the ingest database with its own login, handed over by the control
//! plane's directory (`GetIngest`); that login sees only the rows of the servers this router
//! may serve.

pub mod apply;
pub mod relay;
pub mod writer;

use crate::config;
use crate::error::RouterError;
use crate::routes::RouteCache;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, RwLock};
use tokio_postgres::error::SqlState;

/// One tenant's share of one delivery, ready for the inbox.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub tenant_id: i64,
    /// The tenant's database server (routes carry it).
    pub server: String,
    /// `meta` or `evolution`.
    pub source: &'static str,
    /// The business number it was sent to (Meta; empty for Evolution).
    pub phone: String,
    /// The normalised batch as JSON.
    pub batch: String,
    /// Messages in it.
    pub messages: i32,
}

/// Why a delivery could not be written to the inbox.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InboxError {
    /// The ingest database (or the control plane handing out its login) is unavailable.
    #[error("the inbox is unavailable")]
    Unavailable,
    /// Too many deliveries are waiting for a commit.
    #[error("the inbox is full")]
    Full,
    /// The router is shutting down.
    #[error("the router is shutting down")]
    ShuttingDown,
}

/// A delivery waiting for its group commit.
pub(crate) struct Submission {
    rows: Vec<NewRow>,
    done: oneshot::Sender<Result<(), InboxError>>,
}

/// Time for a woken tenant's relay to get a worker, on top of its relay turn.
const RELAY_QUEUEING: Duration = Duration::from_millis(250);

/// Connections to the ingest database: the writers' and the workers' (apart, so slow
/// tenant databases holding workers never delay acknowledgements).
pub(crate) struct Connections {
    pub(crate) writer: Pool,
    pub(crate) worker: Pool,
    /// Event streams' reads, acknowledgements and group memberships.
    pub(crate) reader: Pool,
}

/// The inbox handle shared by the webhook path, the writers and the workers.
pub struct Inbox {
    routes: Arc<RouteCache>,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pub(crate) cfg: config::Inbox,
    connections: RwLock<Option<Arc<Connections>>>,
    connecting: Mutex<()>,
    queue: mpsc::Sender<Submission>,
    /// Tenants with freshly committed rows or events, for this router's workers.
    wake: mpsc::Sender<(i64, Wake)>,
    /// Bumped whenever this router's workers recorded events (streams read at once).
    events: tokio::sync::watch::Sender<u64>,
    /// Tenants recorded before domain writes ([`relay`]).
    marks: relay::Marks,
}

/// The receiving ends [`Inbox::new`] hands to the writer and the workers.
pub struct Receivers {
    pub(crate) queue: mpsc::Receiver<Submission>,
    pub(crate) wake: mpsc::Receiver<(i64, Wake)>,
}

/// Why the workers are woken for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Inbox rows were committed: apply them now.
    Rows,
    /// A domain write left events in the tenant's outbox: relay them within
    /// `inbox.relay_every_ms` (one relay carries every write's events meanwhile).
    Events,
}

impl Inbox {
    pub fn new(
        routes: Arc<RouteCache>,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
        cfg: config::Inbox,
    ) -> (Arc<Inbox>, Receivers) {
        let (queue, queue_rx) = mpsc::channel(cfg.queue);
        let (wake, wake_rx) = mpsc::channel(4096);
        (
            Arc::new(Inbox {
                routes,
                tls,
                cfg,
                connections: RwLock::new(None),
                connecting: Mutex::new(()),
                queue,
                wake,
                events: tokio::sync::watch::Sender::new(0),
                marks: relay::Marks::default(),
            }),
            Receivers {
                queue: queue_rx,
                wake: wake_rx,
            },
        )
    }

    /// Writes a delivery's rows and returns once they are durable (all or none).
    pub async fn submit(&self, rows: Vec<NewRow>) -> Result<(), InboxError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .try_send(Submission { rows, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => InboxError::Full,
                mpsc::error::TrySendError::Closed(_) => InboxError::ShuttingDown,
            })?;
        answer.await.unwrap_or(Err(InboxError::ShuttingDown))
    }

    /// The connections, made on first use from the login the directory hands over.
    pub(crate) async fn connections(&self) -> Result<Arc<Connections>, RouterError> {
        if let Some(c) = self.connections.read().await.as_ref() {
            return Ok(Arc::clone(c));
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.connections.read().await.as_ref() {
            return Ok(Arc::clone(c));
        }
        let route = self.routes.ingest_route().await?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&route.host)
            .port(u16::try_from(route.port).unwrap_or(5432))
            .dbname(&route.database)
            .user(&route.role)
            .password(&route.password)
            .application_name("tenant-router-inbox")
            .connect_timeout(Duration::from_secs(3))
            // Acknowledged means committed and flushed, whatever the role's defaults say.
            .options("-c synchronous_commit=on");
        if self.tls.is_some() {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let pool = |size: usize| {
            let manager_cfg = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &self.tls {
                Some(tls) => {
                    deadpool_postgres::Manager::from_config(pg.clone(), tls.clone(), manager_cfg)
                }
                None => deadpool_postgres::Manager::from_config(
                    pg.clone(),
                    tokio_postgres::NoTls,
                    manager_cfg,
                ),
            };
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(Duration::from_secs(5)))
                .create_timeout(Some(Duration::from_secs(5)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| RouterError::Internal(format!("ingest pool: {e}")))
        };
        let c = Arc::new(Connections {
            writer: pool(self.cfg.writers)?,
            // Two more than the workers: relay marks and polls never wait for an apply.
            worker: pool(self.cfg.workers + 2)?,
            reader: pool(self.cfg.readers)?,
        });
        *self.connections.write().await = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Takes a connection from one of the pools; a refused login drops both pools so the
    /// next use fetches the login again (it changes when the router is registered anew).
    pub(crate) async fn connection(
        &self,
        pick: impl Fn(&Connections) -> &Pool,
    ) -> Result<deadpool_postgres::Object, RouterError> {
        let c = self.connections().await?;
        match pick(&c).get().await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                let refused = matches!(&e, deadpool_postgres::PoolError::Backend(b)
                    if b.code() == Some(&SqlState::INVALID_PASSWORD)
                        || b.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION));
                if refused {
                    tracing::warn!(
                        "the ingest database refused this router's login; fetching it again"
                    );
                    *self.connections.write().await = None;
                }
                tracing::warn!(error = %e, "cannot reach the ingest database");
                Err(RouterError::Unavailable("the inbox is unavailable".into()))
            }
        }
    }

    /// Tells this router's event streams that new events are in the log.
    pub(crate) fn events_recorded(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified whenever this router records events.
    pub(crate) fn events_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// How soon the workers usually visit a tenant after a domain write (its relay turn and
    /// some queueing): its connection is kept that long for them (see `Pools::expect_visit`).
    pub fn relay_within(&self) -> Duration {
        Duration::from_millis(self.cfg.relay_every_ms) + RELAY_QUEUEING
    }

    /// Tells this router's workers a tenant has fresh rows or events to relay (dropped
    /// when they are busy: their poll finds pending rows anyway, and a dropped relay goes
    /// out with the tenant's next write or with the stale-mark sweep).
    pub fn wake(&self, tenant_id: i64, why: Wake) {
        let _ = self.wake.try_send((tenant_id, why));
    }
}

/// Whether a database error is about the data (it will fail again) rather than the
/// database being unavailable.
pub(crate) fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}
