//! Control-plane configuration: a TOML file overridden by `CONTROL_PLANE__*` environment
//! variables (e.g. `CONTROL_PLANE__CATALOG_URL`, `CONTROL_PLANE__FLEET__CONCURRENCY`).
//! Unknown keys are errors, so a typo never silently falls back to a default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

pub use service_kit::ConfigError;

/// The whole control-plane configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` over plain HTTP on this address (off when unset).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The gRPC health service alone, in plaintext, on this address (off when unset): for
    /// probes that cannot speak TLS, like Kubernetes' gRPC probes. It says nothing else.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// Catalog (control database) URL, `postgres://user:password@host:port/db`.
    pub catalog_url: String,
    /// Catalog connection pool size.
    #[serde(default = "defaults::catalog_pool_size")]
    pub catalog_pool_size: usize,
    /// Base64 of the 32-byte key that encrypts stored credentials.
    pub master_key: String,
    /// Previous master keys, base64, comma-separated: they still open what they sealed
    /// until `tenantctl rekey` has re-sealed every stored secret with `master_key`.
    #[serde(default)]
    pub retired_master_keys: String,
    /// Base64 of the 32-byte Ed25519 seed that signs every token the control plane mints
    /// (caller, operator, router). Only the control plane holds it; routers get the public
    /// key (`control-plane --print-verifying-key`).
    pub token_signing_key: String,
    /// Token lifetimes.
    #[serde(default)]
    pub tokens: Tokens,
    /// Connection bounds and HTTP/2 limits of the gRPC listener.
    #[serde(default)]
    pub grpc: service_kit::incoming::GrpcLimits,
    /// Retention of dead letters.
    #[serde(default)]
    pub dead_letters: DeadLetters,
    /// Serve gRPC over TLS with this certificate. Without it the control plane serves
    /// plaintext and hands tenant credentials only to routers connecting over loopback.
    #[serde(default)]
    pub tls: Option<service_kit::tls::ServerTls>,
    /// Connect to PostgreSQL (catalog and database servers) over TLS, verifying servers'
    /// certificates and host names against this CA.
    #[serde(default)]
    pub database_tls: Option<service_kit::tls::ClientTls>,
    /// Provisioning settings.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Fleet migration settings.
    #[serde(default)]
    pub fleet: Fleet,
    /// Backups: where they go and how they are taken.
    #[serde(default)]
    pub backup: Backup,
    /// Offboarding: how long a deleted tenant is kept before it is purged.
    #[serde(default)]
    pub deletion: Deletion,
    /// Users who log in: password hashing, token lifetimes, guessing limits.
    #[serde(default)]
    pub accounts: Accounts,
    /// The ingest database: the durable inbox of webhook deliveries and the event log.
    #[serde(default)]
    pub ingest: Ingest,
    /// How router replicas share each server's connection budget.
    #[serde(default)]
    pub leases: Leases,
}

/// Router leases: each router process holds a share of every server's connection budget,
/// renewed every `renew_ms`; the control plane keeps `jobs_connections` of each budget for
/// its own jobs (fleet migrations, backups) and divides the rest by the routers' demand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leases {
    /// A lease not renewed for this long is dropped and its share returns to the other
    /// routers, in milliseconds. A router that cannot renew within it stops opening
    /// connections (a control plane outage longer than this stops new connections).
    #[serde(default = "defaults::lease_ms")]
    pub lease_ms: u32,
    /// How often routers renew, in milliseconds (a tenth of it while shares are moving).
    #[serde(default = "defaults::lease_renew_ms")]
    pub renew_ms: u32,
    /// Connections of each server kept for the control plane's jobs (never more than half
    /// a server's budget). A fleet run uses at most this many, less the backups' share
    /// (`backup.per_server`), per server; 0 leaves every connection to routers.
    #[serde(default = "defaults::jobs_connections")]
    pub jobs_connections: u32,
    /// Router processes one registered router identity may run at once.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            lease_ms: defaults::lease_ms(),
            renew_ms: defaults::lease_renew_ms(),
            jobs_connections: defaults::jobs_connections(),
            max_instances: defaults::max_instances(),
        }
    }
}

