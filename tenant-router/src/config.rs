//! Router configuration: a TOML file overridden by `TENANT_ROUTER__*` environment variables
//! (nested keys joined by `__`). Unknown keys are errors.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

pub use service_kit::ConfigError;

/// The whole router configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (domain API, health, reflection).
    pub grpc_listen: SocketAddr,
    /// HTTP listen address (`/metrics`, `/healthz`; webhooks later).
    pub http_listen: SocketAddr,
    /// The gRPC health service alone, in plaintext, on this address (off when unset): for
    /// probes that cannot speak TLS, like Kubernetes' gRPC probes. It says nothing else.
    #[serde(default)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// The control plane's gRPC endpoint (`TenantDirectory`); several replicas' endpoints
    /// separated by commas (the router uses those that answer).
    pub control_plane_endpoint: String,
    /// This router's own directory credential (`tenantctl router add NAME` prints it).
    pub directory_token: String,
    /// Base64 Ed25519 public key caller tokens are verified with (the control plane
    /// prints it: `control-plane --print-verifying-key`). The router cannot mint tokens.
    pub token_verifying_key: String,
    /// Serve gRPC over TLS with this certificate.
    #[serde(default)]
    pub tls: Option<service_kit::tls::ServerTls>,
    /// Verify the control plane's certificate against this CA (with an `https://`
    /// endpoint).
    #[serde(default)]
    pub control_plane_tls: Option<service_kit::tls::ClientTls>,
    /// Connect to tenant databases over TLS, verifying servers' certificates and host
    /// names against this CA.
    #[serde(default)]
    pub database_tls: Option<service_kit::tls::ClientTls>,
    /// Route cache settings.
    #[serde(default)]
    pub routes: Routes,
    /// Tenant pool settings.
    #[serde(default)]
    pub pools: Pools,
    /// Per-tenant limits from the tenant's plan.
    #[serde(default)]
    pub limits: Limits,
    /// How long in-flight calls may take to finish once shutdown starts, in milliseconds.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Bounds of the HTTP side.
    #[serde(default)]
    pub http: Http,
    /// Connection bounds and HTTP/2 limits of the gRPC listener.
    #[serde(default)]
    pub grpc: service_kit::incoming::GrpcLimits,
    /// WhatsApp webhook settings; without them the webhook endpoints answer 404.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// The message pipeline: writing deliveries to the durable inbox and applying them.
    #[serde(default)]
    pub inbox: Inbox,
}

/// How this router writes to and drains the durable inbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    /// Group commits in flight at once (one ingest connection each); deliveries arriving
    /// meanwhile join the next one.
    #[serde(default = "defaults::inbox_writers")]
    pub writers: usize,
    /// Most inbox rows one group commit writes.
    #[serde(default = "defaults::inbox_group_rows")]
    pub group_rows: usize,
    /// Deliveries waiting for a group commit at most; past it a delivery is answered 503.
    #[serde(default = "defaults::inbox_queue")]
    pub queue: usize,
    /// Tenants applied at once by this router's workers (one ingest connection each,
    /// besides the tenant's).
    #[serde(default = "defaults::inbox_workers")]
    pub workers: usize,
    /// Of those, how many may be applying tenants that have no open connection (each such
    /// apply opens one, and over budget closes another tenant's); 0: a quarter.
    #[serde(default)]
    pub cold_workers: usize,
    /// Ingest connections event streams share (reads, acknowledgements, memberships).
    #[serde(default = "defaults::inbox_readers")]
    pub readers: usize,
    /// How often an event stream looks for events other routers relayed, in milliseconds
    /// (events this router relays are streamed at once).
    #[serde(default = "defaults::events_poll_ms")]
    pub events_poll_ms: u64,
    /// Most inbox rows one apply takes from a tenant.
    #[serde(default = "defaults::inbox_apply_rows")]
    pub apply_rows: i64,
    /// How often workers look for pending rows written by other routers or left by failed
    /// applies, in milliseconds.
    #[serde(default = "defaults::inbox_poll_ms")]
    pub poll_ms: u64,
    /// Time one apply may take on the tenant's database, in milliseconds.
    #[serde(default = "defaults::inbox_apply_timeout_ms")]
    pub apply_timeout_ms: u64,
    /// Longest wait before a failing tenant is tried again, in milliseconds.
    #[serde(default = "defaults::inbox_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long a tenant's record "its outbox may hold unrelayed events" lasts before a
    /// domain write renews it, in milliseconds; a record three windows old is relayed by
    /// any router (the one that wrote it died before relaying).
    #[serde(default = "defaults::inbox_relay_window_ms")]
    pub relay_window_ms: u64,
    /// At most one relay of a tenant's domain-write events starts per this many
    /// milliseconds: writes within it share one relay (0: a relay right after each write).
    #[serde(default = "defaults::inbox_relay_every_ms")]
    pub relay_every_ms: u64,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            writers: defaults::inbox_writers(),
            group_rows: defaults::inbox_group_rows(),
            queue: defaults::inbox_queue(),
            workers: defaults::inbox_workers(),
            cold_workers: 0,
            readers: defaults::inbox_readers(),
            events_poll_ms: defaults::events_poll_ms(),
            apply_rows: defaults::inbox_apply_rows(),
            poll_ms: defaults::inbox_poll_ms(),
            apply_timeout_ms: defaults::inbox_apply_timeout_ms(),
            max_backoff_ms: defaults::inbox_max_backoff_ms(),
            relay_window_ms: defaults::inbox_relay_window_ms(),
            relay_every_ms: defaults::inbox_relay_every_ms(),
        }
    }
}

