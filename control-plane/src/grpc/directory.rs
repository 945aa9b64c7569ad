//! `TenantDirectory`: how routers resolve tenants and follow their changes.

use crate::auth;
use crate::catalog::{NewDeadLetter, RouterRecord};
use crate::directory::{Change, Directory, ResolveKey};
use caller_auth::Kind;
use futures_util::Stream;
use proto::control::v1 as pb;
use proto::model::FromWire;
use std::pin::Pin;
use tenant_model::{DeadLetterKind, WebhookSource};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The gRPC face of [`Directory`]. Every call comes from a registered router (its token
/// checked by the interceptor, its registration here): it is handed only routes of the
/// servers it may serve, and every route handed over is recorded.
pub struct DirectoryService {
    directory: Directory,
    shutdown: CancellationToken,
    /// Whether the server speaks TLS; without it, credentials go to loopback callers only.
    tls: bool,
    /// How routers share servers' connection budgets.
    leases: crate::config::Leases,
}

impl DirectoryService {
    /// Serves `directory`; change streams end when `shutdown` fires.
    pub fn new(
        directory: Directory,
        shutdown: CancellationToken,
        tls: bool,
        leases: crate::config::Leases,
    ) -> DirectoryService {
        DirectoryService {
            directory,
            shutdown,
            tls,
            leases,
        }
    }

    async fn router<T>(&self, request: &Request<T>) -> Result<(RouterRecord, String), Status> {
        if !plaintext_allowed(self.tls, request.remote_addr()) {
            return Err(Status::permission_denied(
                "this control plane serves without TLS: it hands tenant credentials to loopback callers only",
            ));
        }
        Ok(auth::router(self.directory.catalog(), request).await?)
    }
}

/// Servers one lease request may name.
const MAX_LEASE_SERVERS: usize = 1000;

/// A lease request's lines, checked: a well-formed instance id, each server named once,
/// and only servers the router may serve.
fn lease_demands(
    router: &RouterRecord,
    req: &pb::LeaseRequest,
) -> Result<Vec<crate::catalog::LeaseDemand>, Status> {
    let id_ok = (8..=64).contains(&req.instance.len())
        && req
            .instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err(Status::invalid_argument(
            "instance must be 8-64 of [A-Za-z0-9_-]",
        ));
    }
    if req.servers.len() > MAX_LEASE_SERVERS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LEASE_SERVERS} servers per lease request"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut demands = Vec::with_capacity(req.servers.len());
    for s in &req.servers {
        if s.server.is_empty() || s.server.len() > 63 {
            return Err(Status::invalid_argument(
                "each server must be named (at most 63 bytes)",
            ));
        }
        if !seen.insert(s.server.as_str()) {
            return Err(Status::invalid_argument(format!(
                "server {:?} named twice",
                s.server
            )));
        }
        if !router.serves(&s.server) {
            return Err(Status::permission_denied(format!(
                "this router may not serve server {:?}",
                s.server
            )));
        }
        demands.push(crate::catalog::LeaseDemand {
            server: s.server.clone(),
            demand: s.demand,
            limit: s.limit,
            held: s.held,
        });
    }
    Ok(demands)
}

impl DirectoryService {
    /// The tenant a router files a dead letter under: one it may serve, and for Meta the
    /// owner of the number the delivery was sent to (a router cannot file deliveries into
    /// a tenant they were not meant for, which a replay would then store).
    async fn letter_tenant(
        &self,
        router: &RouterRecord,
        id: i64,
        source: WebhookSource,
        phone: Option<&str>,
    ) -> Result<i64, Status> {
        let not_found = || Status::not_found("tenant not found");
        let tenant = self
            .directory
            .catalog()
            .tenant_by_id(id)
            .await?
            .ok_or_else(not_found)?;
        if !router.serves(&tenant.server_name) {
            return Err(not_found());
        }
        if source == WebhookSource::Meta && !phone.is_some_and(|p| tenant.owns_number(p)) {
            return Err(Status::invalid_argument(
                "the delivery's phone_number_id is not the tenant's",
            ));
        }
        Ok(tenant.id)
    }
}

/// Whether credentials may go to a caller at `remote`: over TLS always, in plaintext only
/// to the same host.
fn plaintext_allowed(tls: bool, remote: Option<std::net::SocketAddr>) -> bool {
    tls || remote.is_some_and(|a| a.ip().is_loopback())
}

/// Largest dead-letter body kept (webhook bodies are at most 3 MB).
const MAX_DEAD_LETTER_BYTES: usize = 4 << 20;

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::RouteChange, Status>> + Send>>;