impl Leases {
    /// The terms the catalog grants leases on.
    pub fn terms(&self) -> crate::catalog::LeaseTerms {
        crate::catalog::LeaseTerms {
            ttl: std::time::Duration::from_millis(u64::from(self.lease_ms)),
            jobs_connections: self.jobs_connections,
            max_instances: self.max_instances,
        }
    }
}

/// Where the message pipeline's durable inbox lives and how long it keeps applied rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// Its URL, as a user that owns the database (or may create it). Empty: the catalog's
    /// cluster and credentials, database `<catalog database>_ingest`, created if missing.
    #[serde(default)]
    pub url: String,
    /// The host routers reach it at (empty: the URL's host).
    #[serde(default)]
    pub router_host: String,
    /// Connections the control plane holds to it.
    #[serde(default = "defaults::ingest_pool_size")]
    pub pool_size: usize,
    /// Serve from a server whose `fsync` is off (acknowledged deliveries could be lost in a
    /// crash of that server's host). Never in production.
    #[serde(default)]
    pub allow_fsync_off: bool,
    /// Applied inbox rows are deleted after this many hours.
    #[serde(default = "defaults::applied_retention_hours")]
    pub applied_retention_hours: u32,
    /// Events are deleted from the event log after this many hours (consumers further
    /// behind miss them).
    #[serde(default = "defaults::events_retention_hours")]
    pub events_retention_hours: u32,
    /// How often applied rows and events past their retention are pruned, in seconds.
    #[serde(default = "defaults::ingest_prune_every_secs")]
    pub prune_every_secs: u64,
    /// A tenant whose oldest pending row is older than this is reported stuck, in seconds.
    #[serde(default = "defaults::stuck_after_secs")]
    pub stuck_after_secs: u64,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            url: String::new(),
            router_host: String::new(),
            pool_size: defaults::ingest_pool_size(),
            allow_fsync_off: false,
            applied_retention_hours: defaults::applied_retention_hours(),
            events_retention_hours: defaults::events_retention_hours(),
            prune_every_secs: defaults::ingest_prune_every_secs(),
            stuck_after_secs: defaults::stuck_after_secs(),
        }
    }
}

/// Settings of user accounts and logins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// Argon2id memory cost in KiB (OWASP's 19 MiB by default; tests use a few KiB).
    #[serde(default = "defaults::argon2_memory_kib")]
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    #[serde(default = "defaults::argon2_iterations")]
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    #[serde(default = "defaults::argon2_parallelism")]
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; more wait (bounds memory under a login flood).
    #[serde(default = "defaults::max_concurrent_hashes")]
    pub max_concurrent_hashes: usize,
    /// Lifetime of user access tokens, in seconds (minutes: a disabled user or revoked
    /// session also stops at once through the revocation feed).
    #[serde(default = "defaults::access_ttl_secs")]
    pub access_ttl_secs: u64,
    /// Lifetime of a session without use (each refresh extends it), in seconds.
    #[serde(default = "defaults::session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Lifetime of a password-reset token, in seconds.
    #[serde(default = "defaults::reset_ttl_secs")]
    pub reset_ttl_secs: u64,
    /// Failed logins for one email before each next attempt must wait (doubling from 2 s).
    #[serde(default = "defaults::account_free_failures")]
    pub account_free_failures: u32,
    /// Failed logins from one client address before it must wait.
    #[serde(default = "defaults::address_free_failures")]
    pub address_free_failures: u32,
    /// Longest wait a run of failures can impose, in seconds.
    #[serde(default = "defaults::max_lockout_secs")]
    pub max_lockout_secs: u64,
    /// Take the client address from the right-most `x-forwarded-for` entry (only behind a
    /// proxy that sets it; otherwise anyone could pick their own address).
    #[serde(default)]
    pub trust_forwarded_for: bool,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            argon2_memory_kib: defaults::argon2_memory_kib(),
            argon2_iterations: defaults::argon2_iterations(),
            argon2_parallelism: defaults::argon2_parallelism(),
            max_concurrent_hashes: defaults::max_concurrent_hashes(),
            access_ttl_secs: defaults::access_ttl_secs(),
            session_ttl_secs: defaults::session_ttl_secs(),
            reset_ttl_secs: defaults::reset_ttl_secs(),
            account_free_failures: defaults::account_free_failures(),
            address_free_failures: defaults::address_free_failures(),
            max_lockout_secs: defaults::max_lockout_secs(),
            trust_forwarded_for: false,
        }
    }
}

