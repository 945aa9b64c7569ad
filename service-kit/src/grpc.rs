//! What both daemons' gRPC servers set up the same way: server reflection in both
//! versions, and the health service alone on a plaintext port (`health_listen`).

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::{v1, v1alpha};

/// Reflection over the platform's services and gRPC health, in both versions: grpcurl and
/// Postman speak v1, grpcio's Python client and Evans v1alpha.
#[allow(clippy::type_complexity)]
pub fn reflection(
    descriptors: &'static [u8],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    String,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let fail = |e: tonic_reflection::server::Error| format!("reflection: {e}");
    Ok((
        builder().build_v1().map_err(fail)?,
        builder().build_v1alpha().map_err(fail)?,
    ))
}

/// Serves `health` alone, in plaintext, on `addr` (if set) until `stop`: for probes that
/// cannot speak TLS, like Kubernetes' gRPC probes. Binds now (naming the address on
/// failure) and returns the server to run.
pub async fn plaintext_health<T: Health>(
    addr: Option<std::net::SocketAddr>,
    health: HealthServer<T>,
    bounds: crate::incoming::Bounds,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Option<impl std::future::Future<Output = ()>>, String> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for health checks on {addr}: {e}"))?;
    Ok(Some(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                crate::nodelay_incoming(listener, bounds),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health listener");
        }
    }))
}
