//! The route directory routers read: lookups and a fan-out of tenant changes and token
//! revocations.
//!
//! Changes come from the catalog itself (`NOTIFY empresas_changed` and `tokens_revoked`,
//! fired by triggers), so every control-plane replica sees changes made by any other and
//! tells its own watchers. Only the control plane's catalog role can connect to the
//! catalog database (CONNECT is revoked from PUBLIC), so nobody else can hear or forge
//! these notifications; a forged one would only make a replica reload a row anyway. One listener task per replica loads each changed route once
//! and broadcasts it; watchers that fall more than [`CHANGE_BUFFER`] changes behind are
//! disconnected so they resynchronize instead of silently missing a change.

use crate::catalog::{Catalog, DeadLetterQuota, TenantRecord};
use crate::error::{Error, Result};
use caller_auth::Kind;
use futures_util::StreamExt;
use proto::control::v1 as pb;
use proto::model::ToWire;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Changes buffered per watcher before it is cut off as lagging.
pub const CHANGE_BUFFER: usize = 4096;

/// How a router names the tenant it wants.
#[derive(Debug, Clone)]
pub enum ResolveKey {
    Id(i64),
    Slug(String),
    PhoneNumberId(String),
    EvolutionInstance(String),
}

/// One change watchers hear of.
#[derive(Debug, Clone)]
pub enum Change {
    /// A tenant's new route.
    Route(Arc<pb::Route>),
    /// A token was revoked.
    Revoked { id: Arc<str>, kind: Kind },
}

/// Route lookups plus the change broadcast.
#[derive(Clone)]
pub struct Directory {
    catalog: Catalog,
    changes: broadcast::Sender<Change>,
    dead_letter_quota: DeadLetterQuota,
    ingest: crate::ingest::Ingest,
    scram_iterations: u32,
}

impl Directory {
    /// A directory over `catalog`; start [`Directory::listen`] to feed changes.
    pub fn new(
        catalog: Catalog,
        dead_letter_quota: DeadLetterQuota,
        ingest: crate::ingest::Ingest,
        scram_iterations: u32,
    ) -> Directory {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Directory {
            catalog,
            changes,
            dead_letter_quota,
            ingest,
            scram_iterations,
        }
    }

    /// A router's login to the ingest database.
    pub async fn ingest_route(
        &self,
        router: &crate::catalog::RouterRecord,
    ) -> Result<pb::IngestRoute> {
        self.ingest
            .router_login(&self.catalog, router, self.scram_iterations)
            .await
    }

    /// The catalog behind the directory.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Watchers of changes now (routers' streams on this replica).
    pub fn subscribers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// A new watcher of changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Revoked caller tokens and user sessions that have not expired (what routers must
    /// refuse).
    pub async fn revoked_callers(&self) -> Result<Vec<String>> {
        self.catalog.revoked_tokens(&["caller", "session"]).await
    }

    /// The route of one tenant (any status but `deleted`; the router decides what a
    /// status means for a call).
    pub async fn resolve(&self, key: &ResolveKey) -> Result<pb::Route> {
        let tenant = match key {
            ResolveKey::Id(id) => self.catalog.tenant_by_id(*id).await?,
            ResolveKey::Slug(slug) => {
                let slug = crate::model::Slug::parse(slug)?;
                self.catalog
                    .tenant(&crate::model::TenantKey::Slug(slug))
                    .await?
            }
            ResolveKey::PhoneNumberId(p) => {
                let p = crate::model::phone_number_id(p)?;
                self.catalog.tenant_by_phone(&p).await?
            }
            ResolveKey::EvolutionInstance(name) => {
                match self.catalog.tenant_of_instance(name).await? {
                    Some(id) => self.catalog.tenant_by_id(id).await?,
                    None => None,
                }
            }
        };
        match tenant {
            Some(t) if t.status != crate::model::Status::Deleted => self.route(&t),
            _ => Err(Error::NotFound("tenant not found".into())),
        }
    }

    /// Stores a webhook no tenant owns; `None` when its source's quota is full.
    pub async fn dead_letter(
        &self,
        letter: crate::catalog::NewDeadLetter<'_>,
    ) -> Result<Option<i64>> {
        self.catalog
            .dead_letter(letter, &self.dead_letter_quota)
            .await
    }

    fn route(&self, t: &TenantRecord) -> Result<pb::Route> {
        let instances = self.catalog.instance_tokens(t)?;
        Ok(pb::Route {
            tenant_id: t.id,
            slug: t.slug.clone(),
            status: t.status.to_wire(),
            sector: t.sector.to_wire(),
            server: t.server_name.clone(),
            host: t.host.clone(),
            port: u32::from(t.port),
            database: t.database.clone(),
            role: t.role.clone(),
            password: self.catalog.tenant_password(t)?,
            phone_number_id: t.phone_number_id.clone().unwrap_or_default(),
            version: t.version,
            server_connection_budget: t.connection_budget,
            plan: t.plan.clone(),
            webhook_token: self.catalog.webhook_token(t)?.unwrap_or_default(),
            extra_phone_number_ids: t.extra_numbers.clone(),
            evolution_instances: instances
                .into_iter()
                .map(|(name, token)| pb::EvolutionInstance { name, token })
                .collect(),
            max_connections: t.plan_max_connections,
            calls_per_second: t.plan_calls_per_second.unwrap_or(0),
        })
    }

    /// Listens for catalog changes until `cancel` fires, reconnecting with backoff.
    pub async fn listen(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.listen_once(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost the catalog; reconnecting")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn listen_once(&self, cancel: &CancellationToken) -> Result<()> {
        let (client, mut messages) = self
            .catalog
            .db_tls()
            .connect_listening(self.catalog.pg_config())
            .await
            .map_err(|e| Error::internal("listen connect", e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(CHANGE_BUFFER);
        let driver = async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let note = (n.channel().to_string(), n.payload().to_string());
                        if tx.send(note).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Error::internal("listen", e)),
                }
            }
            Err(Error::Internal("listen connection closed".into()))
        };
        tokio::pin!(driver);
        tokio::select! {
            r = &mut driver => return r,
            r = client.batch_execute("LISTEN empresas_changed; LISTEN tokens_revoked") => r.map_err(|e| Error::internal("listen", e))?,
        }
        tracing::info!("listening for tenant changes");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = &mut driver => return r,
                Some((channel, payload)) = rx.recv() => match channel.as_str() {
                    "tokens_revoked" => self.publish_revocation(&payload).await,
                    _ => self.publish(&payload).await,
                },
            }
        }
    }

    async fn publish(&self, payload: &str) {
        let Ok(id) = payload.parse::<i64>() else {
            return;
        };
        if self.changes.receiver_count() == 0 {
            return;
        }
        match self.catalog.tenant_by_id(id).await.and_then(|t| match t {
            Some(t) => self.route(&t).map(Some),
            None => Ok(None),
        }) {
            Ok(Some(route)) => {
                let _ = self.changes.send(Change::Route(Arc::new(route)));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(tenant_id = id, error = %e, "cannot load changed tenant"),
        }
    }
}

impl Directory {
    async fn publish_revocation(&self, id: &str) {
        match self.catalog.token(id).await {
            Ok(Some(token)) => {
                let kind = match token.kind.as_str() {
                    "caller" => Kind::Caller,
                    "operator" => Kind::Operator,
                    // A session: every user access token minted for it.
                    "session" => Kind::User,
                    _ => Kind::Router,
                };
                let _ = self.changes.send(Change::Revoked {
                    id: id.into(),
                    kind,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot load a revoked token"),
        }
    }
}
