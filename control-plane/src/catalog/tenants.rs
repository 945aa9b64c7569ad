//! Tenant (empresa) rows: creation with placement, lookups, lifecycle transitions.

use super::{epoch_ms, unique_violation, Catalog, ServerRecord};
use crate::error::{Error, Result};
use crate::model::{Sector, Slug, Status, TenantKey, TenantNames};
use std::sync::OnceLock;
use tokio_postgres::Row;

/// A tenant to record before provisioning starts.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub slug: Slug,
    pub name: String,
    pub sector: Sector,
    pub phone_number_id: Option<String>,
    pub display_phone: Option<String>,
    pub plan: String,
    pub server: Option<String>,
}

/// A tenant as the catalog holds it.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub sector: Sector,
    pub status: Status,
    pub status_reason: Option<String>,
    pub server_id: i64,
    pub server_name: String,
    pub host: String,
    pub port: u16,
    pub connection_budget: u32,
    pub database: String,
    /// The active login role (what routers connect as).
    pub role: String,
    /// Sealed password of the active login role (open with [`Catalog::tenant_password`]).
    pub sealed_password: Vec<u8>,
    /// Which role model the tenant's database follows.
    pub role_model: RoleModel,
    /// Generation of the tenant's database (names derive from it).
    pub generation: i32,
    /// The role owning the database (None under the legacy model).
    pub owner_role: Option<String>,
    /// Sealed owner password (open with [`Catalog::owner_password`]).
    pub sealed_owner_password: Option<Vec<u8>>,
    /// The standby login role (None under the legacy model).
    pub standby_role: Option<String>,
    /// Sealed password staged for the standby role (a rotation or an upgrade underway).
    pub sealed_standby_password: Option<Vec<u8>>,
    /// The first release's role while an upgrade has yet to drop it.
    pub legacy_role: Option<String>,
    /// Sealed Evolution webhook token, if one was issued.
    pub sealed_webhook_token: Option<Vec<u8>>,
    pub phone_number_id: Option<String>,
    /// Further WhatsApp numbers (`tenantctl number add`).
    pub extra_numbers: Vec<String>,
    /// Further Evolution instances by name, and their sealed tokens in the same order
    /// (open with [`Catalog::instance_tokens`]).
    pub evolution_instances: Vec<String>,
    pub sealed_instance_tokens: Vec<Vec<u8>>,
    pub display_phone: Option<String>,
    pub plan: String,
    /// The plan's pool size per tenant.
    pub plan_max_connections: u32,
    /// The plan's calls per second (None: unlimited).
    pub plan_calls_per_second: Option<u32>,
    pub schema_version: i32,
    pub sector_schema_version: i32,
    pub migration_status: String,
    pub migration_error: Option<String>,
    pub provision_steps: Vec<String>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl TenantRecord {
    /// Whether `phone_number_id` is one of the tenant's numbers.
    pub fn owns_number(&self, phone_number_id: &str) -> bool {
        self.phone_number_id.as_deref() == Some(phone_number_id)
            || self.extra_numbers.iter().any(|n| n == phone_number_id)
    }

    /// The names of the tenant's current generation, active login first (`None` under the
    /// legacy model).
    pub fn names(&self) -> Option<TenantNames> {
        // An upgrade in progress has the new names staged but does not use them yet.
        if self.role_model == RoleModel::Legacy {
            return None;
        }
        Some(TenantNames {
            database: self.database.clone(),
            owner: self.owner_role.clone()?,
            logins: [self.role.clone(), self.standby_role.clone()?],
        })
    }

    /// The names, or the error that tells an operator to upgrade a legacy tenant.
    pub fn require_names(&self) -> Result<TenantNames> {
        self.names().ok_or_else(|| legacy_error(&self.slug))
    }
}

fn legacy_error(slug: &str) -> Error {
    Error::FailedPrecondition(format!(
        "tenant {slug} still uses the legacy role model; run `tenantctl harden {slug}` first"
    ))
}

