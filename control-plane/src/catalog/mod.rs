//! The catalog: every SQL statement the control plane runs against its control database.
//!
//! Durability notes: a tenant row is written *before* anything is created on a database
//! server and records each finished provisioning step (`provision_steps`), so a crash at
//! any point leaves enough in the catalog to undo or resume. Every change to a tenant row
//! bumps its `version` and fires `empresas_changed` (a trigger), which is how routers learn
//! about it.

mod backups;
mod dead_letters;
mod deletion;
mod identities;
mod leases;
mod numbers;
mod rekey;
mod restores;
mod routers;
mod runs;
mod servers;
mod settings;
mod state;
mod tenants;
mod usage;
mod users;

pub use backups::{BackupKind, BackupRecord, NewBackup, OverdueBackup};
pub use dead_letters::{DeadLetter, NewDeadLetter, Quota as DeadLetterQuota};
pub use deletion::Tombstone;
pub use identities::{AuditRecord, OperatorRecord, TokenRecord};
pub use leases::{divide, routers_part, LeaseDemand, LeaseGrant, LeaseTerms};
pub use numbers::{instance_context, NumberRecord};
pub use rekey::Resealed;
pub use restores::{RestoreJob, RetiredGeneration};
pub use routers::RouterRecord;
pub use runs::{RunCounts, RunTenantRow};
pub use servers::{NewServer, ServerRecord, TemplateRecord};
pub use state::{fleet_state, FleetState};
pub use tenants::{NewPasswords, NewTenant, RoleModel, TenantFilter, TenantRecord};
pub use usage::UsageRecord;
pub use users::{NewUser, Refreshed, UserRecord};

use crate::crypto::SecretBox;
use crate::error::{Error, Result};
use crate::pgconn::DbTls;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

mod embedded {
    refinery::embed_migrations!("catalog-migrations");
}

/// Advisory-lock key serializing placement decisions (capacity checks + insert).
const PLACEMENT_LOCK: i64 = 0x0000_706c_6163_6521;
/// Advisory-lock key serializing catalog schema migrations between replicas.
const CATALOG_MIGRATION_LOCK: i64 = 0x0063_6174_5f6d_6967;

/// Handle to the control database.
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    secrets: SecretBox,
    pg_config: tokio_postgres::Config,
    /// How every PostgreSQL connection of the control plane is secured.
    tls: DbTls,
}

impl Catalog {
    /// Opens a bounded pool (`pool_size` connections) to the catalog.
    pub fn connect(url: &str, pool_size: usize, secrets: SecretBox, tls: DbTls) -> Result<Catalog> {
        let mut pg_config: tokio_postgres::Config = url.parse().map_err(|_| {
            Error::InvalidArgument("catalog_url is not a valid PostgreSQL URL".into())
        })?;
        if matches!(tls, DbTls::Verified(_)) {
            pg_config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("control-plane");
        }
        let manager = tls.manager(
            pg_config.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::internal("catalog pool", e))?;
        Ok(Catalog {
            pool,
            secrets,
            pg_config,
            tls,
        })
    }

    /// Brings the catalog schema up to date (serialized between replicas).
    pub async fn migrate(&self) -> Result<()> {
        let mut client = self.dedicated().await?;
        client
            .query_one("SELECT pg_advisory_lock($1)", &[&CATALOG_MIGRATION_LOCK])
            .await?;
        let result = embedded::migrations::runner().run_async(&mut client).await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&CATALOG_MIGRATION_LOCK])
            .await;
        result.map_err(|e| Error::internal("catalog migration", e))?;
        Ok(())
    }

    /// Revokes `CONNECT` and `TEMPORARY` on the catalog database from `PUBLIC`, so no tenant
    /// role on the same cluster can open a session here (and hear or forge change
    /// notifications). Returns false when the catalog user may not (not the database's
    /// owner nor a superuser); the caller warns.
    pub async fn close_to_public(&self) -> Result<bool> {
        let client = self.client().await?;
        let result = client
            .batch_execute(
                "DO $$ BEGIN EXECUTE pg_catalog.format(\
                 'REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', pg_catalog.current_database()); END $$",
            )
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A connection of its own, outside the pool (for LISTEN and long-held session locks).
    pub async fn dedicated(&self) -> Result<tokio_postgres::Client> {
        self.tls
            .connect(&self.pg_config)
            .await
            .map_err(|e| Error::internal("catalog connect", e))
    }

    /// How PostgreSQL connections are secured (the catalog's and the servers').
    pub fn db_tls(&self) -> &DbTls {
        &self.tls
    }

    /// Connection settings of the catalog (for the change listener).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg_config
    }

    /// The secret box sealing stored credentials.
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    /// The pool's size, idle connections and waiters now.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// Appends a successful action to the audit log.
    pub async fn audit(
        &self,
        actor: &crate::auth::Actor,
        action: &str,
        tenant_id: Option<i64>,
        target: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        self.audit_outcome(actor, action, tenant_id, target, details, "ok")
            .await
    }
}

/// Bumps a (not deleted) tenant's version inside `tx`: routers hear of the change and drop
/// what they cached of the tenant. `NotFound` if there is no such tenant.
pub(crate) async fn bump_version(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: i64,
) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE empresas SET version = version + 1, atualizado_em = now() WHERE id = $1 AND status <> 'deleted'",
            &[&tenant_id],
        )
        .await?;
    if n == 0 {
        return Err(Error::NotFound("tenant not found".into()));
    }
    Ok(())
}

/// The name of the violated unique constraint, if `err` is a unique violation.
pub(crate) fn unique_violation(err: &tokio_postgres::Error) -> Option<String> {
    let db = err.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint().unwrap_or_default().to_string())
}

/// Milliseconds since the epoch, computed in SQL to avoid a time crate.
pub(crate) const EPOCH_MS: &str = "(extract(epoch FROM {}) * 1000)::int8";

pub(crate) fn epoch_ms(column: &str) -> String {
    EPOCH_MS.replace("{}", column)
}