/// Deletion settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deletion {
    /// How long a deleted tenant's database and backups are kept before the purge, in
    /// seconds (30 days by default).
    #[serde(default = "defaults::deletion_window_secs")]
    pub window_secs: u64,
    /// How often each replica looks for deleted tenants to purge, in seconds.
    #[serde(default = "defaults::purge_every_secs")]
    pub purge_every_secs: u64,
}

impl Default for Deletion {
    fn default() -> Self {
        Deletion {
            window_secs: defaults::deletion_window_secs(),
            purge_every_secs: defaults::purge_every_secs(),
        }
    }
}

/// Backup settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The backup store.
    #[serde(default)]
    pub store: BackupStore,
    /// Where the PostgreSQL client tools of each server version are; `{major}` is replaced
    /// by the tenant server's major version (pg_dump must match it; without `{major}`, one
    /// directory serves every server).
    #[serde(default = "defaults::pg_bin_dir")]
    pub pg_bin_dir: String,
    /// Backups running at once, overall.
    #[serde(default = "defaults::backup_concurrency")]
    pub concurrency: usize,
    /// Backups running at once on one database server (they never starve its traffic).
    #[serde(default = "defaults::backup_per_server")]
    pub per_server: usize,
    /// A running backup whose replica has been silent this long (it died) is marked
    /// abandoned, in seconds; replicas check this often.
    #[serde(default = "defaults::backup_stale_after_secs")]
    pub stale_after_secs: u64,
    /// How long a restore keeps the database generation it replaced before dropping it,
    /// in seconds.
    #[serde(default = "defaults::restore_grace_secs")]
    pub restore_grace_secs: u64,
    /// How often one replica looks for tenants due a scheduled backup (their plan's
    /// interval) and applies retention, in seconds; 0 turns scheduling off.
    #[serde(default = "defaults::schedule_every_secs")]
    pub schedule_every_secs: u64,
    /// The scheduler backs the catalog up when its newest good backup is older than this,
    /// in seconds (0: never on schedule).
    #[serde(default = "defaults::catalog_every_secs")]
    pub catalog_every_secs: u64,
    /// Catalog backups kept (the newest ones).
    #[serde(default = "defaults::catalog_keep")]
    pub catalog_keep: u32,
    /// How often the scheduler restores a sample of backups into scratch databases to
    /// check them, in seconds (0: never).
    #[serde(default = "defaults::verify_every_secs")]
    pub verify_every_secs: u64,
    /// Backups checked each time.
    #[serde(default = "defaults::verify_sample")]
    pub verify_sample: u32,
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            store: BackupStore::default(),
            pg_bin_dir: defaults::pg_bin_dir(),
            concurrency: defaults::backup_concurrency(),
            per_server: defaults::backup_per_server(),
            stale_after_secs: defaults::backup_stale_after_secs(),
            restore_grace_secs: defaults::restore_grace_secs(),
            schedule_every_secs: defaults::schedule_every_secs(),
            catalog_every_secs: defaults::catalog_every_secs(),
            catalog_keep: defaults::catalog_keep(),
            verify_every_secs: defaults::verify_every_secs(),
            verify_sample: defaults::verify_sample(),
        }
    }
}

