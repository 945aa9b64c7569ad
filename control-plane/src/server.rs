//! Assembles the control plane and serves it until shutdown.

use crate::auth::TokenAuth;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::directory::Directory;
use crate::grpc::{AccountsService, AdminService, DirectoryService};
use crate::rotation::Rotator;
use crate::tokens::Minter;
use proto::control::v1 as pb;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight provisioning and fleet work may take to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Startup(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs the control plane on `listener` until `shutdown` completes: migrates the catalog,
/// starts the change listener and serves `TenantAdmin`, `TenantDirectory`, health and
/// reflection. On shutdown it stops accepting, lets running work finish (up to
/// [`SHUTDOWN_GRACE`]) and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let secrets = config
        .secret_box()
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let catalog = Catalog::connect(
        &config.catalog_url,
        config.catalog_pool_size,
        secrets,
        crate::pgconn::DbTls::from_config(config.database_tls.as_ref())
            .map_err(|e| ServeError::Startup(e.to_string()))?,
    )
    .map_err(|e| ServeError::Startup(e.to_string()))?;
    catalog
        .migrate()
        .await
        .map_err(|e| ServeError::Startup(format!("cannot prepare the catalog: {e}")))?;
    match catalog.close_to_public().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the catalog user may not revoke CONNECT on the catalog database from PUBLIC; \
             revoke it as a superuser, or every role on that cluster can connect to it"
        ),
        Err(e) => {
            return Err(ServeError::Startup(format!(
                "cannot close the catalog: {e}"
            )))
        }
    }

    let ingest = crate::ingest::Ingest::open(
        &config,
        crate::pgconn::DbTls::from_config(config.database_tls.as_ref())
            .map_err(|e| ServeError::Startup(e.to_string()))?,
    )
    .await
    .map_err(|e| ServeError::Startup(format!("cannot prepare the ingest database: {e}")))?;

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let directory = Directory::new(
        catalog.clone(),
        config.dead_letters.quota(),
        ingest.clone(),
        config.provisioning.scram_iterations,
    );
    tasks.spawn(
        ingest
            .clone()
            .prune_loop(config.ingest.clone(), cancel.child_token()),
    );
    tasks.spawn(directory.clone().listen(cancel.child_token()));

    let signer = caller_auth::Signer::from_base64(&config.token_signing_key)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let minter = Minter::new(signer, &config.tokens);
    let operators = TokenAuth::new(minter.verifier(), caller_auth::Kind::Operator);
    let routers = TokenAuth::new(minter.verifier(), caller_auth::Kind::Router);
    let verifier = minter.verifier();
    let admin = AdminService::new(
        catalog.clone(),
        &config,
        tasks.clone(),
        cancel.clone(),
        minter,
        ingest,
    )
    .map_err(|e| ServeError::Startup(e.to_string()))?;
    tasks.spawn(
        Rotator::new(catalog.clone(), config.provisioning.clone()).sweep_loop(cancel.child_token()),
    );
    // Also replays at start what a crashed replica left pending.
    tasks.spawn(admin.replayer().run(cancel.child_token()));
    tasks.spawn(admin.backups().sweep_loop(cancel.child_token()));
    tasks.spawn(admin.backups().schedule_loop(cancel.child_token()));
    tasks.spawn(admin.deleter().sweep_loop(cancel.child_token()));
    tasks.spawn(admin.fleet().sweep_loop(cancel.child_token()));
    tasks.spawn(prune_dead_letters(
        catalog.clone(),
        config.dead_letters.clone(),
        cancel.child_token(),
    ));
    if let Some(addr) = config.metrics_listen {
        let listener = crate::metrics::bind(addr)
            .await
            .map_err(ServeError::Startup)?;
        let sources = crate::metrics::Sources {
            accounts: admin.accounts(),
            catalog: catalog.clone(),
            jobs: admin.jobs(),
            directory: directory.clone(),
            ingest: admin.ingest(),
            stuck_after_secs: config.ingest.stuck_after_secs,
        };
        tasks.spawn(crate::metrics::serve(
            listener,
            sources,
            cancel.child_token(),
        ));
    }
    let accounts = AccountsService::new(admin.accounts(), verifier);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    if let Some(serve) = service_kit::grpc::plaintext_health(
        config.health_listen,
        health.clone(),
        config.grpc.bounds(),
        cancel.clone(),
    )
    .await
    .map_err(ServeError::Startup)?
    {
        tasks.spawn(serve);
    }
    health_reporter
        .set_serving::<pb::tenant_admin_server::TenantAdminServer<AdminService>>()
        .await;
    health_reporter
        .set_serving::<pb::tenant_directory_server::TenantDirectoryServer<DirectoryService>>()
        .await;
    let (reflection, reflection_v1alpha) =
        service_kit::grpc::reflection(proto::FILE_DESCRIPTOR_SET).map_err(ServeError::Startup)?;

    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    tracing::info!(%addr, "control plane listening");
    let incoming = service_kit::nodelay_incoming(listener, config.grpc.bounds());
    let stop = cancel.clone();
    let mut builder = config.grpc.server();
    let tls = config.tls.is_some();
    if let Some(cfg) = &config.tls {
        let cfg = cfg
            .tonic()
            .map_err(|e| ServeError::Startup(e.to_string()))?;
        builder = builder.tls_config(cfg)?;
    } else if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving without TLS: the directory answers loopback callers only");
    }
    let served = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(pb::tenant_admin_server::TenantAdminServer::with_interceptor(admin, operators))
        .add_service(proto::accounts::v1::auth_server::AuthServer::new(
            accounts.clone(),
        ))
        .add_service(proto::accounts::v1::users_server::UsersServer::new(
            accounts,
        ))
        .add_service(
            pb::tenant_directory_server::TenantDirectoryServer::with_interceptor(
                DirectoryService::new(directory, cancel.clone(), tls, config.leases.clone()),
                routers,
            ),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls; finishing running work");
            stop.cancel();
        })
        .await;
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "work still running at the end of the shutdown grace period"
        );
    }
    served?;
    Ok(())
}

/// Deletes dead letters past their retention, every `prune_every_secs`, until `cancel`.
async fn prune_dead_letters(
    catalog: Catalog,
    cfg: crate::config::DeadLetters,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(cfg.prune_every_secs)) => {}
        }
        match catalog.prune_dead_letters(cfg.retention_days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "dead letters past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot prune dead letters"),
        }
        if let Err(e) = catalog.prune_login_state().await {
            tracing::warn!(error = %e, "cannot prune failed-login counters");
        }
        if let Err(e) = catalog.prune_usage(400).await {
            tracing::warn!(error = %e, "cannot prune usage older than 400 days");
        }
    }
}