/// WhatsApp (Meta Cloud API) webhook settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The Meta app secret: the key of `X-Hub-Signature-256`.
    pub app_secret: String,
    /// The verify token of the GET handshake.
    pub verify_token: String,
    /// Largest body accepted, in bytes (Meta sends at most 3 MB).
    #[serde(default = "defaults::body_limit")]
    pub body_limit_bytes: usize,
    /// Time to answer Meta within, in milliseconds (Meta wants well under a second).
    #[serde(default = "defaults::webhook_deadline_ms")]
    pub deadline_ms: u64,
}

/// Bounds of the HTTP side (webhooks, metrics, health): what one client, or many, can hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Connections served at once; past it a new connection is answered 503 and closed
    /// at once (never queued). Raise the process's open-files limit above it.
    #[serde(default = "defaults::http_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send its request headers, in milliseconds.
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send its body, in milliseconds (408 past it).
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Bytes of request bodies held in memory at once across all requests; a request that
    /// cannot reserve its share within a second is answered 503.
    #[serde(default = "defaults::max_buffered_bytes")]
    pub max_buffered_bytes: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            max_connections: defaults::http_max_connections(),
            header_read_timeout_ms: defaults::header_read_timeout_ms(),
            body_read_timeout_ms: defaults::body_read_timeout_ms(),
            max_buffered_bytes: defaults::max_buffered_bytes(),
        }
    }
}

/// Route cache settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Most routes kept (each is cached under its slug and its id).
    #[serde(default = "defaults::route_capacity")]
    pub capacity: u64,
    /// A route older than this is refreshed on use (served stale if the control plane is
    /// unreachable), in seconds.
    #[serde(default = "defaults::route_ttl_secs")]
    pub ttl_secs: u64,
    /// How long "no such tenant" is remembered, in milliseconds.
    #[serde(default = "defaults::negative_ttl_ms")]
    pub negative_ttl_ms: u64,
    /// How often per-tenant usage (calls, messages) is reported to the control plane, in
    /// seconds.
    #[serde(default = "defaults::usage_report_every_secs")]
    pub usage_report_every_secs: u64,
}

/// How this router applies plan limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// This router's share of each plan's calls per second (1.0 for a single router, 0.5
    /// for each of two, ...): the fleet admits about the plan's rate in all.
    #[serde(default = "defaults::rate_share")]
    pub rate_share: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_share: defaults::rate_share(),
        }
    }
}