/// How a tenant's database and roles are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleModel {
    /// One role owns the database and routers log in as it (first release). Nothing runs
    /// inside such a database until `tenantctl harden` has upgraded it.
    Legacy,
    /// An owner role that routers never see, and two DML-only login roles.
    OwnerAndLogins,
}

impl RoleModel {
    fn from_db(v: i16) -> Result<RoleModel> {
        match v {
            1 => Ok(RoleModel::Legacy),
            2 => Ok(RoleModel::OwnerAndLogins),
            other => Err(Error::Internal(format!("catalog holds role model {other}"))),
        }
    }

    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleModel::Legacy => "legacy",
            RoleModel::OwnerAndLogins => "owner+logins",
        }
    }
}

/// Filters for [`Catalog::list_tenants`].
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    pub status: Option<Status>,
    pub server: Option<String>,
    /// Restrict to these slugs or ids (empty: all).
    pub keys: Vec<TenantKey>,
}

fn tenant_select() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT e.id, e.slug, e.nome, e.setor, e.status, e.status_motivo, e.servidor_id, s.nome, s.host, s.porta, \
             s.orcamento_conexoes, e.banco, e.papel, e.senha_cifrada, e.phone_number_id, e.telefone_exibicao, e.plano, \
             e.schema_version, e.sector_schema_version, e.migration_status, e.migration_error, e.provision_steps, \
             e.version, {}, {}, e.webhook_token_cifrado, e.modelo_papeis, e.geracao, e.papel_dono, \
             e.senha_dono_cifrada, e.papel_reserva, e.senha_reserva_cifrada, e.papel_legado, p.max_conexoes, p.chamadas_por_segundo, \
             ARRAY(SELECT n.phone_number_id FROM numeros n WHERE n.empresa_id = e.id ORDER BY n.id), \
             ARRAY(SELECT i.nome FROM instancias_evolution i WHERE i.empresa_id = e.id ORDER BY i.nome), \
             ARRAY(SELECT i.token_cifrado FROM instancias_evolution i WHERE i.empresa_id = e.id ORDER BY i.nome) \
             FROM empresas e JOIN servidores s ON s.id = e.servidor_id JOIN planos p ON p.nome = e.plano",
            epoch_ms("e.criado_em"),
            epoch_ms("e.atualizado_em")
        )
    })
}

fn tenant_from_row(row: &Row) -> Result<TenantRecord> {
    let sector: String = row.get(3);
    let status: String = row.get(4);
    Ok(TenantRecord {
        id: row.get(0),
        slug: row.get(1),
        name: row.get(2),
        sector: Sector::parse(&sector)
            .map_err(|_| Error::Internal(format!("catalog holds sector {sector:?}")))?,
        status: Status::parse(&status)
            .map_err(|_| Error::Internal(format!("catalog holds status {status:?}")))?,
        status_reason: row.get(5),
        server_id: row.get(6),
        server_name: row.get(7),
        host: row.get(8),
        port: u16::try_from(row.get::<_, i32>(9)).unwrap_or(0),
        connection_budget: u32::try_from(row.get::<_, i32>(10)).unwrap_or(0),
        database: row.get(11),
        role: row.get(12),
        sealed_password: row.get(13),
        phone_number_id: row.get(14),
        display_phone: row.get(15),
        plan: row.get(16),
        schema_version: row.get(17),
        sector_schema_version: row.get(18),
        migration_status: row.get(19),
        migration_error: row.get(20),
        provision_steps: row.get(21),
        version: row.get(22),
        created_at_ms: row.get(23),
        updated_at_ms: row.get(24),
        sealed_webhook_token: row.get(25),
        role_model: RoleModel::from_db(row.get(26))?,
        generation: row.get(27),
        owner_role: row.get(28),
        sealed_owner_password: row.get(29),
        standby_role: row.get(30),
        sealed_standby_password: row.get(31),
        legacy_role: row.get(32),
        plan_max_connections: u32::try_from(row.get::<_, i32>(33)).unwrap_or(1),
        plan_calls_per_second: row
            .get::<_, Option<i32>>(34)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        extra_numbers: row.get(35),
        evolution_instances: row.get(36),
        sealed_instance_tokens: row.get(37),
    })
}

