//! Replays dead letters into their tenant's database: deliveries kept while the tenant was
//! suspended (automatically, once it is active again) and, on an operator's request, any
//! replayable letter (an unknown number that a tenant now owns).
//!
//! A replay parses the kept body with the router's own parsers and item rules
//! (`whatsapp_ingest`) and stores it with the same statement, logged in as the tenant's
//! DML-only login role. Storing is idempotent (`wamid`s are stored once, statuses only move
//! forward), so a replay interrupted by a crash is simply run again: a letter is marked
//! replayed only after its batch committed, and each replica's sweep picks up whatever is
//! still pending. One replay per tenant runs at a time across replicas (a session advisory
//! lock on a dedicated catalog connection, released if the process dies).

use crate::catalog::{Catalog, DeadLetter, DeadLetterQuota, NewDeadLetter, TenantRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use crate::model::Status;
use std::sync::Arc;
use std::time::Duration;
use tenant_model::{DeadLetterKind, WebhookSource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use whatsapp_ingest::{evolution, meta, store, Batch};

/// Letters replayed per catalog round trip.
const PAGE: u32 = 100;

/// What replaying one letter stored.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub id: i64,
    pub tenant: String,
    pub stored: store::Stored,
    /// Items that can never be stored (kept as item dead letters).
    pub refused: u32,
}

/// Replays dead letters; cheap to clone.
#[derive(Clone)]
pub struct Replayer {
    catalog: Catalog,
    /// Where the events of what a replay stored are relayed from (a marker row wakes the
    /// tenant's workers).
    ingest: crate::ingest::Ingest,
    quota: DeadLetterQuota,
    connect_timeout: Duration,
    every: Duration,
    wake: Arc<Notify>,
}

impl Replayer {
    pub fn new(
        catalog: Catalog,
        ingest: crate::ingest::Ingest,
        cfg: &crate::config::DeadLetters,
        connect_timeout: Duration,
    ) -> Replayer {
        Replayer {
            catalog,
            ingest,
            quota: cfg.quota(),
            connect_timeout,
            every: Duration::from_secs(cfg.replay_every_secs),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks the sweep loop to run now (a tenant was resumed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sweeps every `replay_every_secs` and whenever woken, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(replayed = n, "dead letters replayed"),
                Err(e) => tracing::warn!(error = %e, "dead-letter replay sweep failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Replays the pending suspended-tenant letters of every active tenant; returns how
    /// many letters were stored.
    pub async fn sweep(&self) -> Result<usize> {
        let mut total = 0;
        for id in self.catalog.tenants_with_pending_replays().await? {
            let Some(tenant) = self.catalog.tenant_by_id(id).await? else {
                continue;
            };
            match self.replay_pending(&tenant).await {
                Ok(done) => total += done.len(),
                Err(Error::Aborted(_)) => {} // another replica is on it
                Err(e) => {
                    tracing::warn!(tenant = %tenant.slug, error = %e, "cannot replay dead letters")
                }
            }
        }
        Ok(total)
    }

    /// Replays every pending suspended-tenant letter of `tenant`.
    pub async fn replay_pending(&self, tenant: &TenantRecord) -> Result<Vec<Replayed>> {
        let _lock = self.lock(tenant).await?;
        let mut done = Vec::new();
        let mut failed = std::collections::HashSet::new();
        loop {
            let page: Vec<DeadLetter> = self
                .catalog
                .pending_replays(tenant.id, PAGE)
                .await?
                .into_iter()
                .filter(|l| !failed.contains(&l.id))
                .collect();
            if page.is_empty() {
                return Ok(done);
            }
            for letter in page {
                let id = letter.id;
                match self.replay_one(tenant, letter).await? {
                    Some(r) => done.push(r),
                    None => {
                        failed.insert(id);
                    }
                }
            }
        }
    }

    /// Replays the given letters (each into its tenant: the one it was filed under, or
    /// the current owner of its number).
    pub async fn replay_ids(&self, ids: &[i64]) -> Result<Vec<Replayed>> {
        let mut done = Vec::new();
        for &id in ids {
            let letter = self
                .catalog
                .dead_letter_by_id(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("dead letter {id} not found")))?;
            if !letter.kind.replayable() {
                return Err(Error::FailedPrecondition(format!(
                    "dead letter {id} is a refused item ({}): storing it again cannot succeed",
                    letter.reason.as_deref().unwrap_or("no reason")
                )));
            }
            let tenant = self.tenant_of(&letter).await?;
            let _lock = self.lock(&tenant).await?;
            match self.replay_one(&tenant, letter).await? {
                Some(r) => done.push(r),
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "dead letter {id} no longer parses as a delivery for tenant {}",
                        tenant.slug
                    )))
                }
            }
        }
        Ok(done)
    }

    async fn tenant_of(&self, letter: &DeadLetter) -> Result<TenantRecord> {
        let tenant = match (&letter.tenant, &letter.phone_number_id) {
            (Some((id, _)), _) => self.catalog.tenant_by_id(*id).await?,
            (None, Some(phone)) => self.catalog.tenant_by_phone(phone).await?,
            (None, None) => None,
        };
        tenant.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "dead letter {} belongs to no tenant yet (no tenant owns its number)",
                letter.id
            ))
        })
    }

    /// One replay per tenant at a time, across replicas: a session lock on a connection
    /// of its own, released when the guard (the connection) is dropped.
    async fn lock(&self, tenant: &TenantRecord) -> Result<tokio_postgres::Client> {
        if tenant.status != Status::Active {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}: dead letters are replayed into active tenants only",
                tenant.slug,
                tenant.status.as_str()
            )));
        }
        let client = self.catalog.dedicated().await?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('dead_letters.replay:' || $1::int8, 0))",
                &[&tenant.id],
            )
            .await?
            .get(0);
        if !locked {
            return Err(Error::Aborted(format!(
                "dead letters of tenant {} are being replayed by another request; try again shortly",
                tenant.slug
            )));
        }
        Ok(client)
    }

    /// Stores one letter; `None` when its body no longer parses (logged, left pending).
    async fn replay_one(
        &self,
        tenant: &TenantRecord,
        letter: DeadLetter,
    ) -> Result<Option<Replayed>> {
        let body = letter.body.as_deref().unwrap_or_default();
        let batch = match letter_batch(&letter, tenant, body) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(id = letter.id, tenant = %tenant.slug, error = %e, "dead letter does not parse; left as it is");
                return Ok(None);
            }
        };
        let (batch, refused) = batch.admit(caller_auth::now_secs() as f64);
        for (item, reason) in &refused {
            let item = serde_json::to_vec(item).unwrap_or_default();
            self.catalog
                .dead_letter(
                    NewDeadLetter {
                        source: letter.source,
                        kind: DeadLetterKind::ItemRefused,
                        tenant_id: Some(tenant.id),
                        phone_number_id: letter.phone_number_id.as_deref(),
                        body: &item,
                        reason: Some(reason),
                    },
                    &self.quota,
                )
                .await?;
        }
        let stored = self.store(tenant, &batch).await?;
        // Its events are in the tenant's outbox: have the workers relay them.
        self.ingest
            .wake_relay(tenant.id, &tenant.server_name)
            .await?;
        self.catalog
            .mark_replayed(letter.id, tenant.id, letter.last_ms)
            .await?;
        Ok(Some(Replayed {
            id: letter.id,
            tenant: tenant.slug.clone(),
            stored,
            refused: u32::try_from(refused.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn store(&self, tenant: &TenantRecord, batch: &Batch) -> Result<store::Stored> {
        let server = self
            .catalog
            .server_by_id(tenant.server_id)
            .await?
            .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
        let password = self.catalog.tenant_password(tenant)?;
        let mut client = dbserver::connect_login(
            &self.catalog,
            &server,
            (&tenant.role, &password),
            &tenant.database,
            dbserver::SearchPath::Public,
            self.connect_timeout,
        )
        .await?;
        let stmts = store::Statements::prepare(&client).await?;
        Ok(store::store(&mut client, &stmts, batch).await?)
    }
}

/// The tenant's share of a kept delivery.
fn letter_batch(letter: &DeadLetter, tenant: &TenantRecord, body: &[u8]) -> Result<Batch, String> {
    match letter.source {
        WebhookSource::Meta => {
            let phone = letter
                .phone_number_id
                .as_deref()
                .or(tenant.phone_number_id.as_deref())
                .ok_or("a Meta dead letter without a business number")?;
            let parsed = meta::parse(body)?;
            Ok(parsed
                .by_phone
                .iter()
                .find(|(p, _)| p == phone)
                .map(|(_, b)| b.normalize())
                .unwrap_or_default())
        }
        WebhookSource::Evolution => Ok(evolution::parse(body)?.unwrap_or_default()),
    }
}