#[tonic::async_trait]
impl pb::tenant_directory_server::TenantDirectory for DirectoryService {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::Route>, Status> {
        let (router, _) = self.router(&request).await?;
        let key = match request.into_inner().key {
            Some(pb::resolve_request::Key::Id(id)) => ResolveKey::Id(id),
            Some(pb::resolve_request::Key::Slug(s)) => ResolveKey::Slug(s),
            Some(pb::resolve_request::Key::PhoneNumberId(p)) => ResolveKey::PhoneNumberId(p),
            Some(pb::resolve_request::Key::EvolutionInstance(name)) => {
                if name.len() > 63 {
                    return Err(Status::invalid_argument("evolution instance name too long"));
                }
                ResolveKey::EvolutionInstance(name)
            }
            None => {
                return Err(Status::invalid_argument(
                    "resolve needs an id, a slug or a phone_number_id",
                ))
            }
        };
        let route = self.directory.resolve(&key).await?;
        // A tenant on a server this router may not serve does not exist for it.
        if !router.serves(&route.server) {
            return Err(Status::not_found("tenant not found"));
        }
        self.directory
            .catalog()
            .record_delivery(&router.name, route.tenant_id, route.version)
            .await?;
        Ok(Response::new(route))
    }

    async fn get_tenant_settings(
        &self,
        request: Request<pb::TenantSettingsRequest>,
    ) -> Result<Response<pb::RouterTenantSettings>, Status> {
        let (router, _) = self.router(&request).await?;
        let r = request.into_inner();
        let catalog = self.directory.catalog();
        let tenant = match tenant_model::TenantId::new(r.tenant_id) {
            Ok(id) => catalog.tenant(&tenant_model::TenantKey::Id(id)).await?,
            Err(_) => None,
        }
        .filter(|t| router.serves(&t.server_name))
        .ok_or_else(|| Status::not_found("tenant not found"))?;
        let settings = catalog.settings(tenant.id).await?;
        let secrets = if r.with_secrets {
            catalog.secrets_of(tenant.id).await?.into_iter().collect()
        } else {
            Default::default()
        };
        Ok(Response::new(pb::RouterTenantSettings {
            settings_json: serde_json::Value::Object(settings).to_string(),
            secrets,
        }))
    }

