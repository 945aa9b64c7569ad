//! Database servers in the catalog and the placement query.

use super::{unique_violation, Catalog, PLACEMENT_LOCK};
use crate::error::{Error, Result};
use tokio_postgres::Row;

/// A server to register.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: String,
    pub connection_budget: u32,
    pub capacity: u32,
}

/// A registered database server.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    /// Sealed admin password (open with [`Catalog::server_password`]).
    pub sealed_password: Vec<u8>,
    pub connection_budget: u32,
    pub capacity: u32,
    pub state: String,
    /// Tenants placed on the server (any status but `deleted`).
    pub tenants: u32,
    /// Sealed login password of the template owner role on this server, once set.
    pub sealed_template_password: Option<Vec<u8>>,
    /// Whether `CONNECT` on `postgres` and `template1` was revoked from `PUBLIC`.
    pub maintenance_closed: bool,
}

const SERVER_SELECT: &str =
    "SELECT s.id, s.nome, s.host, s.porta, s.admin_usuario, s.admin_senha_cifrada, \
     s.orcamento_conexoes, s.capacidade, s.estado, \
     (SELECT count(*) FROM empresas e WHERE e.servidor_id = s.id) AS tenants, \
     s.template_senha_cifrada, s.manutencao_fechada FROM servidores s";

fn server_from_row(row: &Row) -> ServerRecord {
    let to_u32 = |v: i32| u32::try_from(v).unwrap_or(0);
    ServerRecord {
        id: row.get(0),
        name: row.get(1),
        host: row.get(2),
        port: u16::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        admin_user: row.get(4),
        sealed_password: row.get(5),
        connection_budget: to_u32(row.get(6)),
        capacity: to_u32(row.get(7)),
        state: row.get(8),
        tenants: u32::try_from(row.get::<_, i64>(9)).unwrap_or(u32::MAX),
        sealed_template_password: row.get(10),
        maintenance_closed: row.get(11),
    }
}

fn password_context(name: &str) -> String {
    format!("server:{name}:admin")
}

fn template_context(name: &str) -> String {
    format!("server:{name}:template-owner")
}

