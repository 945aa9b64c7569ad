//! Access for the first operator: run on the control-plane host with its configuration
//! (the signing key and the catalog), so it needs no token of its own. Audited as the
//! system actor `bootstrap`.

use crate::auth::{Actor, Role};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokens::{Grant, Minter};
use caller_auth::Kind;

/// Registers operator `name` with `role` unless it exists (an existing one keeps its
/// role) and returns a new token for it.
pub async fn operator_token(
    config: &Config,
    name: &str,
    role: Role,
    ttl_secs: u64,
) -> Result<String> {
    let name = crate::model::operator_name(name)?;
    let secrets = config
        .secret_box()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let catalog = Catalog::connect(
        &config.catalog_url,
        1,
        secrets,
        crate::pgconn::DbTls::from_config(config.database_tls.as_ref())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?,
    )?;
    catalog.migrate().await?;
    let by = Actor::system("bootstrap");
    let op = catalog.ensure_operator(&name, role, &by).await?;
    let signer = caller_auth::Signer::from_base64(&config.token_signing_key)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let minted = Minter::new(signer, &config.tokens)
        .mint(
            &catalog,
            &by,
            Grant {
                kind: Kind::Operator,
                subject: name.clone(),
                tenants: Vec::new(),
                all: false,
                role: Some(op.role),
                ttl_secs,
                scopes: Vec::new(),
            },
        )
        .await?;
    catalog
        .audit(
            &by,
            "operator.token",
            None,
            &name,
            serde_json::json!({"token_id": minted.claims.jti, "role": op.role.as_str()}),
        )
        .await?;
    Ok(minted.token)
}