    async fn report_usage(
        &self,
        request: Request<pb::UsageReport>,
    ) -> Result<Response<pb::UsageRecorded>, Status> {
        let (router, _) = self.router(&request).await?;
        let report = request.into_inner();
        if report.tenants.len() > 10_000 {
            return Err(Status::invalid_argument(
                "at most 10000 tenants per usage report",
            ));
        }
        let counts: Vec<(i64, i64, i64)> = report
            .tenants
            .iter()
            .map(|u| {
                (
                    u.tenant_id,
                    i64::try_from(u.calls).unwrap_or(i64::MAX),
                    i64::try_from(u.messages).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let recorded = self
            .directory
            .catalog()
            .record_usage(&router, &counts)
            .await?;
        Ok(Response::new(pb::UsageRecorded {
            recorded: u32::try_from(recorded).unwrap_or(u32::MAX),
        }))
    }

    async fn record_unroutable(
        &self,
        request: Request<pb::UnroutableWebhook>,
    ) -> Result<Response<pb::UnroutableRecorded>, Status> {
        let (router, _) = self.router(&request).await?;
        let w = request.into_inner();
        let invalid = |e: tenant_model::Invalid| Status::invalid_argument(e.0);
        let source = WebhookSource::from_wire("source", w.source).map_err(invalid)?;
        let kind = DeadLetterKind::from_wire("kind", w.kind).map_err(invalid)?;
        if w.body.len() > MAX_DEAD_LETTER_BYTES {
            return Err(Status::invalid_argument("body larger than 4 MiB"));
        }
        let phone = (!w.phone_number_id.is_empty()).then_some(w.phone_number_id.as_str());
        if phone.is_some_and(|p| p.len() > 64) {
            return Err(Status::invalid_argument("phone_number_id too long"));
        }
        if w.reason.len() > 1024 {
            return Err(Status::invalid_argument("reason longer than 1024 bytes"));
        }
        let tenant_id = match (kind, w.tenant_id) {
            (DeadLetterKind::UnknownNumber, 0) => None,
            (DeadLetterKind::UnknownNumber, _) => {
                return Err(Status::invalid_argument(
                    "an unknown-number dead letter names no tenant",
                ))
            }
            (_, 0) => {
                return Err(Status::invalid_argument(
                    "tenant_id is required for suspended-tenant and refused-item dead letters",
                ))
            }
            (_, id) => Some(self.letter_tenant(&router, id, source, phone).await?),
        };
        let reason = (!w.reason.is_empty()).then_some(w.reason.as_str());
        let kept = self
            .directory
            .dead_letter(NewDeadLetter {
                source,
                kind,
                tenant_id,
                phone_number_id: phone,
                body: &w.body,
                reason,
            })
            .await?;
        if kept.is_none() {
            tracing::warn!(%source, "dead-letter quota full: new content dropped");
        }
        Ok(Response::new(pb::UnroutableRecorded {
            id: kept.unwrap_or(0),
            dropped: kept.is_none(),
        }))
    }

    async fn list_revoked_tokens(
        &self,
        request: Request<pb::ListRevokedTokensRequest>,
    ) -> Result<Response<pb::RevokedTokens>, Status> {
        self.router(&request).await?;
        Ok(Response::new(pb::RevokedTokens {
            token_ids: self.directory.revoked_callers().await?,
        }))
    }

    async fn get_ingest(
        &self,
        request: Request<pb::GetIngestRequest>,
    ) -> Result<Response<pb::IngestRoute>, Status> {
        let (router, _) = self.router(&request).await?;
        Ok(Response::new(self.directory.ingest_route(&router).await?))
    }

    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let (router, _) = self.router(&request).await?;
        let req = request.into_inner();
        let demands = lease_demands(&router, &req)?;
        let seq = i64::try_from(req.seq)
            .map_err(|_| Status::invalid_argument("seq must be below 2^63"))?;
        let grants = self
            .directory
            .catalog()
            .renew_lease(
                &router.name,
                &req.instance,
                seq,
                &demands,
                req.release,
                self.leases.terms(),
            )
            .await?;
        let settling = grants.iter().any(|g| g.settling);
        Ok(Response::new(pb::LeaseReply {
            servers: grants
                .into_iter()
                .map(|g| pb::ServerGrant {
                    server: g.server,
                    limit: g.limit,
                    capped: g.capped,
                })
                .collect(),
            lease_ms: self.leases.lease_ms,
            renew_ms: if settling {
                (self.leases.renew_ms / 10).max(20)
            } else {
                self.leases.renew_ms
            },
        }))
    }

    type WatchRoutesStream = ChangeStream;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let (router, token_id) = self.router(&request).await?;
        let mut changes = self.directory.subscribe();
        let shutdown = self.shutdown.clone();
        let catalog = self.directory.catalog().clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = changes.recv() => r,
                };
                let msg = match item {
                    Ok(Change::Route(route)) if router.serves(&route.server) => {
                        if let Err(e) = catalog
                            .record_delivery(&router.name, route.tenant_id, route.version)
                            .await
                        {
                            // Not handed over unrecorded: the router resolves it later.
                            tracing::warn!(error = %e, router = %router.name, "cannot record a delivery");
                            continue;
                        }
                        Ok(pb::RouteChange {
                            route: Some((*route).clone()),
                            revoked_token_id: String::new(),
                        })
                    }
                    Ok(Change::Route(_)) => continue,
                    // This stream's own credential was revoked: it ends now.
                    Ok(Change::Revoked { id, .. }) if *id == *token_id => {
                        Err(Status::unauthenticated("router credential revoked"))
                    }
                    Ok(Change::Revoked {
                        id,
                        kind: Kind::Caller | Kind::User,
                    }) => Ok(pb::RouteChange {
                        route: None,
                        revoked_token_id: id.to_string(),
                    }),
                    Ok(Change::Revoked { .. }) => continue,
                    Err(RecvError::Lagged(n)) => Err(Status::aborted(format!(
                        "watcher fell {n} changes behind; resolve again and re-watch"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a producer future through a small bounded channel. The producer runs
/// inside the stream (polled by whoever consumes it), so it stops when the client goes.
pub(crate) fn async_stream<T, F, Fut>(producer: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let producer = producer(tx);
    let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
    Box::pin(ProducerStream {
        producer: Some(Box::pin(producer)),
        rx,
    })
}

struct ProducerStream<T> {
    producer: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    rx: tokio_stream::wrappers::ReceiverStream<T>,
}

impl<T> Stream for ProducerStream<T> {
    type Item = T;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        if let Some(p) = self.producer.as_mut() {
            if p.as_mut().poll(cx).is_ready() {
                self.producer = None;
            }
        }
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::plaintext_allowed;

    #[test]
    fn credentials_travel_in_plaintext_on_loopback_only() {
        let at = |a: &str| Some(a.parse().expect("an address"));
        assert!(plaintext_allowed(false, at("127.0.0.1:5000")));
        assert!(plaintext_allowed(false, at("[::1]:5000")));
        assert!(!plaintext_allowed(false, at("10.1.2.3:5000")));
        assert!(!plaintext_allowed(false, None));
        assert!(plaintext_allowed(true, at("10.1.2.3:5000")));
    }
}
