//! The router's error type and its one mapping to gRPC status codes. Client-facing
//! messages never carry hosts, credentials or SQL; internal detail is logged, once, here.

/// Everything a routed call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// No or bad bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token does not grant this tenant (or the tenant does not exist: one answer
    /// for both, so callers cannot probe which tenants exist).
    #[error("{0}")]
    PermissionDenied(String),
    /// Malformed request (names the field).
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown tenant.
    #[error("tenant not found")]
    TenantNotFound,
    /// A row the call names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The tenant cannot be served in its current state (suspended, provisioning, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A uniqueness conflict inside the tenant's data.
    #[error("{0}")]
    AlreadyExists(String),
    /// The tenant's database server is down or the control plane cannot answer.
    #[error("{0}")]
    Unavailable(String),
    /// No connection could be had before the caller's deadline.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The tenant is over its plan's calls per second.
    #[error("tenant is over its plan's limit of {per_second} calls per second; retry in {retry_after_ms} ms")]
    RateLimited {
        per_second: u32,
        retry_after_ms: u64,
    },
    /// The query outlived the caller's deadline and was cancelled.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A fault of ours; detail for the logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tenant_model::Invalid> for RouterError {
    fn from(e: tenant_model::Invalid) -> RouterError {
        RouterError::InvalidArgument(e.0)
    }
}

impl RouterError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::Unauthenticated(_) => "unauthenticated",
            RouterError::PermissionDenied(_) => "permission_denied",
            RouterError::InvalidArgument(_) => "invalid_argument",
            RouterError::TenantNotFound => "tenant_not_found",
            RouterError::NotFound(_) => "not_found",
            RouterError::FailedPrecondition(_) => "failed_precondition",
            RouterError::AlreadyExists(_) => "already_exists",
            RouterError::Unavailable(_) => "unavailable",
            RouterError::ResourceExhausted(_) => "resource_exhausted",
            RouterError::RateLimited { .. } => "rate_limited",
            RouterError::DeadlineExceeded => "deadline_exceeded",
            RouterError::Internal(_) => "internal",
        }
    }

    /// Maps a tenant-database error: constraint and input errors keep PostgreSQL's message
    /// (it names columns, never hosts); connection-level failures become `Unavailable`.
    pub fn from_db(err: &tokio_postgres::Error) -> RouterError {
        use tokio_postgres::error::SqlState;
        match err.as_db_error() {
            Some(db) => match db.code() {
                c if *c == SqlState::UNIQUE_VIOLATION => RouterError::AlreadyExists(format!(
                    "already exists ({})",
                    db.constraint().unwrap_or("unique key")
                )),
                c if *c == SqlState::FOREIGN_KEY_VIOLATION => RouterError::NotFound(format!(
                    "referenced row not found ({})",
                    db.constraint().unwrap_or("foreign key")
                )),
                c if *c == SqlState::CHECK_VIOLATION
                    || *c == SqlState::NOT_NULL_VIOLATION
                    || *c == SqlState::INVALID_TEXT_REPRESENTATION
                    || *c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
                    || *c == SqlState::STRING_DATA_RIGHT_TRUNCATION =>
                {
                    RouterError::InvalidArgument(format!("invalid value: {}", db.message()))
                }
                c if *c == SqlState::QUERY_CANCELED => RouterError::DeadlineExceeded,
                c if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CRASH_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || *c == SqlState::TOO_MANY_CONNECTIONS =>
                {
                    RouterError::Unavailable("tenant database unavailable".into())
                }
                _ => RouterError::Internal(format!(
                    "tenant query: {} ({})",
                    db.message(),
                    db.code().code()
                )),
            },
            None if err.is_closed() => {
                RouterError::Unavailable("tenant database connection lost".into())
            }
            None => RouterError::Unavailable("tenant database unavailable".into()),
        }
    }
}

impl From<RouterError> for tonic::Status {
    fn from(err: RouterError) -> tonic::Status {
        use tonic::Status;
        match err {
            RouterError::Unauthenticated(m) => Status::unauthenticated(m),
            e @ RouterError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            RouterError::InvalidArgument(m) => Status::invalid_argument(m),
            RouterError::TenantNotFound => Status::with_details(
                tonic::Code::NotFound,
                "tenant not found",
                bytes_of("TENANT_NOT_FOUND"),
            ),
            RouterError::NotFound(m) => Status::not_found(m),
            RouterError::FailedPrecondition(m) => Status::failed_precondition(m),
            RouterError::AlreadyExists(m) => Status::already_exists(m),
            RouterError::Unavailable(m) => Status::unavailable(m),
            RouterError::ResourceExhausted(m) => Status::resource_exhausted(m),
            e @ RouterError::RateLimited { retry_after_ms, .. } => {
                let mut status = Status::resource_exhausted(e.to_string());
                if let Ok(v) = retry_after_ms.to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                status
            }
            RouterError::DeadlineExceeded => {
                Status::deadline_exceeded("deadline exceeded; the query was cancelled")
            }
            RouterError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn bytes_of(s: &'static str) -> tonic::codegen::Bytes {
    tonic::codegen::Bytes::from_static(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (
                RouterError::Unauthenticated("x".into()),
                tonic::Code::Unauthenticated,
            ),
            (
                RouterError::PermissionDenied("acme".into()),
                tonic::Code::PermissionDenied,
            ),
            (
                RouterError::InvalidArgument("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (RouterError::TenantNotFound, tonic::Code::NotFound),
            (RouterError::NotFound("x".into()), tonic::Code::NotFound),
            (
                RouterError::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                RouterError::AlreadyExists("x".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                RouterError::Unavailable("x".into()),
                tonic::Code::Unavailable,
            ),
            (
                RouterError::ResourceExhausted("x".into()),
                tonic::Code::ResourceExhausted,
            ),
            (RouterError::DeadlineExceeded, tonic::Code::DeadlineExceeded),
            (
                RouterError::Internal("db at 10.1.1.1 password=x".into()),
                tonic::Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("10.1.1.1"));
        }
        let nf = tonic::Status::from(RouterError::TenantNotFound);
        assert_eq!(nf.details(), b"TENANT_NOT_FOUND");
    }
}