/// Where backup objects go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStore {
    /// A local directory (`/path` or `file:///path`), or `s3://bucket[/prefix]` for any
    /// S3-compatible service.
    #[serde(default = "defaults::backup_location")]
    pub location: String,
    /// S3: the service's URL (empty: AWS itself).
    #[serde(default)]
    pub s3_endpoint: String,
    #[serde(default = "defaults::s3_region")]
    pub s3_region: String,
    /// S3 credentials (empty: taken from the environment, as the AWS tools do).
    #[serde(default)]
    pub s3_access_key_id: String,
    #[serde(default)]
    pub s3_secret_access_key: String,
    /// S3: allow `http://` endpoints (local test services only).
    #[serde(default)]
    pub s3_allow_http: bool,
    /// Multipart upload part size in bytes (S3 wants at least 5 MiB).
    #[serde(default = "defaults::part_size_bytes")]
    pub part_size_bytes: usize,
}

impl Default for BackupStore {
    fn default() -> Self {
        BackupStore {
            location: defaults::backup_location(),
            s3_endpoint: String::new(),
            s3_region: defaults::s3_region(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_allow_http: false,
            part_size_bytes: defaults::part_size_bytes(),
        }
    }
}

/// Provisioning settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    /// Clone new databases from a per-server, per-sector template kept migrated.
    #[serde(default = "defaults::yes")]
    pub use_template: bool,
    /// Tenant databases and roles are named `<name_prefix>_<id>_g<generation>[_owner|_login_a|_login_b]`
    /// (two deployments sharing a server use different prefixes).
    #[serde(default = "defaults::name_prefix")]
    pub name_prefix: String,
    /// Template databases are named `<template_prefix>_<sector>` on each server.
    #[serde(default = "defaults::template_prefix")]
    pub template_prefix: String,
    /// Timeout to connect to a database server, in milliseconds.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A `provisioning` row untouched this long is considered abandoned (a crashed
    /// control plane) and `create` may resume it, in seconds.
    #[serde(default = "defaults::stale_after_secs")]
    pub stale_after_secs: u64,
    /// PBKDF2 rounds of the SCRAM verifiers of tenant roles. Their passwords are 32 random
    /// bytes, so stretching adds no protection, while every new connection a router opens
    /// pays the rounds in CPU (4,096 rounds, PostgreSQL's default, cost ~2 ms each time).
    #[serde(default = "defaults::scram_iterations")]
    pub scram_iterations: u32,
    /// `CONNECTION LIMIT` of each tenant login role: what one leaked credential can hold
    /// at most on its server. Must cover every router replica's pool for the tenant.
    #[serde(default = "defaults::login_connection_limit")]
    pub login_connection_limit: u32,
    /// Default `statement_timeout` of tenant login sessions, in milliseconds.
    #[serde(default = "defaults::login_statement_timeout_ms")]
    pub login_statement_timeout_ms: u64,
    /// `temp_file_limit` of tenant login sessions, in kB.
    #[serde(default = "defaults::login_temp_file_limit_kb")]
    pub login_temp_file_limit_kb: u64,
    /// `idle_in_transaction_session_timeout` of tenant login sessions, in milliseconds.
    #[serde(default = "defaults::login_idle_in_transaction_ms")]
    pub login_idle_in_transaction_ms: u64,
    /// After a password rotation, how long the previous login role keeps working (routers
    /// that have not heard of the rotation yet), in seconds.
    #[serde(default = "defaults::rotation_grace_secs")]
    pub rotation_grace_secs: u64,
}

impl Provisioning {
    /// The limits every tenant login role gets.
    pub fn login_limits(&self) -> crate::roles::LoginLimits {
        crate::roles::LoginLimits {
            connections: self.login_connection_limit,
            statement_timeout_ms: self.login_statement_timeout_ms,
            temp_file_limit_kb: self.login_temp_file_limit_kb,
            idle_in_transaction_ms: self.login_idle_in_transaction_ms,
        }
    }
}

