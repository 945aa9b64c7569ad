//! A throwaway certificate authority for tests: every harness PostgreSQL server presents a
//! certificate it signed (for `localhost` and `127.0.0.1`), and tests issue certificates
//! for their control planes and routers from it, so the whole system runs with TLS and
//! verification on, as in production.

use super::{err, HarnessError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process's test CA and the server certificate it issued.
pub struct TestCa {
    /// The CA certificate (PEM): what clients trust.
    pub ca_file: PathBuf,
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    server: (String, String),
}

/// The names every harness certificate is valid for.
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The process's test CA, made on first use.
pub fn test_ca() -> Result<&'static TestCa, HarnessError> {
    static CA: OnceLock<Result<TestCa, String>> = OnceLock::new();
    CA.get_or_init(|| TestCa::new().map_err(|e| e.0))
        .as_ref()
        .map_err(|e| err(e.clone()))
}

/// The certificate of a CA that signed nothing the harness runs: what a client that
/// verifies must refuse (a server impersonated by someone else).
pub fn untrusted_ca_file() -> Result<PathBuf, HarnessError> {
    let other = TestCa::new_in("pg-harness-untrusted-ca")?;
    Ok(other.ca_file)
}

impl TestCa {
    fn new() -> Result<TestCa, HarnessError> {
        TestCa::new_in("pg-harness-ca")
    }

    fn new_in(prefix: &str) -> Result<TestCa, HarnessError> {
        let fail = |e: rcgen::Error| err(format!("test CA: {e}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pg-harness test CA");
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        let issuer = rcgen::Issuer::new(params, key);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("mkdir {dir:?}: {e}")))?;
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, cert.pem()).map_err(|e| err(e.to_string()))?;
        let mut ca = TestCa {
            ca_file,
            dir,
            issuer,
            server: (String::new(), String::new()),
        };
        ca.server = ca.issue_pem()?;
        Ok(ca)
    }

    fn issue_pem(&self) -> Result<(String, String), HarnessError> {
        let fail = |e: rcgen::Error| err(format!("test certificate: {e}"));
        let params =
            rcgen::CertificateParams::new(NAMES.map(String::from).to_vec()).map_err(fail)?;
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A new certificate and key for `localhost`/`127.0.0.1`, written as `<name>.crt` and
    /// `<name>.key`; returns their paths.
    pub fn issue(&self, name: &str) -> Result<(PathBuf, PathBuf), HarnessError> {
        let (cert, key) = self.issue_pem()?;
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert).map_err(|e| err(e.to_string()))?;
        std::fs::write(&key_file, key).map_err(|e| err(e.to_string()))?;
        Ok((cert_file, key_file))
    }

    /// Writes the PostgreSQL server's certificate and key into a cluster directory (the
    /// key readable by its owner only, as PostgreSQL demands); returns the server settings
    /// that turn SSL on with them.
    pub(crate) fn install(&self, base: &Path) -> Result<String, HarnessError> {
        let (cert, key) = (base.join("server.crt"), base.join("server.key"));
        std::fs::write(&cert, &self.server.0).map_err(|e| err(e.to_string()))?;
        std::fs::write(&key, &self.server.1).map_err(|e| err(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        ))
    }
}