impl Catalog {
    /// Registers a server; its admin password is stored sealed.
    pub async fn add_server(&self, new: &NewServer) -> Result<ServerRecord> {
        let sealed = self
            .secrets()
            .seal(&new.admin_password, &password_context(&new.name))
            .map_err(|e| Error::internal("seal", e))?;
        let client = self.client().await?;
        let port = i32::from(new.port);
        let budget = i32::try_from(new.connection_budget).unwrap_or(i32::MAX);
        let capacity = i32::try_from(new.capacity).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO servidores (nome, host, porta, admin_usuario, admin_senha_cifrada, orcamento_conexoes, capacidade) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&new.name, &new.host, &port, &new.admin_user, &sealed, &budget, &capacity],
            )
            .await
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::AlreadyExists(format!("server {:?} is already registered", new.name)),
                None => e.into(),
            })?;
        self.server_by_name(&new.name)
            .await?
            .ok_or_else(|| Error::Internal("server vanished after insert".into()))
    }

    /// Every server, by name.
    pub async fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        let rows = self
            .client()
            .await?
            .query(&format!("{SERVER_SELECT} ORDER BY s.nome"), &[])
            .await?;
        Ok(rows.iter().map(server_from_row).collect())
    }

    /// One server by name.
    pub async fn server_by_name(&self, name: &str) -> Result<Option<ServerRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{SERVER_SELECT} WHERE s.nome = $1"), &[&name])
            .await?;
        Ok(row.as_ref().map(server_from_row))
    }

    /// One server by id.
    pub async fn server_by_id(&self, id: i64) -> Result<Option<ServerRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{SERVER_SELECT} WHERE s.id = $1"), &[&id])
            .await?;
        Ok(row.as_ref().map(server_from_row))
    }

    /// The plaintext admin password of a server.
    pub fn server_password(&self, server: &ServerRecord) -> Result<String> {
        self.secrets()
            .open(&server.sealed_password, &password_context(&server.name))
            .map_err(|e| Error::internal("server password", e))
    }

    /// The template owner's login password on a server: the stored one, or a new one
    /// stored now (the caller then sets it on the server).
    pub async fn template_owner_password(&self, server: &ServerRecord) -> Result<String> {
        if let Some(sealed) = &server.sealed_template_password {
            return self
                .secrets()
                .open(sealed, &template_context(&server.name))
                .map_err(|e| Error::internal("template owner password", e));
        }
        let password = crate::crypto::random_password();
        let sealed = self
            .secrets()
            .seal(&password, &template_context(&server.name))
            .map_err(|e| Error::internal("seal", e))?;
        // Two replicas may race: the first stored password wins and both use it.
        let row = self
            .client()
            .await?
            .query_one(
                "UPDATE servidores SET template_senha_cifrada = coalesce(template_senha_cifrada, $2) \
                 WHERE id = $1 RETURNING template_senha_cifrada",
                &[&server.id, &sealed],
            )
            .await?;
        let stored: Vec<u8> = row.get(0);
        self.secrets()
            .open(&stored, &template_context(&server.name))
            .map_err(|e| Error::internal("template owner password", e))
    }

    /// Stores a server's new admin password.
    pub async fn set_server_password(&self, server: &ServerRecord, password: &str) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(password, &password_context(&server.name))
            .map_err(|e| Error::internal("seal", e))?;
        self.client()
            .await?
            .execute(
                "UPDATE servidores SET admin_senha_cifrada = $2 WHERE id = $1",
                &[&server.id, &sealed],
            )
            .await?;
        Ok(())
    }

    /// Forgets a server's template owner password (the next template refresh, or
    /// `ensure_owner`, makes and sets a new one).
    pub async fn reset_template_owner_password(
        &self,
        server: &ServerRecord,
    ) -> Result<ServerRecord> {
        self.client()
            .await?
            .execute(
                "UPDATE servidores SET template_senha_cifrada = NULL WHERE id = $1",
                &[&server.id],
            )
            .await?;
        self.server_by_id(server.id)
            .await?
            .ok_or_else(|| Error::Internal("server vanished".into()))
    }

    /// Records whether a server's maintenance databases are closed to `PUBLIC`.
    pub async fn set_maintenance_closed(&self, server_id: i64, closed: bool) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE servidores SET manutencao_fechada = $2 WHERE id = $1",
                &[&server_id, &closed],
            )
            .await?;
        Ok(())
    }

    /// Picks a server inside an open transaction that holds the placement lock: the named
    /// one if given (it must be active with room), else the least loaded active server with
    /// room (fewest tenants relative to capacity).
    pub(crate) async fn place(
        tx: &tokio_postgres::Transaction<'_>,
        preferred: Option<&str>,
    ) -> Result<ServerRecord> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLACEMENT_LOCK])
            .await?;
        let rows = tx
            .query(
                &format!(
                    "{SERVER_SELECT} WHERE ($1::text IS NULL OR s.nome = $1) \
                     ORDER BY (SELECT count(*) FROM empresas e WHERE e.servidor_id = s.id AND e.status <> 'deleted')::float8 \
                     / s.capacidade, s.id"
                ),
                &[&preferred],
            )
            .await?;
        let servers: Vec<ServerRecord> = rows.iter().map(server_from_row).collect();
        if let Some(name) = preferred {
            let server = servers
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound(format!("server {name:?} is not registered")))?;
            if server.state != "active" {
                return Err(Error::FailedPrecondition(format!(
                    "server {name:?} is draining"
                )));
            }
            if server.tenants >= server.capacity {
                return Err(Error::ResourceExhausted(format!(
                    "server {name:?} is at its tenant capacity"
                )));
            }
            return Ok(server);
        }
        if servers.is_empty() {
            return Err(Error::FailedPrecondition(
                "no database server is registered; add one with `tenantctl server add`".into(),
            ));
        }
        servers
            .into_iter()
            .find(|s| s.state == "active" && s.tenants < s.capacity)
            .ok_or_else(|| {
                Error::ResourceExhausted(
                    "every active database server is at its tenant capacity".into(),
                )
            })
    }
}

/// A per-server, per-sector template database and the versions it was migrated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    pub server_id: i64,
    pub sector: String,
    pub database: String,
    pub schema_version: i32,
    pub sector_schema_version: i32,
}

impl Catalog {
    /// The template of `sector` on a server, if one was built.
    pub async fn template(&self, server_id: i64, sector: &str) -> Result<Option<TemplateRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT servidor_id, setor, banco, schema_version, sector_schema_version FROM templates \
                 WHERE servidor_id = $1 AND setor = $2",
                &[&server_id, &sector],
            )
            .await?;
        Ok(row.map(|r| TemplateRecord {
            server_id: r.get(0),
            sector: r.get(1),
            database: r.get(2),
            schema_version: r.get(3),
            sector_schema_version: r.get(4),
        }))
    }

    /// Every template, for fleet runs (they migrate first).
    pub async fn templates(&self) -> Result<Vec<TemplateRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT servidor_id, setor, banco, schema_version, sector_schema_version FROM templates \
                 ORDER BY servidor_id, setor",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TemplateRecord {
                server_id: r.get(0),
                sector: r.get(1),
                database: r.get(2),
                schema_version: r.get(3),
                sector_schema_version: r.get(4),
            })
            .collect())
    }

    /// Records a template's versions.
    pub async fn upsert_template(&self, t: &TemplateRecord) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO templates (servidor_id, setor, banco, schema_version, sector_schema_version) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (servidor_id, setor) DO UPDATE SET \
                 banco = EXCLUDED.banco, schema_version = EXCLUDED.schema_version, \
                 sector_schema_version = EXCLUDED.sector_schema_version, atualizado_em = now()",
                &[&t.server_id, &t.sector, &t.database, &t.schema_version, &t.sector_schema_version],
            )
            .await?;
        Ok(())
    }
}
