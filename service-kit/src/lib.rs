//! What every daemon of the platform does the same way: configuration from a TOML file
//! overridden by `<PREFIX>__*` environment variables, logs on stderr, and shutdown on
//! SIGTERM or Ctrl-C.

pub mod incoming;
pub mod tls;

use serde::de::DeserializeOwned;
use std::path::Path;

/// Why the configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing failed (unknown key, wrong type, missing field).
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but makes no sense.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Loads `path` (if given) and the `<prefix>__*` environment (nested keys joined by `__`).
/// Unknown keys are rejected by the target type (`deny_unknown_fields`).
pub fn load_config<T: DeserializeOwned>(
    prefix: &str,
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    builder
        .add_source(
            config::Environment::with_prefix(prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
        .map_err(ConfigError::from)
}

/// Structured logs on stderr (stdout is kept for the daemon's one `listening` line),
/// filtered by `RUST_LOG` (default `info`); one JSON object per line when `LOG_FORMAT` is
/// `json` (`text`, the default, otherwise). Any other `LOG_FORMAT` is refused by name.
pub fn init_tracing() -> Result<(), String> {
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Err(_) | Ok("") | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => {
            return Err(format!(
                "LOG_FORMAT must be \"text\" or \"json\", not {other:?}"
            ))
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        );
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Accepted connections for `serve_with_incoming*`, bounded (see [`incoming`]).
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
    bounds: incoming::Bounds,
) -> impl futures_util::Stream<Item = std::io::Result<incoming::Guarded>> {
    incoming::incoming(listener, bounds)
}