/// Retention of dead letters (webhooks no tenant database took).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetters {
    /// Dead letters not seen for this many days are deleted.
    #[serde(default = "defaults::retention_days")]
    pub retention_days: u32,
    /// How often each replica prunes, in seconds.
    #[serde(default = "defaults::prune_every_secs")]
    pub prune_every_secs: u64,
    /// Most dead letters one source (`meta`, `evolution`) keeps; new content past it is
    /// dropped and counted by the router (repeats of kept content still count).
    #[serde(default = "defaults::per_source_max_rows")]
    pub per_source_max_rows: u32,
    /// Most body bytes one source keeps.
    #[serde(default = "defaults::per_source_max_bytes")]
    pub per_source_max_bytes: u64,
    /// How often each replica looks for suspended-tenant dead letters of tenants that are
    /// active again and replays them, in seconds (a resume also replays at once).
    #[serde(default = "defaults::replay_every_secs")]
    pub replay_every_secs: u64,
}

impl DeadLetters {
    /// The per-source quota.
    pub fn quota(&self) -> crate::catalog::DeadLetterQuota {
        crate::catalog::DeadLetterQuota {
            rows: self.per_source_max_rows,
            bytes: i64::try_from(self.per_source_max_bytes).unwrap_or(i64::MAX),
        }
    }
}

impl Default for DeadLetters {
    fn default() -> Self {
        DeadLetters {
            retention_days: defaults::retention_days(),
            prune_every_secs: defaults::prune_every_secs(),
            per_source_max_rows: defaults::per_source_max_rows(),
            per_source_max_bytes: defaults::per_source_max_bytes(),
            replay_every_secs: defaults::replay_every_secs(),
        }
    }
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Longest lifetime a token may be issued with, in seconds (`--ttl` above it is
    /// refused).
    #[serde(default = "defaults::max_ttl_secs")]
    pub max_ttl_secs: u64,
    /// Lifetime of tokens issued without `--ttl`, in seconds.
    #[serde(default = "defaults::default_ttl_secs")]
    pub default_ttl_secs: u64,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            max_ttl_secs: defaults::max_ttl_secs(),
            default_ttl_secs: defaults::default_ttl_secs(),
        }
    }
}

/// Fleet migration settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Tenants migrated at once across all servers, unless a run asks for another number.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// Tenants migrated at once on one server.
    #[serde(default = "defaults::per_server")]
    pub per_server_concurrency: u32,
    /// Upper bound a run may ask for (protects servers from a typo like `--concurrency 5000`).
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: u32,
    /// `lock_timeout` for migration DDL, in milliseconds.
    #[serde(default = "defaults::lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// `statement_timeout` for migration DDL, in milliseconds.
    #[serde(default = "defaults::statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// A run that has not said it is alive for this long (its replica died) is marked
    /// interrupted by any replica; runs beat four times as often.
    #[serde(default = "defaults::run_stale_after_secs")]
    pub stale_after_secs: u64,
    /// Most tenants a run migrates at once on one server: the jobs' slice of its budget
    /// less the backups' share (set from `leases`; `None`: no cap).
    #[serde(skip)]
    pub per_server_cap: Option<u32>,
}

