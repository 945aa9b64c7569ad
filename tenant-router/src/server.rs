//! Assembles the router and serves it until shutdown.

use crate::config::Config;
use crate::grpc::{
    CallContext, CatalogService, ConversationsService, EventsService, LeadsService, SettingsService,
};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::pools::Pools;
use crate::routes::RouteCache;
use proto::domain::v1 as pb;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Startup(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs the router on the given listeners until `shutdown` completes: stops accepting,
/// drains in-flight calls (up to `shutdown_grace_ms`), closes every tenant pool.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let startup = |e: service_kit::tls::TlsError| ServeError::Startup(e.to_string());
    // One endpoint per control-plane replica; calls go to those that answer, so a replica
    // that dies costs its streams one reconnect.
    let mut endpoints = Vec::new();
    for url in config.control_plane_endpoints() {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|_| {
                ServeError::Startup(format!("control_plane_endpoint {url:?} is not a valid URL"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = &config.control_plane_tls {
            endpoint = endpoint.tls_config(tls.tonic().map_err(startup)?)?;
        }
        endpoints.push(endpoint);
    }
    let channel = match endpoints.as_slice() {
        [one] => one.connect_lazy(),
        _ => tonic::transport::Channel::balance_list(endpoints.into_iter()),
    };
    let routes = Arc::new(
        RouteCache::new(
            channel,
            &config.directory_token,
            &config.routes,
            Arc::clone(&metrics),
        )
        .map_err(|e| ServeError::Startup(e.to_string()))?,
    );
    let verifier = caller_auth::Verifier::from_base64(&config.token_verifying_key)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    // Revocations first, so a revoked token is never accepted after a restart; if the
    // control plane is down, calls wait (UNAVAILABLE) until the change stream loads them.
    if routes.load_revocations().await.is_err() {
        tracing::warn!("revoked tokens not loaded yet; calls are refused until they are");
    }
    let db_tls = config
        .database_tls
        .as_ref()
        .map(|c| c.postgres())
        .transpose()
        .map_err(startup)?;
    let db_tls_for_inbox = db_tls.clone();
    let pools = Arc::new(Pools::new(
        config.pools.clone(),
        Arc::clone(&metrics),
        db_tls,
    ));
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    let watch_pools = Arc::clone(&pools);
    let settings_cache = crate::grpc::settings_cache(config.routes.capacity);
    let watch_settings = settings_cache.clone();
    let on_change: crate::routes::OnChange = Box::new(move |tenant: i64| {
        // Credentials rotated, tenant moved or suspended: the next call builds a fresh pool;
        // settings changed: the next read fetches them again.
        let pools = Arc::clone(&watch_pools);
        let settings = watch_settings.clone();
        Box::pin(async move {
            settings.invalidate(&(tenant, false)).await;
            settings.invalidate(&(tenant, true)).await;
            pools.invalidate(tenant).await
        })
    });
    tasks.spawn(Arc::clone(&routes).watch(on_change, cancel.child_token()));
    tasks.spawn(Arc::clone(&routes).report_usage(
        Duration::from_secs(config.routes.usage_report_every_secs),
        cancel.child_token(),
    ));
    let path = Arc::new(crate::path::TenantPath::new(
        Arc::clone(&routes),
        Arc::clone(&pools),
        tasks.clone(),
    ));
    tasks.spawn(Arc::clone(&pools).maintain(cancel.child_token()));
    let instance = crate::lease::instance_id();
    tracing::info!(%instance, "router instance");
    // The lease outlives the drain: calls finishing during it may still need connections;
    // it is given back once the pools are closed.
    let lease_stop = CancellationToken::new();
    tasks.spawn(
        crate::lease::LeaseKeeper {
            routes: Arc::clone(&routes),
            pools: Arc::clone(&pools),
            metrics: Arc::clone(&metrics),
            instance,
        }
        .run(lease_stop.clone()),
    );
    let (inbox, inbox_rx) =
        crate::inbox::Inbox::new(Arc::clone(&routes), db_tls_for_inbox, config.inbox.clone());
    // Writers stop only after the HTTP side: deliveries under way still get their commit.
    let writers_stop = CancellationToken::new();
    tasks.spawn(crate::inbox::writer::run(
        Arc::clone(&inbox),
        inbox_rx.queue,
        writers_stop.clone(),
    ));
    tasks.spawn(
        crate::inbox::apply::Workers {
            inbox: Arc::clone(&inbox),
            path: Arc::clone(&path),
            metrics: Arc::clone(&metrics),
            relayed: Default::default(),
        }
        .run(inbox_rx.wake, cancel.child_token()),
    );
    tasks.spawn(http::serve(
        http_listener,
        Arc::new(HttpState {
            limits: config.http.clone(),
            buffer: HttpState::buffer_for(&config.http),
            metrics: Arc::clone(&metrics),
            pools: Arc::clone(&pools),
            routes: Arc::clone(&routes),
            webhooks: config.webhook.clone().map(|cfg| crate::webhook::Webhooks {
                cfg,
                path: Arc::clone(&path),
                inbox: Arc::clone(&inbox),
                metrics: Arc::clone(&metrics),
            }),
        }),
        cancel.child_token(),
    ));

    let ctx = Arc::new(CallContext {
        path: Arc::clone(&path),
        tokens: crate::tokens::Tokens::new(verifier),
        metrics,
        default_deadline: Duration::from_millis(config.pools.default_deadline_ms),
        limits: crate::limits::RateLimits::new(config.limits.rate_share),
        inbox: Arc::clone(&inbox),
    });
    let event_log = Arc::new(crate::events::EventLog {
        inbox: Arc::clone(&inbox),
        routes: Arc::clone(&routes),
        metrics: Arc::clone(&ctx.metrics),
        members: Default::default(),
    });
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
        .set_serving::<pb::leads_server::LeadsServer<LeadsService>>()
        .await;
    health_reporter
        .set_serving::<pb::conversations_server::ConversationsServer<ConversationsService>>()
        .await;
    health_reporter
        .set_serving::<pb::catalog_server::CatalogServer<CatalogService>>()
        .await;
    health_reporter
        .set_serving::<pb::settings_server::SettingsServer<SettingsService>>()
        .await;
    health_reporter
        .set_serving::<pb::events_server::EventsServer<EventsService>>()
        .await;
    let (reflection, reflection_v1alpha) =
        service_kit::grpc::reflection(proto::FILE_DESCRIPTOR_SET).map_err(ServeError::Startup)?;

    tracing::info!(grpc = ?grpc.local_addr().ok(), http = ?config.http_listen, "tenant router listening");
    let drain_grace = Duration::from_millis(config.shutdown_grace_ms);
    let stop = cancel.clone();
    // Fires once shutdown starts; the drain grace period counts from then, not from startup.
    let draining = Arc::new(tokio::sync::Notify::new());
    let drain_signal = Arc::clone(&draining);
    let mut builder = config.grpc.server();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.tonic().map_err(startup)?)?;
    }
    let served = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(pb::leads_server::LeadsServer::new(LeadsService(
            Arc::clone(&ctx),
        )))
        .add_service(pb::conversations_server::ConversationsServer::new(
            ConversationsService(Arc::clone(&ctx)),
        ))
        .add_service(pb::catalog_server::CatalogServer::new(CatalogService(
            Arc::clone(&ctx),
        )))
        .add_service(pb::settings_server::SettingsServer::new(SettingsService {
            ctx: Arc::clone(&ctx),
            cache: settings_cache,
        }))
        .add_service(pb::events_server::EventsServer::new(EventsService {
            ctx: Arc::clone(&ctx),
            log: event_log,
            tasks: tasks.clone(),
            shutdown: cancel.child_token(),
        }))
        .serve_with_incoming_shutdown(
            service_kit::nodelay_incoming(grpc, config.grpc.bounds()),
            async move {
                shutdown.await;
                tracing::info!("shutting down: draining calls");
                stop.cancel();
                drain_signal.notify_one();
            },
        );
    let served = tokio::select! {
        r = served => Ok(r),
        _ = async {
            draining.notified().await;
            tokio::time::sleep(drain_grace).await;
        } => Err(()),
    };
    cancel.cancel();
    writers_stop.cancel();
    pools.close_all();
    lease_stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(remaining = tasks.len(), "tasks still running at shutdown");
    }
    match served {
        Ok(r) => r.map_err(ServeError::from),
        Err(_) => {
            tracing::warn!("calls still running after the drain grace period");
            Ok(())
        }
    }
}