pub(super) fn password_context(slug: &str) -> String {
    format!("tenant:{slug}:password")
}

pub(super) fn owner_context(id: i64) -> String {
    format!("tenant:{id}:owner")
}

fn standby_context(id: i64) -> String {
    format!("tenant:{id}:standby")
}

/// Passwords a new tenant's roles start with.
pub struct NewPasswords {
    /// The active login role's.
    pub login: String,
    /// The owner role's.
    pub owner: String,
}

impl Catalog {
    /// Records a new tenant as `provisioning` on a server chosen by placement, with its
    /// database and role names (from its id, generation 1) and sealed passwords. Nothing
    /// exists on any database server yet.
    pub async fn insert_tenant(
        &self,
        new: &NewTenant,
        passwords: &NewPasswords,
        name_prefix: &str,
    ) -> Result<(TenantRecord, ServerRecord)> {
        let sealed = self
            .secrets()
            .seal(&passwords.login, &password_context(new.slug.as_str()))
            .map_err(|e| Error::internal("seal", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let server = Catalog::place(&tx, new.server.as_deref()).await?;
        // The id comes first: every name derives from it.
        let id: i64 = tx
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('empresas', 'id'))",
                &[],
            )
            .await?
            .get(0);
        let names = TenantNames::derive(name_prefix, id, 1);
        let sealed_owner = self
            .secrets()
            .seal(&passwords.owner, &owner_context(id))
            .map_err(|e| Error::internal("seal", e))?;
        tx.execute(
            "INSERT INTO empresas (id, slug, nome, setor, status, servidor_id, banco, papel, senha_cifrada, \
             phone_number_id, telefone_exibicao, plano, modelo_papeis, geracao, papel_dono, senha_dono_cifrada, \
             papel_reserva) OVERRIDING SYSTEM VALUE \
             VALUES ($1, $2, $3, $4, 'provisioning', $5, $6, $7, $8, $9, $10, $11, 2, 1, $12, $13, $14)",
            &[
                &id,
                &new.slug.as_str(),
                &new.name,
                &new.sector.as_str(),
                &server.id,
                &names.database,
                &names.logins[0],
                &sealed,
                &new.phone_number_id,
                &new.display_phone,
                &new.plan,
                &names.owner,
                &sealed_owner,
                &names.logins[1],
            ],
        )
        .await
        .map_err(|e| insert_error(e, new))?;
        tx.commit().await?;
        let tenant = self
            .tenant_by_id(id)
            .await?
            .ok_or_else(|| Error::Internal("tenant vanished".into()))?;
        Ok((tenant, server))
    }

    /// The plaintext password of a tenant's active login role.
    pub fn tenant_password(&self, tenant: &TenantRecord) -> Result<String> {
        self.secrets()
            .open(&tenant.sealed_password, &password_context(&tenant.slug))
            .map_err(|e| Error::internal("tenant password", e))
    }

    /// The plaintext password of a tenant's owner role (control-plane jobs only; it never
    /// leaves the control plane).
    pub fn owner_password(&self, tenant: &TenantRecord) -> Result<String> {
        let sealed = tenant
            .sealed_owner_password
            .as_ref()
            .ok_or_else(|| legacy_error(&tenant.slug))?;
        self.secrets()
            .open(sealed, &owner_context(tenant.id))
            .map_err(|e| Error::internal("owner password", e))
    }

