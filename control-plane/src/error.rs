//! The control plane's error type and its one mapping to gRPC status codes.
//!
//! Messages of client-facing variants are written for clients: they never carry hosts,
//! connection strings, passwords or SQL. Anything else is `Internal`, whose detail is
//! logged where it is handled and replaced by a generic message on the wire.

/// Everything a control-plane operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (names the offending field).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named tenant or server does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A unique name or number is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation does not apply to the object's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A database server cannot be reached or refused the admin credentials.
    #[error("{0}")]
    Unavailable(String),
    /// A multi-step operation failed part way; what it had done was undone.
    #[error("{0}")]
    Aborted(String),
    /// No active server has room for another tenant.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller presented no or a wrong token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the action.
    #[error("{0}")]
    PermissionDenied(String),
    /// A fault of ours or of the catalog; the detail stays in the logs.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for control-plane results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an unexpected fault, keeping its detail for the logs only.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{context}: {err}"))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        Error::internal("catalog", err)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Error {
        Error::internal("catalog pool", err)
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        match err {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::AlreadyExists(m) => tonic::Status::already_exists(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::Aborted(m) => tonic::Status::aborted(m),
            Error::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                tonic::Status::internal("internal error; see the control-plane log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let status: tonic::Status = Error::internal(
            "catalog",
            "connect to 10.0.0.5:5432 password=hunter2 failed",
        )
        .into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("10.0.0.5"));
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn each_kind_maps_to_its_code() {
        let cases = [
            (
                Error::InvalidArgument("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (Error::NotFound("x".into()), tonic::Code::NotFound),
            (Error::AlreadyExists("x".into()), tonic::Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (Error::Unavailable("x".into()), tonic::Code::Unavailable),
            (
                Error::ResourceExhausted("x".into()),
                tonic::Code::ResourceExhausted,
            ),
            (Error::Aborted("x".into()), tonic::Code::Aborted),
            (
                Error::Unauthenticated("x".into()),
                tonic::Code::Unauthenticated,
            ),
            (
                Error::PermissionDenied("x".into()),
                tonic::Code::PermissionDenied,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err).code(), code);
        }
    }
}
