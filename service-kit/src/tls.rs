//! TLS settings shared by the daemons: serving gRPC, calling gRPC, and connecting to
//! PostgreSQL, each with certificate and host-name verification against a configured CA.
//!
//! tokio-postgres's own `sslmode`s stop at "require" (no verification); here PostgreSQL
//! connections go through rustls with the CA's roots, so the server's certificate must be
//! valid for the host name (or IP address) connected to: what libpq calls `verify-full`.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate and its private key (PEM files) a server presents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
}

/// Verification of the servers a daemon connects to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificate(s), PEM, that servers' certificates must chain to.
    pub ca_file: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ServerTls {
    /// The tonic server configuration.
    pub fn tonic(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        let identity =
            tonic::transport::Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
    }
}

impl ClientTls {
    /// The tonic client configuration: the server's certificate must chain to the CA and
    /// name the endpoint's host.
    pub fn tonic(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let ca = read(&self.ca_file)?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca)))
    }

    /// The rustls client configuration trusting only the configured CA.
    pub fn rustls(&self) -> Result<rustls::ClientConfig, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let pem = read(&self.ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| TlsError::Config(format!("{}: {e}", self.ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("{}: {e}", self.ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.ca_file.clone(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// A tokio-postgres TLS connector verifying servers against the CA (`verify-full`).
    pub fn postgres(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsError> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            self.rustls()?,
        ))
    }
}