    /// Stages the upgrade of a legacy tenant to the owner-and-logins model: records the
    /// new roles and their passwords (kept while the tenant still runs on its legacy role)
    /// and which legacy role to drop at the end. Idempotent: a second call returns the
    /// passwords staged by the first. Returns `(owner password, login password)`.
    pub async fn stage_upgrade(
        &self,
        tenant: &TenantRecord,
        names: &TenantNames,
    ) -> Result<(String, String)> {
        let (owner, login) = (
            crate::crypto::random_password(),
            crate::crypto::random_password(),
        );
        let seal = |plain: &str, ctx: String| {
            self.secrets()
                .seal(plain, &ctx)
                .map_err(|e| Error::internal("seal", e))
        };
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET papel_dono = $2, senha_dono_cifrada = $3, papel_reserva = $4, \
                 senha_reserva_cifrada = $5, papel_legado = papel \
                 WHERE id = $1 AND modelo_papeis = 1 AND senha_dono_cifrada IS NULL",
                &[
                    &tenant.id,
                    &names.owner,
                    &seal(&owner, owner_context(tenant.id))?,
                    &names.logins[0],
                    &seal(&login, standby_context(tenant.id))?,
                ],
            )
            .await?;
        // Whoever staged first wins; read back what is stored.
        let staged = self
            .tenant_by_id(tenant.id)
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
        let standby = staged
            .sealed_standby_password
            .as_ref()
            .ok_or_else(|| Error::Internal("upgrade staged without a login password".into()))?;
        let login = self
            .secrets()
            .open(standby, &standby_context(tenant.id))
            .map_err(|e| Error::internal("staged password", e))?;
        Ok((self.owner_password(&staged)?, login))
    }

    /// Switches an upgraded tenant to its new database name and login role (routers hear
    /// of it through the change stream and drop their old pools).
    pub async fn complete_upgrade(
        &self,
        tenant: &TenantRecord,
        names: &TenantNames,
        login_password: &str,
    ) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(login_password, &password_context(&tenant.slug))
            .map_err(|e| Error::internal("seal", e))?;
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET modelo_papeis = 2, banco = $2, papel = $3, senha_cifrada = $4, \
                 papel_reserva = $5, senha_reserva_cifrada = NULL, atualizado_em = now(), version = version + 1 \
                 WHERE id = $1",
                &[&tenant.id, &names.database, &names.logins[0], &sealed, &names.logins[1]],
            )
            .await?;
        Ok(())
    }

    /// The password staged for the standby login role: the one a crashed rotation stored,
    /// or `fresh`, stored now.
    pub async fn stage_rotation(&self, tenant: &TenantRecord, fresh: &str) -> Result<String> {
        let sealed = self
            .secrets()
            .seal(fresh, &standby_context(tenant.id))
            .map_err(|e| Error::internal("seal", e))?;
        let row = self
            .client()
            .await?
            .query_one(
                "UPDATE empresas SET senha_reserva_cifrada = coalesce(senha_reserva_cifrada, $2) \
                 WHERE id = $1 RETURNING senha_reserva_cifrada",
                &[&tenant.id, &sealed],
            )
            .await?;
        let stored: Vec<u8> = row.get(0);
        self.secrets()
            .open(&stored, &standby_context(tenant.id))
            .map_err(|e| Error::internal("staged password", e))
    }

    /// Makes the standby login role the active one with `password` (routers hear of it and
    /// rebuild their pools); the previous one is disabled after `grace_secs`.
    pub async fn swap_logins(
        &self,
        tenant: &TenantRecord,
        password: &str,
        grace_secs: u64,
    ) -> Result<TenantRecord> {
        let sealed = self
            .secrets()
            .seal(password, &password_context(&tenant.slug))
            .map_err(|e| Error::internal("seal", e))?;
        let grace = i64::try_from(grace_secs).unwrap_or(i64::MAX);
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE empresas SET papel = papel_reserva, papel_reserva = papel, senha_cifrada = $3, \
                 senha_reserva_cifrada = NULL, papel_a_desativar = papel, \
                 desativar_em = now() + make_interval(secs => $4::int8::float8), \
                 atualizado_em = now(), version = version + 1 \
                 WHERE id = $1 AND papel = $2 AND modelo_papeis = 2",
                &[&tenant.id, &tenant.role, &sealed, &grace],
            )
            .await?;
        if updated == 0 {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} changed during the rotation; run it again",
                tenant.slug
            )));
        }
        self.tenant_by_id(tenant.id)
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))
    }

    /// Tenants whose previous login role is due to be disabled: `(id, role, server id)`.
    pub async fn due_login_disables(&self) -> Result<Vec<(i64, String, i64)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, papel_a_desativar, servidor_id FROM empresas \
                 WHERE desativar_em IS NOT NULL AND desativar_em <= now() ORDER BY desativar_em LIMIT 100",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Records that a previous login role was disabled (unless a newer rotation replaced
    /// the pending one meanwhile).
    pub async fn login_disabled(&self, id: i64, role: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET papel_a_desativar = NULL, desativar_em = NULL \
                 WHERE id = $1 AND papel_a_desativar = $2",
                &[&id, &role],
            )
            .await?;
        Ok(())
    }

    /// Stores a new owner password (see `Rotator::rotate_owner` for the order of steps).
    pub async fn set_owner_password(&self, tenant: &TenantRecord, password: &str) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(password, &owner_context(tenant.id))
            .map_err(|e| Error::internal("seal", e))?;
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET senha_dono_cifrada = $2 WHERE id = $1 AND modelo_papeis = 2",
                &[&tenant.id, &sealed],
            )
            .await?;
        Ok(())
    }

    /// Records that an upgrade dropped the tenant's legacy role.
    pub async fn legacy_role_dropped(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET papel_legado = NULL WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// The plaintext Evolution webhook token of a tenant, if one was issued.
    pub fn webhook_token(&self, tenant: &TenantRecord) -> Result<Option<String>> {
        tenant
            .sealed_webhook_token
            .as_ref()
            .map(|s| {
                self.secrets()
                    .open(s, &format!("tenant:{}:webhook-token", tenant.slug))
                    .map_err(|e| Error::internal("webhook token", e))
            })
            .transpose()
    }

    /// Stores a new Evolution webhook token (routers hear of it through the change stream).
    pub async fn set_webhook_token(&self, tenant: &TenantRecord, token: &str) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(token, &format!("tenant:{}:webhook-token", tenant.slug))
            .map_err(|e| Error::internal("seal", e))?;
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET webhook_token_cifrado = $2, atualizado_em = now(), version = version + 1 WHERE id = $1",
                &[&tenant.id, &sealed],
            )
            .await?;
        Ok(())
    }

    /// One tenant by id or slug (rows marked `deleted` included).
    pub async fn tenant(&self, key: &TenantKey) -> Result<Option<TenantRecord>> {
        match key {
            TenantKey::Id(id) => self.tenant_by_id(id.get()).await,
            TenantKey::Slug(slug) => self.tenant_where("e.slug = $1", &slug.as_str()).await,
        }
    }

    /// One tenant by id.
    pub async fn tenant_by_id(&self, id: i64) -> Result<Option<TenantRecord>> {
        self.tenant_where("e.id = $1", &id).await
    }

    /// One tenant by WhatsApp `phone_number_id`.
    pub async fn tenant_by_phone(&self, phone_number_id: &str) -> Result<Option<TenantRecord>> {
        self.tenant_where(
            "(e.phone_number_id = $1 OR e.id = (SELECT n.empresa_id FROM numeros n WHERE n.phone_number_id = $1))",
            &phone_number_id,
        )
        .await
    }

    async fn tenant_where(
        &self,
        predicate: &str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<TenantRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{} WHERE {predicate}", tenant_select()))
            .await?;
        client
            .query_opt(&stmt, &[param])
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    /// Tenants matching `filter`, by id.
    pub async fn list_tenants(&self, filter: &TenantFilter) -> Result<Vec<TenantRecord>> {
        let status = filter.status.map(Status::as_str);
        let ids: Vec<i64> = filter
            .keys
            .iter()
            .filter_map(|k| match k {
                TenantKey::Id(id) => Some(id.get()),
                TenantKey::Slug(_) => None,
            })
            .collect();
        let slugs: Vec<&str> = filter
            .keys
            .iter()
            .filter_map(|k| match k {
                TenantKey::Slug(s) => Some(s.as_str()),
                TenantKey::Id(_) => None,
            })
            .collect();
        let any_key = !filter.keys.is_empty();
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE ($1::text IS NULL OR e.status = $1) AND ($2::text IS NULL OR s.nome = $2) \
                     AND (NOT $3 OR e.id = ANY($4) OR e.slug = ANY($5)) ORDER BY e.id",
                    tenant_select()
                ),
                &[&status, &filter.server, &any_key, &ids, &slugs],
            )
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Records a finished provisioning step.
    pub async fn add_provision_step(&self, id: i64, step: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET provision_steps = array_append(provision_steps, $2), \
                 atualizado_em = now(), version = version + 1 WHERE id = $1",
                &[&id, &step],
            )
            .await?;
        Ok(())
    }

    /// Marks provisioning finished: `active`, versions recorded, steps cleared.
    pub async fn mark_active(
        &self,
        id: i64,
        schema_version: i32,
        sector_schema_version: i32,
    ) -> Result<TenantRecord> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET status = 'active', status_motivo = NULL, schema_version = $2, \
                 sector_schema_version = $3, migration_status = 'ok', migration_error = NULL, \
                 provision_steps = '{}', atualizado_em = now(), version = version + 1 WHERE id = $1",
                &[&id, &schema_version, &sector_schema_version],
            )
            .await?;
        self.tenant_by_id(id)
            .await?
            .ok_or_else(|| Error::Internal("tenant vanished".into()))
    }

    /// Marks provisioning failed with a reason; its steps have been undone.
    pub async fn mark_failed(&self, id: i64, reason: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET status = 'failed', status_motivo = $2, provision_steps = '{}', \
                 atualizado_em = now(), version = version + 1 WHERE id = $1",
                &[&id, &reason],
            )
            .await?;
        Ok(())
    }

    /// Removes a tenant row that never got anything created for it.
    pub async fn delete_tenant_row(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM empresas WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Changes a tenant's name, plan and display phone (each when `Some`; an empty display
    /// phone clears it) with a version bump. An unknown plan is `InvalidArgument` naming
    /// the plans; a plan whose user limit is below the tenant's users is
    /// `FailedPrecondition`; a deleted tenant cannot change.
    pub async fn update_tenant(
        &self,
        id: i64,
        name: Option<&str>,
        plan: Option<&str>,
        display_phone: Option<&str>,
    ) -> Result<TenantRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT status FROM empresas WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
        if row.get::<_, String>(0) == "deleted" {
            return Err(Error::FailedPrecondition("tenant is deleted".into()));
        }
        if let Some(plan) = plan {
            let Some(limit) = tx
                .query_opt("SELECT max_usuarios FROM planos WHERE nome = $1", &[&plan])
                .await?
            else {
                let plans: Vec<String> = tx
                    .query("SELECT nome FROM planos ORDER BY nome", &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "unknown plan {plan:?}: expected one of {}",
                    plans.join(", ")
                )));
            };
            let users: i64 = tx
                .query_one(
                    "SELECT count(*) FROM usuarios WHERE empresa_id = $1",
                    &[&id],
                )
                .await?
                .get(0);
            if let Some(max) = limit.get::<_, Option<i32>>(0) {
                if users > i64::from(max) {
                    return Err(Error::FailedPrecondition(format!(
                        "plan {plan} allows {max} users and the tenant has {users}; disable or remove users first"
                    )));
                }
            }
        }
        let display_phone = display_phone.map(|p| (!p.is_empty()).then_some(p));
        tx.execute(
            "UPDATE empresas SET nome = coalesce($2, nome), plano = coalesce($3, plano), \
             telefone_exibicao = CASE WHEN $4 THEN $5 ELSE telefone_exibicao END, \
             atualizado_em = now(), version = version + 1 WHERE id = $1",
            &[
                &id,
                &name,
                &plan,
                &display_phone.is_some(),
                &display_phone.flatten(),
            ],
        )
        .await?;
        tx.commit().await?;
        self.tenant_by_id(id)
            .await?
            .ok_or_else(|| Error::Internal("tenant vanished".into()))
    }

    /// Takes over a `failed` tenant, or a `provisioning` one untouched for
    /// `stale_after_secs` (its control plane died), for another provisioning attempt.
    /// Returns `None` when the tenant is in any other state or someone else holds it (a
    /// `restore --as` job building it: its own sweep finishes or removes it).
    pub async fn restart_provisioning(
        &self,
        slug: &Slug,
        stale_after_secs: u64,
    ) -> Result<Option<TenantRecord>> {
        let stale = i64::try_from(stale_after_secs).unwrap_or(i64::MAX);
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE empresas SET status = 'provisioning', status_motivo = NULL, atualizado_em = now(), \
                 version = version + 1 WHERE slug = $1 AND (status = 'failed' OR (status = 'provisioning' \
                 AND atualizado_em < now() - make_interval(secs => $2::int8::float8))) \
                 AND NOT EXISTS (SELECT 1 FROM restauracoes r WHERE r.empresa_id = empresas.id \
                 AND r.estado = 'running') RETURNING id",
                &[&slug.as_str(), &stale],
            )
            .await?;
        match row {
            Some(row) => self.tenant_by_id(row.get(0)).await,
            None => Ok(None),
        }
    }

    /// Moves a tenant from one of `from` to `to`; `FailedPrecondition` otherwise.
    pub async fn transition(
        &self,
        key: &TenantKey,
        from: &[Status],
        to: Status,
    ) -> Result<TenantRecord> {
        let tenant = self
            .tenant(key)
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
        if tenant.status == to {
            return Ok(tenant);
        }
        let from_names: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE empresas SET status = $2, atualizado_em = now(), version = version + 1 \
                 WHERE id = $1 AND status = ANY($3)",
                &[&tenant.id, &to.as_str(), &from_names],
            )
            .await?;
        if updated == 0 {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}; it must be {} to become {}",
                tenant.slug,
                tenant.status.as_str(),
                from_names.join(" or "),
                to.as_str()
            )));
        }
        self.tenant_by_id(tenant.id)
            .await?
            .ok_or_else(|| Error::Internal("tenant vanished".into()))
    }

    /// Records the outcome of migrating one tenant.
    pub async fn record_migration(
        &self,
        id: i64,
        schema_version: i32,
        sector_schema_version: i32,
        error: Option<&str>,
    ) -> Result<()> {
        let status = if error.is_some() { "failed" } else { "ok" };
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET schema_version = $2, sector_schema_version = $3, migration_status = $4, \
                 migration_error = $5, atualizado_em = now(), version = version + 1 WHERE id = $1",
                &[&id, &schema_version, &sector_schema_version, &status, &error],
            )
            .await?;
        Ok(())
    }
}

fn insert_error(err: tokio_postgres::Error, new: &NewTenant) -> Error {
    match unique_violation(&err).as_deref() {
        Some("empresas_slug_key") => {
            Error::AlreadyExists(format!("slug {:?} is already taken", new.slug.as_str()))
        }
        Some("empresas_phone_number_id_key") => Error::AlreadyExists(format!(
            "phone_number_id {:?} already belongs to another tenant",
            new.phone_number_id.as_deref().unwrap_or_default()
        )),
        Some("empresas_servidor_banco_key") => Error::AlreadyExists(format!(
            "database name for slug {:?} is already taken on that server",
            new.slug.as_str()
        )),
        Some(other) => Error::AlreadyExists(format!("a unique value is already taken ({other})")),
        None => match err.as_db_error().map(|d| d.code().clone()) {
            Some(tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                Error::InvalidArgument(format!("unknown plan {:?}", new.plan))
            }
            _ => err.into(),
        },
    }
}