mod defaults {
    pub fn lease_ms() -> u32 {
        10_000
    }
    pub fn lease_renew_ms() -> u32 {
        500
    }
    pub fn jobs_connections() -> u32 {
        6
    }
    pub fn max_instances() -> u32 {
        32
    }
    pub fn ingest_pool_size() -> usize {
        4
    }
    pub fn applied_retention_hours() -> u32 {
        72
    }
    pub fn events_retention_hours() -> u32 {
        168
    }
    pub fn ingest_prune_every_secs() -> u64 {
        300
    }
    pub fn stuck_after_secs() -> u64 {
        60
    }
    pub fn catalog_pool_size() -> usize {
        16
    }
    pub fn yes() -> bool {
        true
    }
    pub fn retention_days() -> u32 {
        30
    }
    pub fn prune_every_secs() -> u64 {
        3_600
    }
    pub fn replay_every_secs() -> u64 {
        60
    }
    pub fn pg_bin_dir() -> String {
        "/usr/lib/postgresql/{major}/bin".into()
    }
    pub fn backup_concurrency() -> usize {
        4
    }
    pub fn backup_per_server() -> usize {
        1
    }
    pub fn backup_stale_after_secs() -> u64 {
        60
    }
    pub fn restore_grace_secs() -> u64 {
        86_400
    }
    pub fn schedule_every_secs() -> u64 {
        300
    }
    pub fn catalog_every_secs() -> u64 {
        86_400
    }
    pub fn catalog_keep() -> u32 {
        14
    }
    pub fn verify_every_secs() -> u64 {
        86_400
    }
    pub fn verify_sample() -> u32 {
        1
    }
    pub fn deletion_window_secs() -> u64 {
        30 * 86_400
    }
    pub fn purge_every_secs() -> u64 {
        300
    }
    pub fn argon2_memory_kib() -> u32 {
        19_456
    }
    pub fn argon2_iterations() -> u32 {
        2
    }
    pub fn argon2_parallelism() -> u32 {
        1
    }
    pub fn max_concurrent_hashes() -> usize {
        2
    }
    pub fn access_ttl_secs() -> u64 {
        600
    }
    pub fn session_ttl_secs() -> u64 {
        30 * 86_400
    }
    pub fn reset_ttl_secs() -> u64 {
        1_800
    }
    pub fn account_free_failures() -> u32 {
        5
    }
    pub fn address_free_failures() -> u32 {
        30
    }
    pub fn max_lockout_secs() -> u64 {
        900
    }
    pub fn backup_location() -> String {
        "backups".into()
    }
    pub fn s3_region() -> String {
        "us-east-1".into()
    }
    pub fn part_size_bytes() -> usize {
        8 << 20
    }
    pub fn per_source_max_rows() -> u32 {
        100_000
    }
    pub fn per_source_max_bytes() -> u64 {
        1 << 30
    }
    pub fn max_ttl_secs() -> u64 {
        30 * 24 * 3600
    }
    pub fn default_ttl_secs() -> u64 {
        3600
    }
    pub fn name_prefix() -> String {
        "tenant".into()
    }
    pub fn template_prefix() -> String {
        "tenant_template".into()
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn stale_after_secs() -> u64 {
        120
    }
    pub fn concurrency() -> u32 {
        8
    }
    pub fn per_server() -> u32 {
        4
    }
    pub fn max_concurrency() -> u32 {
        64
    }
    pub fn scram_iterations() -> u32 {
        16
    }
    pub fn login_connection_limit() -> u32 {
        32
    }
    pub fn login_statement_timeout_ms() -> u64 {
        30_000
    }
    pub fn login_temp_file_limit_kb() -> u64 {
        256 * 1024
    }
    pub fn login_idle_in_transaction_ms() -> u64 {
        60_000
    }
    pub fn rotation_grace_secs() -> u64 {
        30
    }
    pub fn lock_timeout_ms() -> u64 {
        5_000
    }
    pub fn statement_timeout_ms() -> u64 {
        300_000
    }
    pub fn run_stale_after_secs() -> u64 {
        60
    }
}

impl Default for Provisioning {
    fn default() -> Self {
        Provisioning {
            use_template: true,
            name_prefix: defaults::name_prefix(),
            template_prefix: defaults::template_prefix(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            stale_after_secs: defaults::stale_after_secs(),
            scram_iterations: defaults::scram_iterations(),
            login_connection_limit: defaults::login_connection_limit(),
            login_statement_timeout_ms: defaults::login_statement_timeout_ms(),
            login_temp_file_limit_kb: defaults::login_temp_file_limit_kb(),
            login_idle_in_transaction_ms: defaults::login_idle_in_transaction_ms(),
            rotation_grace_secs: defaults::rotation_grace_secs(),
        }
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            concurrency: defaults::concurrency(),
            per_server_concurrency: defaults::per_server(),
            max_concurrency: defaults::max_concurrency(),
            lock_timeout_ms: defaults::lock_timeout_ms(),
            statement_timeout_ms: defaults::statement_timeout_ms(),
            stale_after_secs: defaults::run_stale_after_secs(),
            per_server_cap: None,
        }
    }
}

impl Config {
    /// Loads `path` (if given) and the `CONTROL_PLANE__*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg: Config = service_kit::load_config("CONTROL_PLANE", path)?;
        cfg.validate()?;
        cfg.fleet.per_server_cap = (cfg.leases.jobs_connections > 0).then(|| {
            cfg.leases.jobs_connections - u32::try_from(cfg.backup.per_server).unwrap_or(0)
        });
        Ok(cfg)
    }

