//! Who calls the control plane, and what each caller may do.
//!
//! Operators present operator tokens (Ed25519 JWTs the control plane minted for a named
//! operator). The interceptor checks the signature and kind without I/O; each call then
//! checks, against the catalog, that the token is not revoked, the operator is still
//! active, and the operator's role (from the catalog, not the token) allows the action.
//! Refusals are audited as `denied`.

use crate::catalog::{Catalog, RouterRecord};
use crate::error::{Error, Result};
use caller_auth::{Claims, Kind, Verifier};
use std::fmt;
use tonic::{Request, Status};

/// What an operator may do, each role including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: tenants, servers, status, the audit log.
    Viewer,
    /// Runs the fleet: creates, suspends, migrates, hardens tenants; issues and revokes
    /// caller tokens.
    Operator,
    /// Manages the platform's own access: servers, operators, routers, key rotation.
    Admin,
}

impl Role {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(raw: &str) -> Result<Role> {
        match raw {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(Error::InvalidArgument(format!(
                "unknown role {other:?}: expected viewer, operator or admin"
            ))),
        }
    }
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Operator (or system job) name.
    pub name: String,
    /// The token it presented, if any.
    pub token_id: Option<String>,
}

impl Actor {
    /// An actor that is not an authenticated caller (a command run on the control-plane
    /// host with its configuration, a background job).
    pub fn system(name: &str) -> Actor {
        Actor {
            name: name.to_string(),
            token_id: None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Interceptor: a valid token of one kind (operator for the admin API, router for the
/// directory) puts its claims into the request's extensions; anything else is refused
/// before the service sees the request.
#[derive(Clone)]
pub struct TokenAuth {
    verifier: Verifier,
    kind: Kind,
}

impl TokenAuth {
    /// Checks tokens of `kind` against `verifier` (the control plane's own public key).
    pub fn new(verifier: Verifier, kind: Kind) -> TokenAuth {
        TokenAuth { verifier, kind }
    }
}

/// The bearer token of a request, or the reason there is none.
pub fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization token"))?
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be 'Bearer <token>'"))
}

impl tonic::service::Interceptor for TokenAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let claims = self
            .verifier
            .verify(bearer(&request)?, self.kind)
            .map_err(|e| {
                Status::unauthenticated(format!("{} token refused: {e}", self.kind.as_str()))
            })?;
        request.extensions_mut().insert(claims);
        Ok(request)
    }
}

/// The operator calling, if its token is live and its role allows `needed`; audits a
/// refusal under `action`.
pub async fn authorize<T>(
    catalog: &Catalog,
    request: &Request<T>,
    needed: Role,
    action: &str,
) -> Result<Actor> {
    let claims = request
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| Error::Unauthenticated("missing operator token".into()))?;
    let actor = Actor {
        name: claims.sub.clone(),
        token_id: Some(claims.jti.clone()),
    };
    let role = catalog
        .operator_role(&claims.sub, &claims.jti)
        .await?
        .ok_or_else(|| {
            Error::Unauthenticated("operator token revoked or operator disabled".into())
        })?;
    if role < needed {
        catalog
            .audit_outcome(
                &actor,
                action,
                None,
                "",
                serde_json::json!({"role": role.as_str()}),
                "denied",
            )
            .await?;
        return Err(Error::PermissionDenied(format!(
            "operator {} ({}) may not {action}: it needs the {} role",
            actor.name,
            role.as_str(),
            needed.as_str()
        )));
    }
    Ok(actor)
}

/// The router behind a directory request, if its token and registration are live.
pub async fn router<T>(catalog: &Catalog, request: &Request<T>) -> Result<(RouterRecord, String)> {
    let claims = request
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| Error::Unauthenticated("missing router token".into()))?;
    let router = catalog
        .live_router(&claims.sub, &claims.jti)
        .await?
        .ok_or_else(|| Error::Unauthenticated("router credential revoked or unknown".into()))?;
    Ok((router, claims.jti.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert!(Role::parse("root").is_err());
    }
}