/// Tenant pool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    /// Connections one tenant's pool may hold.
    #[serde(default = "defaults::per_tenant")]
    pub max_per_tenant: usize,
    /// Most connections all cached pools together may hold (the pool cache's weight).
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u64,
    /// A tenant pool unused this long is closed, in seconds.
    #[serde(default = "defaults::idle_secs")]
    pub idle_secs: u64,
    /// Timeout to open one tenant connection, in milliseconds.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline of calls that carry none, in milliseconds.
    #[serde(default = "defaults::default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Consecutive connect failures after which a server fails fast.
    #[serde(default = "defaults::fail_fast_after")]
    pub fail_fast_after: u32,
    /// How long a server fails fast, in milliseconds.
    #[serde(default = "defaults::fail_fast_ms")]
    pub fail_fast_ms: u64,
    /// Single-statement calls pipelined on one connection before another is taken (when
    /// the budget allows); 0 turns pipelining off (every call takes a connection of its own).
    #[serde(default = "defaults::pipeline_depth")]
    pub pipeline_depth: usize,
    /// A shared connection on which no call finished for this long, in milliseconds, takes
    /// no new calls while others can be had (its head statement is slow).
    #[serde(default = "defaults::stuck_after_ms")]
    pub stuck_after_ms: u64,
}

mod defaults {
    pub fn inbox_writers() -> usize {
        3
    }
    pub fn inbox_group_rows() -> usize {
        1_000
    }
    pub fn inbox_queue() -> usize {
        20_000
    }
    pub fn inbox_workers() -> usize {
        8
    }
    pub fn inbox_readers() -> usize {
        4
    }
    pub fn events_poll_ms() -> u64 {
        200
    }
    pub fn inbox_apply_rows() -> i64 {
        500
    }
    pub fn inbox_poll_ms() -> u64 {
        500
    }
    pub fn inbox_apply_timeout_ms() -> u64 {
        5_000
    }
    pub fn inbox_max_backoff_ms() -> u64 {
        4_000
    }
    pub fn inbox_relay_window_ms() -> u64 {
        60_000
    }
    pub fn inbox_relay_every_ms() -> u64 {
        25
    }
    pub fn usage_report_every_secs() -> u64 {
        30
    }
    pub fn rate_share() -> f64 {
        1.0
    }
    pub fn http_max_connections() -> usize {
        10_000
    }
    pub fn header_read_timeout_ms() -> u64 {
        5_000
    }
    pub fn body_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_buffered_bytes() -> usize {
        64 << 20
    }
    pub fn shutdown_grace_ms() -> u64 {
        20_000
    }
    pub fn body_limit() -> usize {
        3 * 1024 * 1024
    }
    pub fn webhook_deadline_ms() -> u64 {
        800
    }
    pub fn route_capacity() -> u64 {
        200_000
    }
    pub fn route_ttl_secs() -> u64 {
        300
    }
    pub fn negative_ttl_ms() -> u64 {
        2_000
    }
    pub fn stuck_after_ms() -> u64 {
        20
    }
    pub fn pipeline_depth() -> usize {
        8
    }
    pub fn per_tenant() -> usize {
        4
    }
    pub fn max_connections() -> u64 {
        10_000
    }
    pub fn idle_secs() -> u64 {
        300
    }
    pub fn connect_timeout_ms() -> u64 {
        3_000
    }
    pub fn default_deadline_ms() -> u64 {
        5_000
    }
    pub fn fail_fast_after() -> u32 {
        3
    }
    pub fn fail_fast_ms() -> u64 {
        2_000
    }
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            capacity: defaults::route_capacity(),
            ttl_secs: defaults::route_ttl_secs(),
            negative_ttl_ms: defaults::negative_ttl_ms(),
            usage_report_every_secs: defaults::usage_report_every_secs(),
        }
    }
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            max_per_tenant: defaults::per_tenant(),
            max_connections: defaults::max_connections(),
            idle_secs: defaults::idle_secs(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            default_deadline_ms: defaults::default_deadline_ms(),
            fail_fast_after: defaults::fail_fast_after(),
            fail_fast_ms: defaults::fail_fast_ms(),
            pipeline_depth: defaults::pipeline_depth(),
            stuck_after_ms: defaults::stuck_after_ms(),
        }
    }
}