    /// The retired master keys, in order.
    pub fn retired_keys(&self) -> Vec<&str> {
        self.retired_master_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// The box sealing stored secrets: the master key, plus retired keys for reading.
    pub fn secret_box(&self) -> Result<crate::crypto::SecretBox, crate::crypto::CryptoError> {
        crate::crypto::SecretBox::with_retired(&self.master_key, &self.retired_keys())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.secret_box()
            .map_err(|e| ConfigError::Invalid(format!("master_key or retired_master_keys: {e}")))?;
        caller_auth::Signer::from_base64(&self.token_signing_key)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // One secret, one purpose: a leak of one must not open another door.
        let mut secrets = vec![
            ("master_key", self.master_key.trim()),
            ("token_signing_key", self.token_signing_key.trim()),
        ];
        secrets.extend(
            self.retired_keys()
                .into_iter()
                .map(|k| ("a retired master key", k)),
        );
        for (i, (a, x)) in secrets.iter().enumerate() {
            for (b, y) in &secrets[i + 1..] {
                if x == y {
                    return Err(ConfigError::Invalid(format!(
                        "{a} and {b} must be different secrets"
                    )));
                }
            }
        }
        self.grpc.validate().map_err(ConfigError::Invalid)?;
        let d = &self.dead_letters;
        for (name, value) in [
            ("prune_every_secs", d.prune_every_secs),
            ("per_source_max_rows", u64::from(d.per_source_max_rows)),
            ("per_source_max_bytes", d.per_source_max_bytes),
            ("replay_every_secs", d.replay_every_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "dead_letters.{name} must be above 0"
                )));
            }
        }
        let i = &self.ingest;
        if !i.url.is_empty() && i.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::Invalid(
                "ingest.url is not a valid PostgreSQL URL".into(),
            ));
        }
        if i.pool_size == 0
            || i.prune_every_secs == 0
            || i.applied_retention_hours == 0
            || i.events_retention_hours == 0
        {
            return Err(ConfigError::Invalid(
                "ingest.pool_size, prune_every_secs, applied_retention_hours and events_retention_hours must be above 0"
                    .into(),
            ));
        }
        if self.deletion.purge_every_secs == 0 {
            return Err(ConfigError::Invalid(
                "deletion.purge_every_secs must be above 0".into(),
            ));
        }
        let b = &self.backup;
        if b.concurrency == 0 || b.per_server == 0 || b.stale_after_secs < 2 {
            return Err(ConfigError::Invalid(
                "backup.concurrency and backup.per_server must be above 0, backup.stale_after_secs at least 2"
                    .into(),
            ));
        }
        if b.store.part_size_bytes < 5 << 20 || b.store.part_size_bytes > 1 << 30 {
            return Err(ConfigError::Invalid(
                "backup.store.part_size_bytes must be between 5 MiB and 1 GiB".into(),
            ));
        }
        let a = &self.accounts;
        if argon2::Params::new(
            a.argon2_memory_kib,
            a.argon2_iterations,
            a.argon2_parallelism,
            None,
        )
        .is_err()
        {
            return Err(ConfigError::Invalid(
                "accounts.argon2_memory_kib, argon2_iterations and argon2_parallelism must be valid Argon2 costs (memory at least 8 KiB per lane, at least 1 pass and 1 lane)".into(),
            ));
        }
        if a.max_concurrent_hashes == 0
            || a.access_ttl_secs == 0
            || a.access_ttl_secs > 3_600
            || a.session_ttl_secs < a.access_ttl_secs
            || a.reset_ttl_secs == 0
            || a.account_free_failures == 0
            || a.address_free_failures == 0
            || a.max_lockout_secs == 0
        {
            return Err(ConfigError::Invalid(
                "accounts: max_concurrent_hashes, reset_ttl_secs, the free failures and max_lockout_secs must be above 0; access_ttl_secs 1-3600 and at most session_ttl_secs".into(),
            ));
        }
        let t = &self.tokens;
        if t.max_ttl_secs == 0 || t.default_ttl_secs == 0 || t.default_ttl_secs > t.max_ttl_secs {
            return Err(ConfigError::Invalid(
                "tokens.default_ttl_secs must be above 0 and at most tokens.max_ttl_secs".into(),
            ));
        }
        if self.catalog_url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::Invalid(
                "catalog_url is not a valid PostgreSQL URL".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.provisioning.scram_iterations) {
            return Err(ConfigError::Invalid(
                "provisioning.scram_iterations must be between 1 and 1000000".into(),
            ));
        }
        let p = &self.provisioning;
        if !(1..=10_000).contains(&p.login_connection_limit)
            || p.login_statement_timeout_ms == 0
            || p.login_temp_file_limit_kb == 0
            || p.login_idle_in_transaction_ms == 0
        {
            return Err(ConfigError::Invalid(
                "provisioning.login_connection_limit must be 1-10000 and the login timeouts and temp_file_limit above 0".into(),
            ));
        }
        let prefix_ok = !self.provisioning.template_prefix.is_empty()
            && self.provisioning.template_prefix.len() <= 40
            && self
                .provisioning
                .template_prefix
                .starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .provisioning
                .template_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !crate::model::valid_name_prefix(&p.name_prefix) {
            return Err(ConfigError::Invalid(
                "provisioning.name_prefix must be 1-16 of [a-z0-9_] and start with a letter".into(),
            ));
        }
        let tenant_like = p.template_prefix.starts_with("emp_")
            || p.template_prefix
                .strip_prefix(&format!("{}_", p.name_prefix))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        if !prefix_ok || tenant_like {
            return Err(ConfigError::Invalid(
                "provisioning.template_prefix must be 1-40 of [a-z0-9_], start with a letter and not look like a tenant database (emp_, <name_prefix>_<digit>)".into(),
            ));
        }
        let l = &self.leases;
        if l.renew_ms < 50 || l.lease_ms < 3 * l.renew_ms || l.lease_ms > 300_000 {
            return Err(ConfigError::Invalid(
                "leases.renew_ms must be at least 50 and leases.lease_ms between 3 renewals and 300000".into(),
            ));
        }
        if l.max_instances == 0 || l.max_instances > 10_000 {
            return Err(ConfigError::Invalid(
                "leases.max_instances must be 1-10000".into(),
            ));
        }
        if l.jobs_connections != 0 && (l.jobs_connections as usize) <= self.backup.per_server {
            return Err(ConfigError::Invalid(
                "leases.jobs_connections must be 0 or more than backup.per_server (fleet runs need a connection too)".into(),
            ));
        }
        if self.fleet.stale_after_secs < 2 {
            return Err(ConfigError::Invalid(
                "fleet.stale_after_secs must be at least 2".into(),
            ));
        }
        if self.catalog_pool_size == 0
            || self.fleet.concurrency == 0
            || self.fleet.per_server_concurrency == 0
        {
            return Err(ConfigError::Invalid(
                "catalog_pool_size, fleet.concurrency and fleet.per_server_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
