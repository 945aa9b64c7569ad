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
    /// Catalog (control database) URL, `postgres://user:password@host:port/db`.
    pub catalog_url: String,
    /// Catalog connection pool size.
    #[serde(default = "defaults::catalog_pool_size")]
    pub catalog_pool_size: usize,
    /// Base64 of the 32-byte key that encrypts stored credentials.
    pub master_key: String,
    /// Bearer token `tenantctl` and other operator tools present to `TenantAdmin`.
    pub admin_token: String,
    /// Bearer token routers present to `TenantDirectory`.
    pub directory_token: String,
    /// HS256 key of the caller tokens `IssueToken` mints (routers verify them with the same
    /// key, their `jwt_secret`). Unset: tokens cannot be issued.
    #[serde(default)]
    pub token_signing_key: Option<String>,
    /// Provisioning settings.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Fleet migration settings.
    #[serde(default)]
    pub fleet: Fleet,
}

/// Provisioning settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    /// Clone new databases from a per-server, per-sector template kept migrated.
    #[serde(default = "defaults::yes")]
    pub use_template: bool,
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
}

mod defaults {
    pub fn catalog_pool_size() -> usize {
        16
    }
    pub fn yes() -> bool {
        true
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
    pub fn lock_timeout_ms() -> u64 {
        5_000
    }
    pub fn statement_timeout_ms() -> u64 {
        300_000
    }
}

impl Default for Provisioning {
    fn default() -> Self {
        Provisioning {
            use_template: true,
            template_prefix: defaults::template_prefix(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            stale_after_secs: defaults::stale_after_secs(),
            scram_iterations: defaults::scram_iterations(),
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
        }
    }
}

impl Config {
    /// Loads `path` (if given) and the `CONTROL_PLANE__*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let cfg: Config = service_kit::load_config("CONTROL_PLANE", path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::crypto::SecretBox::from_base64(&self.master_key)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.admin_token.len() < 16 || self.directory_token.len() < 16 {
            return Err(ConfigError::Invalid(
                "admin_token and directory_token must be at least 16 characters".into(),
            ));
        }
        if self
            .token_signing_key
            .as_ref()
            .is_some_and(|k| k.len() < 32)
        {
            return Err(ConfigError::Invalid(
                "token_signing_key must be at least 32 characters".into(),
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
        if !prefix_ok || self.provisioning.template_prefix.starts_with("emp_") {
            return Err(ConfigError::Invalid(
                "provisioning.template_prefix must be 1-40 of [a-z0-9_], start with a letter and not with emp_".into(),
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
