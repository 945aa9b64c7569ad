//! What every daemon of the platform does the same way: configuration from a TOML file
//! overridden by `<PREFIX>__*` environment variables, logs on stderr, and shutdown on
//! SIGTERM or Ctrl-C.

pub mod grpc;
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
/// A `<prefix>_FILE__*` variable names a file holding the value instead (container
/// secrets): `CONTROL_PLANE_FILE__MASTER_KEY=/run/secrets/master_key` sets `master_key`
/// to the file's content without its trailing newline. Unknown keys are rejected by the
/// target type (`deny_unknown_fields`).
pub fn load_config<T: DeserializeOwned>(
    prefix: &str,
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    load_config_from(prefix, path, std::env::vars())
}

/// [`load_config`] with the environment given.
pub fn load_config_from<T: DeserializeOwned>(
    prefix: &str,
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
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
                .try_parsing(true)
                .source(Some(environment(prefix, vars)?)),
        )
        .build()?
        .try_deserialize()
        .map_err(ConfigError::from)
}

/// The `<prefix>__*` variables, with the `<prefix>_FILE__*` ones' files read in.
fn environment(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, String>, ConfigError> {
    let ours = format!("{prefix}__");
    let files = format!("{prefix}_FILE__");
    let mut out = config::Map::new();
    let mut from_files = Vec::new();
    for (k, v) in vars {
        if k.starts_with(&ours) {
            out.insert(k, v);
        } else if let Some(rest) = k.strip_prefix(&files) {
            from_files.push((format!("{ours}{rest}"), k.clone(), v));
        }
    }
    for (key, var, file) in from_files {
        if out.contains_key(&key) {
            return Err(ConfigError::Invalid(format!(
                "set {key} or {var}, not both"
            )));
        }
        let content = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::Invalid(format!("{var}: cannot read {file}: {e}")))?;
        out.insert(key, content.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        key: String,
        #[serde(default)]
        port: u16,
    }

    fn load(vars: &[(&str, &str)]) -> Result<Cfg, ConfigError> {
        load_config_from(
            "T",
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn a_file_variable_reads_its_value_from_the_file() {
        let dir = std::env::temp_dir().join(format!("sk-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("key");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let file = secret.display().to_string();
        let c = load(&[("T_FILE__KEY", &file), ("T__PORT", "7"), ("OTHER", "x")]).unwrap();
        assert_eq!((c.key.as_str(), c.port), ("s3cr3t", 7));
        // Both ways at once, or a file that is not there: refused by name, no content shown.
        let both = load(&[("T_FILE__KEY", &file), ("T__KEY", "b")]).unwrap_err();
        assert!(both.to_string().contains("T__KEY or T_FILE__KEY"), "{both}");
        let missing = load(&[("T_FILE__KEY", "/nonexistent/key")]).unwrap_err();
        assert!(missing.to_string().contains("T_FILE__KEY"), "{missing}");
        // A key that itself ends in _file is an ordinary key.
        let plain = load(&[("T__KEY", "k"), ("T__KEY_FILE", "x")]).unwrap_err();
        assert!(plain.to_string().contains("key_file"), "{plain}");
        assert!(load(&[("T__KEY", "plain")]).unwrap().key == "plain");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