impl Config {
    /// The control-plane replicas' endpoints (`control_plane_endpoint`, split at commas).
    pub fn control_plane_endpoints(&self) -> Vec<&str> {
        self.control_plane_endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// Loads `path` (if given) and the `TENANT_ROUTER__*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let cfg: Config = service_kit::load_config("TENANT_ROUTER", path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if let Err(e) = caller_auth::Verifier::from_base64(&self.token_verifying_key) {
            return invalid(&e.to_string());
        }
        if self.directory_token.len() < 16 {
            return invalid("directory_token must be at least 16 characters");
        }
        let endpoints = self.control_plane_endpoints();
        if endpoints.is_empty()
            || endpoints
                .iter()
                .any(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return invalid(
                "control_plane_endpoint must be http:// or https:// URLs, separated by commas",
            );
        }
        if endpoints
            .iter()
            .any(|e| e.starts_with("https://") != self.control_plane_tls.is_some())
        {
            return invalid(
                "an https:// control_plane_endpoint needs control_plane_tls.ca_file (and http:// none)",
            );
        }
        let i = &self.inbox;
        if i.writers == 0
            || i.readers == 0
            || i.events_poll_ms == 0
            || i.group_rows == 0
            || i.queue == 0
            || i.workers == 0
            || i.apply_rows <= 0
            || i.poll_ms == 0
            || i.apply_timeout_ms == 0
            || i.relay_window_ms == 0
        {
            return invalid("inbox.writers, readers, events_poll_ms, group_rows, queue, workers, apply_rows, poll_ms, apply_timeout_ms and relay_window_ms must be above 0");
        }
        if i.relay_every_ms >= i.relay_window_ms {
            return invalid("inbox.relay_every_ms must be below inbox.relay_window_ms");
        }
        if i.cold_workers > i.workers {
            return invalid("inbox.cold_workers must be at most inbox.workers");
        }
        if self.routes.usage_report_every_secs == 0 {
            return invalid("routes.usage_report_every_secs must be at least 1");
        }
        if !(self.limits.rate_share > 0.0 && self.limits.rate_share <= 1.0) {
            return invalid("limits.rate_share must be above 0 and at most 1");
        }
        if self.pools.max_per_tenant == 0
            || self.pools.max_connections == 0
            || self.routes.capacity == 0
        {
            return invalid("pools.max_per_tenant, pools.max_connections and routes.capacity must be at least 1");
        }
        if self.pools.pipeline_depth > 1024 {
            return invalid("pools.pipeline_depth must be at most 1024 (0 turns pipelining off)");
        }
        if self.pools.stuck_after_ms == 0 || self.pools.stuck_after_ms > 60_000 {
            return invalid("pools.stuck_after_ms must be between 1 and 60000");
        }
        if let Err(e) = self.grpc.validate() {
            return invalid(&e);
        }
        let h = &self.http;
        if h.max_connections == 0
            || h.header_read_timeout_ms == 0
            || h.body_read_timeout_ms == 0
            || h.max_buffered_bytes == 0
        {
            return invalid(
                "http.max_connections, its timeouts and max_buffered_bytes must be above 0",
            );
        }
        if let Some(w) = &self.webhook {
            if w.body_limit_bytes > self.http.max_buffered_bytes {
                return invalid("webhook.body_limit_bytes must not exceed http.max_buffered_bytes");
            }
            if w.app_secret.len() < 16 || w.verify_token.is_empty() {
                return invalid("webhook.app_secret must be at least 16 characters and webhook.verify_token set");
            }
            // One secret, one purpose: the handshake's verify token travels in URLs.
            if w.app_secret == w.verify_token
                || w.app_secret == self.directory_token
                || w.verify_token == self.directory_token
            {
                return invalid(
                    "webhook.app_secret, webhook.verify_token and directory_token must be different secrets",
                );
            }
            if w.body_limit_bytes == 0 || w.body_limit_bytes > 64 << 20 {
                return invalid("webhook.body_limit_bytes must be between 1 and 64 MiB");
            }
        }
        Ok(())
    }
}
