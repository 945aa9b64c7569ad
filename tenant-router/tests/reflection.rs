//! Server reflection on both daemons, as grpcio's Python reflection client (v1alpha) sees
//! it over TLS: every service listed, every method's descriptor resolvable. (grpcurl and
//! Postman use v1, served as well.) The client comes from PyPI: `scripts/test.sh` installs
//! it and sets `TOOLS_PYTHON`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Plane, Router};
use std::collections::HashMap;

/// Services and their methods, as `scripts/py/reflect.py` lists them for `endpoint`.
fn reflect(endpoint: &str) -> HashMap<String, Vec<String>> {
    let python = std::env::var("TOOLS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/py/reflect.py");
    let target = endpoint.trim_start_matches("https://");
    let ca = pg_harness::test_ca().unwrap().ca_file.clone();
    let out = std::process::Command::new(&python)
        .args([script, target, &ca.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "grpcio's reflection client failed (scripts/test.sh installs grpcio-reflection and \
         sets TOOLS_PYTHON): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reflection_client_lists_and_resolves_every_service_of_both_daemons() {
    let plane = Plane::start().await;
    let router = Router::start(&plane, &[]).await;

    let routed = reflect(&router.grpc);
    for service in [
        "tenancy.domain.v1.Leads",
        "tenancy.domain.v1.Conversations",
        "tenancy.domain.v1.Events",
        "grpc.health.v1.Health",
    ] {
        assert!(routed.contains_key(service), "{service} in {routed:?}");
    }
    assert!(
        routed["tenancy.domain.v1.Events"].contains(&"Subscribe".to_string()),
        "{routed:?}"
    );

    let control = reflect(&plane.endpoint);
    for service in [
        "tenancy.control.v1.TenantAdmin",
        "tenancy.control.v1.TenantDirectory",
        "grpc.health.v1.Health",
    ] {
        assert!(control.contains_key(service), "{service} in {control:?}");
    }
    assert!(
        control["tenancy.control.v1.TenantAdmin"].contains(&"CreateTenant".to_string()),
        "{control:?}"
    );
}

/// Kubernetes' gRPC probes speak no TLS: `health_listen` serves the health service alone in
/// plaintext, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_port_answers_probes_and_serves_nothing_else() {
    let plane = Plane::start().await;
    let port = pg_harness::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _router = Router::start(&plane, &[("TENANT_ROUTER__HEALTH_LISTEN", &addr)]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tenancy.domain.v1.Leads".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let refused = proto::domain::v1::leads_client::LeadsClient::new(channel)
        .get_lead(common::call(
            proto::domain::v1::GetLeadRequest::default(),
            "x",
            "y",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
}
