//! gRPC services of the control plane and the bearer-token check in front of them.

mod admin;
mod directory;

pub use admin::AdminService;
pub use directory::DirectoryService;

use tonic::{Request, Status};

/// Interceptor requiring `authorization: Bearer <token>` equal to `expected`.
#[derive(Clone)]
pub struct BearerAuth {
    expected: std::sync::Arc<str>,
}

impl BearerAuth {
    /// Accepts exactly `token`.
    pub fn new(token: &str) -> BearerAuth {
        BearerAuth {
            expected: token.into(),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization token"))?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be 'Bearer <token>'"))?;
        if constant_time_eq(presented.as_bytes(), self.expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid authorization token"))
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn bearer_tokens() {
        let mut auth = BearerAuth::new("secret-token-123456");
        assert!(auth.call(req(Some("Bearer secret-token-123456"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("secret-token-123456"),
            Some("Basic x"),
        ] {
            let err = auth.call(req(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
    }
}
