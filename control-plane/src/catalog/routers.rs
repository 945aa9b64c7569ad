//! Routers as identities and the record of which credentials each was handed.

use super::{epoch_ms, unique_violation, Catalog};
use crate::auth::Actor;
use crate::error::{Error, Result};
use tokio_postgres::Row;

/// A router as the catalog holds it.
#[derive(Debug, Clone)]
pub struct RouterRecord {
    pub name: String,
    /// Servers it may serve (`None`: every server).
    pub servers: Option<Vec<String>>,
    pub active: bool,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl RouterRecord {
    /// Whether it may be handed routes of tenants on `server`.
    pub fn serves(&self, server: &str) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|s| s.iter().any(|n| n == server))
    }
}

fn router_from_row(row: &Row) -> RouterRecord {
    RouterRecord {
        name: row.get(0),
        servers: row.get(1),
        active: row.get(2),
        created_by: row.get(3),
        created_at_ms: row.get(4),
    }
}

fn router_select() -> String {
    format!(
        "SELECT r.nome, r.servidores, r.ativo, r.criado_por, {} FROM roteadores r",
        epoch_ms("r.criado_em")
    )
}

impl Catalog {
    /// Registers a router; `AlreadyExists` if the name is taken.
    pub async fn add_router(
        &self,
        name: &str,
        servers: Option<&[String]>,
        by: &Actor,
    ) -> Result<RouterRecord> {
        self.client()
            .await?
            .execute(
                "INSERT INTO roteadores (nome, servidores, criado_por) VALUES ($1, $2, $3)",
                &[&name, &servers, &by.name],
            )
            .await
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::AlreadyExists(format!("router {name:?} already exists")),
                None => e.into(),
            })?;
        self.router(name)
            .await?
            .ok_or_else(|| Error::Internal("router vanished".into()))
    }

    /// One router by name.
    pub async fn router(&self, name: &str) -> Result<Option<RouterRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE r.nome = $1", router_select()), &[&name])
            .await?;
        Ok(row.as_ref().map(router_from_row))
    }

    /// Every router, by name.
    pub async fn routers(&self) -> Result<Vec<RouterRecord>> {
        let rows = self
            .client()
            .await?
            .query(&format!("{} ORDER BY r.nome", router_select()), &[])
            .await?;
        Ok(rows.iter().map(router_from_row).collect())
    }

    /// The router presenting token `jti`, if both are live.
    pub async fn live_router(&self, name: &str, jti: &str) -> Result<Option<RouterRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "{} JOIN tokens t ON t.sujeito = r.nome AND t.tipo = 'router' \
                     WHERE r.nome = $1 AND t.id = $2 AND r.ativo AND t.revogado_em IS NULL \
                     AND t.expira_em > now() - interval '30 seconds'",
                    router_select()
                ),
                &[&name, &jti],
            )
            .await?;
        Ok(row.as_ref().map(router_from_row))
    }

    /// Disables a router and revokes its tokens (its change streams end at once); returns
    /// the ids of the tenants whose credentials it was handed.
    pub async fn revoke_router(&self, name: &str, by: &Actor) -> Result<Vec<i64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = tx
            .execute(
                "UPDATE roteadores SET ativo = false, revogado_em = coalesce(revogado_em, now()) WHERE nome = $1",
                &[&name],
            )
            .await?;
        if updated == 0 {
            return Err(Error::NotFound(format!("router {name:?} not found")));
        }
        tx.execute(
            "UPDATE tokens SET revogado_em = now(), revogado_por = $2 \
             WHERE tipo = 'router' AND sujeito = $1 AND revogado_em IS NULL",
            &[&name, &by.name],
        )
        .await?;
        let seen = tx
            .query(
                "SELECT empresa_id FROM entregas WHERE roteador = $1 ORDER BY empresa_id",
                &[&name],
            )
            .await?;
        tx.commit().await?;
        Ok(seen.iter().map(|r| r.get(0)).collect())
    }

    /// Records that `router` was handed the credentials of `tenant_id` at `version`.
    pub async fn record_delivery(&self, router: &str, tenant_id: i64, version: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO entregas (roteador, empresa_id, versao) VALUES ($1, $2, $3) \
                 ON CONFLICT (roteador, empresa_id) DO UPDATE SET versao = EXCLUDED.versao, ultima_em = now()",
                &[&router, &tenant_id, &version],
            )
            .await?;
        Ok(())
    }

    /// Tenants whose credentials `router` was handed.
    pub async fn deliveries(&self, router: &str) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT empresa_id FROM entregas WHERE roteador = $1 ORDER BY empresa_id",
                &[&router],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Catalog {
    /// A router's ingest login: role and password, if it has one.
    pub async fn ingest_login(&self, router: &str) -> Result<Option<(String, String)>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT papel, senha_cifrada FROM ingest_logins WHERE roteador = $1",
                &[&router],
            )
            .await?;
        row.map(|r| {
            let sealed: Vec<u8> = r.get(1);
            let password = self
                .secrets()
                .open(&sealed, &format!("ingest:{router}"))
                .map_err(|e| Error::internal("ingest login", e))?;
            Ok((r.get(0), password))
        })
        .transpose()
    }

    /// Records a router's ingest login; when another replica recorded one first, that one.
    pub async fn save_ingest_login(
        &self,
        router: &str,
        role: &str,
        password: &str,
    ) -> Result<(String, String)> {
        let sealed = self
            .secrets()
            .seal(password, &format!("ingest:{router}"))
            .map_err(|e| Error::internal("ingest login", e))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO ingest_logins (roteador, papel, senha_cifrada) VALUES ($1, $2, $3) \
                 ON CONFLICT (roteador) DO NOTHING",
                &[&router, &role, &sealed],
            )
            .await?;
        self.ingest_login(router)
            .await?
            .ok_or_else(|| Error::Internal("ingest login vanished".into()))
    }

    /// Forgets a router's ingest login (its role stays, unable to log in).
    pub async fn forget_ingest_login(&self, router: &str) -> Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM ingest_logins WHERE roteador = $1", &[&router])
            .await?;
        Ok(())
    }
}
