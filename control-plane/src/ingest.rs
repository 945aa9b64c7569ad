//! The ingest database: the message pipeline's durable inbox (and, later in the pipeline,
//! its event log), provisioned and kept by the control plane, written and drained by
//! routers.
//!
//! By default it is a database beside the catalog (`<catalog>_ingest`, created if missing);
//! `ingest.url` puts it anywhere. Its server must run with `fsync=on`: a router answers a
//! webhook sender only once the delivery is committed there. Each router gets its own
//! login (DML on the pipeline's tables, nothing else), and row-level security shows a
//! login only the rows of the servers its router may serve; revoking the router disables
//! the login and ends its sessions.

use crate::catalog::{Catalog, RouterRecord};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pgconn::DbTls;
use crate::roles::{LoginLimits, RoleKind};
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod};
use proto::control::v1 as pb;
use std::time::Duration;
use tenant_migrations::quote_ident;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

mod embedded {
    refinery::embed_migrations!("ingest-migrations");
}

/// Advisory-lock key serializing ingest schema migrations between replicas.
const MIGRATION_LOCK: i64 = 0x0069_6e67_5f6d_6967;

/// What a router login may do: write and drain the inbox, keep the backoff table, relay
/// and read events, keep consumer groups' cursors and members.
const ROUTER_GRANTS: &str = "GRANT SELECT, INSERT ON inbox TO {r}; \
     GRANT UPDATE (aplicado_em, erro) ON inbox TO {r}; \
     GRANT SELECT, INSERT, UPDATE, DELETE ON inbox_atrasos TO {r}; \
     GRANT EXECUTE ON FUNCTION servidores_servidos() TO {r}; \
     GRANT SELECT, INSERT ON eventos TO {r}; \
     GRANT SELECT, INSERT, UPDATE ON cursores TO {r}; \
     GRANT SELECT, INSERT, UPDATE, DELETE ON membros TO {r}; \
     GRANT SELECT, INSERT, UPDATE, DELETE ON relay_pendentes TO {r};";

/// Limits of a router's login: its pool and workers stay far below them.
const ROUTER_LIMITS: LoginLimits = LoginLimits {
    connections: 64,
    statement_timeout_ms: 30_000,
    temp_file_limit_kb: 1 << 20,
    idle_in_transaction_ms: 60_000,
};

/// Handle to the ingest database (as its owner).
#[derive(Clone)]
pub struct Ingest {
    pool: Pool,
    database: String,
    host: String,
    port: u16,
}

/// One tenant the inbox is behind on.
#[derive(Debug, Clone, PartialEq)]
pub struct Lagging {
    pub tenant_id: i64,
    pub server: String,
    pub pending: i64,
    pub oldest_age_secs: f64,
    /// Failed applies in a row, and the last failure (none: merely behind).
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The inbox at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboxStatus {
    /// Rows not yet applied.
    pub depth: i64,
    /// Age of the oldest of them, in seconds (0 when empty).
    pub oldest_age_secs: f64,
    /// Per server: pending rows and the oldest one's age (the apply lag).
    pub servers: Vec<(String, i64, f64)>,
    /// Tenants behind by more than `stuck_after_secs`, or failing.
    pub stuck: Vec<Lagging>,
    /// Event consumer groups, the most behind first.
    pub groups: Vec<ConsumerGroup>,
}

/// An event consumer group's position.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerGroup {
    pub group: String,
    /// The servers of the routers that keep it (`*`: all).
    pub scope: String,
    /// Live subscribers.
    pub members: i64,
    /// Age of its oldest event not acknowledged (0: none waiting).
    pub oldest_unacked_age_secs: f64,
    /// Since its cursors last moved.
    pub idle_secs: f64,
}

/// Groups listed by [`Ingest::status`].
const GROUPS_LISTED: i64 = 100;
/// The events after cursor `c` that the routers keeping its group can see.
const WAITING: &str = "SELECT e.registrado_em FROM eventos e \
     WHERE e.particao = c.particao AND (e.xid, e.id) > (c.xid, c.evento) \
       AND (c.escopo = '*' OR e.servidor = ANY (string_to_array(c.escopo, ',')))";
/// A member seen this recently is a live subscriber.
const LIVE_MEMBER: &str = "interval '10 seconds'";

impl Ingest {
    /// Connects (creating the default database beside the catalog when it is missing),
    /// checks the server is durable, migrates and closes the database to everyone else.
    pub async fn open(config: &Config, tls: DbTls) -> Result<Ingest> {
        let cfg = &config.ingest;
        let invalid =
            |what: &str| Error::InvalidArgument(format!("{what} is not a valid PostgreSQL URL"));
        let mut pg: tokio_postgres::Config = if cfg.url.is_empty() {
            let mut c: tokio_postgres::Config = config
                .catalog_url
                .parse()
                .map_err(|_| invalid("catalog_url"))?;
            let catalog_db = c.get_dbname().unwrap_or("postgres").to_string();
            c.dbname(format!("{catalog_db}_ingest"));
            c
        } else {
            cfg.url.parse().map_err(|_| invalid("ingest.url"))?
        };
        if matches!(tls, DbTls::Verified(_)) {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        pg.application_name("control-plane");
        let database = pg
            .get_dbname()
            .ok_or_else(|| Error::InvalidArgument("ingest.url names no database".into()))?
            .to_string();
        let (host, port) = endpoint(&pg, &cfg.router_host)?;
        match tls.connect(&pg).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                let mut admin = pg.clone();
                admin.dbname("postgres");
                let c = tls
                    .connect(&admin)
                    .await
                    .map_err(|e| Error::Unavailable(format!("ingest server: {e}")))?;
                match c
                    .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
                    .await
                {
                    Ok(()) => tracing::info!(%database, "created the ingest database"),
                    Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
                    Err(e) => {
                        return Err(Error::Unavailable(format!(
                            "cannot create the ingest database {database} (create it, owned by the control plane's user): {e}"
                        )))
                    }
                }
            }
            Err(e) => return Err(Error::Unavailable(format!("ingest database: {e}"))),
        }
        let manager = tls.manager(
            pg,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::internal("ingest pool", e))?;
        let ingest = Ingest {
            pool,
            database,
            host,
            port,
        };
        let mut client = ingest.client().await?;
        let fsync: String = client.query_one("SHOW fsync", &[]).await?.get(0);
        if fsync != "on" && !cfg.allow_fsync_off {
            return Err(Error::FailedPrecondition(
                "the ingest database's server runs with fsync=off: acknowledged webhook deliveries \
                 could be lost; use a durable server (or set ingest.allow_fsync_off for a throwaway one)"
                    .into(),
            ));
        }
        client
            .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let migrated = embedded::migrations::runner()
            .set_migration_table_name("ingest_schema_history")
            .run_async(&mut **client)
            .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        migrated.map_err(|e| Error::internal("ingest migration", e))?;
        let closed = client
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC; \
                 REVOKE ALL ON SCHEMA public FROM PUBLIC",
                quote_ident(&ingest.database)
            ))
            .await;
        if let Err(e) = closed {
            tracing::warn!(error = %e, "cannot close the ingest database to other roles");
        }
        Ok(ingest)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(format!("ingest database: {e}")))
    }

    /// The login of `router` (made on first use, its scope and grants reset every time),
    /// as a route to hand it.
    pub async fn router_login(
        &self,
        catalog: &Catalog,
        router: &RouterRecord,
        scram_iterations: u32,
    ) -> Result<pb::IngestRoute> {
        let (role, password) = match catalog.ingest_login(&router.name).await? {
            Some(login) => login,
            None => {
                let role = role_name(&self.database, &router.name);
                let password = crate::crypto::random_password();
                catalog
                    .save_ingest_login(&router.name, &role, &password)
                    .await?
            }
        };
        let client = self.client().await?;
        crate::roles::ensure_role(
            &client,
            &role,
            RoleKind::Login(ROUTER_LIMITS),
            Some(&password),
            scram_iterations,
        )
        .await
        .map_err(|e| {
            Error::Unavailable(format!("cannot prepare the router's ingest login: {e}"))
        })?;
        let r = quote_ident(&role);
        client
            .batch_execute(&format!(
                "GRANT CONNECT ON DATABASE {} TO {r}; GRANT USAGE ON SCHEMA public TO {r}; {}",
                quote_ident(&self.database),
                ROUTER_GRANTS.replace("{r}", &r)
            ))
            .await?;
        client
            .execute(
                "INSERT INTO escopos (papel, servidores) VALUES ($1, $2) \
                 ON CONFLICT (papel) DO UPDATE SET servidores = EXCLUDED.servidores",
                &[&role, &router.servers],
            )
            .await?;
        Ok(pb::IngestRoute {
            host: self.host.clone(),
            port: u32::from(self.port),
            database: self.database.clone(),
            role,
            password,
        })
    }

    /// Disables a revoked router's login, ends its sessions and forgets its password.
    pub async fn close_router(&self, catalog: &Catalog, router: &str) -> Result<()> {
        let Some((role, _)) = catalog.ingest_login(router).await? else {
            return Ok(());
        };
        let client = self.client().await?;
        client
            .execute("DELETE FROM escopos WHERE papel = $1", &[&role])
            .await?;
        if crate::dbserver::role_exists(&client, &role).await? {
            client
                .batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote_ident(&role)))
                .await?;
        }
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await?;
        catalog.forget_ingest_login(router).await
    }

    /// Erases everything the pipeline holds of a deleted tenant: inbox rows and events.
    pub async fn erase_tenant(&self, tenant_id: i64) -> Result<u64> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM inbox WHERE empresa_id = $1", &[&tenant_id])
            .await?;
        client
            .execute(
                "DELETE FROM inbox_atrasos WHERE empresa_id = $1",
                &[&tenant_id],
            )
            .await?;
        client
            .execute("DELETE FROM eventos WHERE empresa_id = $1", &[&tenant_id])
            .await?;
        client
            .execute(
                "DELETE FROM relay_pendentes WHERE empresa_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(n)
    }

    /// Has routers' workers relay the tenant's outbox soon: an empty inbox row (applying it
    /// stores nothing; the apply relays the outbox).
    pub async fn wake_relay(&self, tenant_id: i64, server: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) \
                 VALUES ($1, $2, 'meta', '{}', 0)",
                &[&tenant_id, &server],
            )
            .await?;
        Ok(())
    }

    /// Waits up to `within` until the tenant has no pending inbox rows; whether it has none.
    pub async fn drained(&self, tenant_id: i64, within: Duration) -> Result<bool> {
        let until = std::time::Instant::now() + within;
        loop {
            let pending: i64 = self
                .client()
                .await?
                .query_one(
                    "SELECT count(*) FROM inbox WHERE empresa_id = $1 AND aplicado_em IS NULL",
                    &[&tenant_id],
                )
                .await?
                .get(0);
            if pending == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Depth, lag per server and the tenants that are stuck.
    pub async fn status(&self, stuck_after_secs: u64) -> Result<InboxStatus> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT servidor, count(*), extract(epoch FROM now() - min(recebido_em))::float8 \
                 FROM inbox WHERE aplicado_em IS NULL GROUP BY servidor ORDER BY servidor",
                &[],
            )
            .await?;
        let mut status = InboxStatus::default();
        for r in &rows {
            let (server, n, age): (String, i64, f64) = (r.get(0), r.get(1), r.get(2));
            status.depth += n;
            status.oldest_age_secs = status.oldest_age_secs.max(age);
            status.servers.push((server, n, age));
        }
        let stuck = client
            .query(
                "SELECT p.empresa_id, p.servidor, p.n, p.idade, coalesce(a.tentativas, 0), a.ultimo_erro \
                 FROM (SELECT empresa_id, min(servidor) AS servidor, count(*) AS n, \
                         extract(epoch FROM now() - min(recebido_em))::float8 AS idade \
                       FROM inbox WHERE aplicado_em IS NULL GROUP BY empresa_id) p \
                 LEFT JOIN inbox_atrasos a USING (empresa_id) \
                 WHERE p.idade > $1 OR a.empresa_id IS NOT NULL ORDER BY p.idade DESC LIMIT 100",
                &[&(stuck_after_secs as f64)],
            )
            .await?;
        status.stuck = stuck
            .iter()
            .map(|r| Lagging {
                tenant_id: r.get(0),
                server: r.get(1),
                pending: r.get(2),
                oldest_age_secs: r.get(3),
                attempts: r.get(4),
                last_error: r.get(5),
            })
            .collect();
        // Per group (and scope: a group's partitions taken under two scopes show twice),
        // the oldest event after any of its cursors that its routers can see.
        let groups = client
            .query(
                &format!(
                    "SELECT c.grupo, c.escopo, \
                       (SELECT count(*) FROM membros m WHERE m.grupo = c.grupo AND m.escopo = c.escopo \
                          AND m.visto_em > now() - {LIVE_MEMBER}), \
                       coalesce(extract(epoch FROM now() - min(w.registrado_em)), 0)::float8, \
                       extract(epoch FROM now() - max(c.atualizado_em))::float8 \
                     FROM cursores c \
                     LEFT JOIN LATERAL ({WAITING} ORDER BY e.xid, e.id LIMIT 1) w ON true \
                     GROUP BY c.grupo, c.escopo ORDER BY 4 DESC, 1, 2 LIMIT $1"
                ),
                &[&GROUPS_LISTED],
            )
            .await?;
        status.groups = groups
            .iter()
            .map(|r| ConsumerGroup {
                group: r.get(0),
                scope: r.get(1),
                members: r.get(2),
                oldest_unacked_age_secs: r.get(3),
                idle_secs: r.get(4),
            })
            .collect();
        Ok(status)
    }

    /// Deletes a consumer group's cursors and members; how many cursors. Refused while it
    /// has live subscribers.
    pub async fn forget_group(&self, group: &str) -> Result<i64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let live: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM membros WHERE grupo = $1 AND visto_em > now() - {LIVE_MEMBER}"
                ),
                &[&group],
            )
            .await?
            .get(0);
        if live > 0 {
            return Err(Error::FailedPrecondition(format!(
                "consumer group {group:?} has {live} live subscribers: stop them (or revoke the router that keeps them) first"
            )));
        }
        let cursors = tx
            .execute("DELETE FROM cursores WHERE grupo = $1", &[&group])
            .await?;
        let members = tx
            .execute("DELETE FROM membros WHERE grupo = $1", &[&group])
            .await?;
        if cursors == 0 && members == 0 {
            return Err(Error::NotFound(format!("no consumer group {group:?}")));
        }
        tx.commit().await?;
        Ok(cursors as i64)
    }

    /// Consumer groups with a live subscriber, and live subscribers.
    pub async fn consumers(&self) -> Result<(i64, i64)> {
        let row = self
            .client()
            .await?
            .query_one(
                &format!(
                    "SELECT count(DISTINCT grupo), count(*) FROM membros \
                     WHERE visto_em > now() - {LIVE_MEMBER}"
                ),
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Clears a tenant's backoff so workers try it at once; how many rows are pending.
    pub async fn retry(&self, tenant_id: i64) -> Result<i64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM inbox_atrasos WHERE empresa_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM inbox WHERE empresa_id = $1 AND aplicado_em IS NULL",
                &[&tenant_id],
            )
            .await?
            .get(0))
    }

    /// Deletes applied inbox rows older than `applied_hours`, events older than
    /// `event_hours`, group members gone for an hour, and the cursors of groups that have
    /// no member, have not moved for `event_hours` and have no event waiting (forgetting
    /// them loses nothing: started again, such a group begins at the end of the log);
    /// inbox rows and events deleted. Times in the future (only a router login writing by
    /// hand makes them) count as old.
    pub async fn prune(&self, applied_hours: u32, event_hours: u32) -> Result<u64> {
        let client = self.client().await?;
        let inbox = client
            .execute(
                "DELETE FROM inbox WHERE aplicado_em < now() - make_interval(hours => $1)",
                &[&(applied_hours as i32)],
            )
            .await?;
        let events = client
            .execute(
                "DELETE FROM eventos WHERE registrado_em < now() - make_interval(hours => $1)",
                &[&(event_hours as i32)],
            )
            .await?;
        client
            .execute(
                "DELETE FROM membros WHERE visto_em < now() - interval '1 hour' \
                 OR visto_em > now() + interval '1 day'",
                &[],
            )
            .await?;
        client
            .execute(
                &format!(
                    "DELETE FROM cursores WHERE grupo IN ( \
                       SELECT c.grupo FROM cursores c GROUP BY c.grupo \
                       HAVING bool_and(c.atualizado_em < now() - make_interval(hours => $1) \
                                       OR c.atualizado_em > now() + interval '1 day') \
                          AND NOT bool_or(EXISTS ({WAITING})) \
                          AND NOT EXISTS (SELECT 1 FROM membros m WHERE m.grupo = c.grupo))"
                ),
                &[&(event_hours as i32)],
            )
            .await?;
        Ok(inbox + events)
    }

    /// Prunes every `every` until `cancel` fires.
    pub async fn prune_loop(self, cfg: crate::config::Ingest, cancel: CancellationToken) {
        let every = Duration::from_secs(cfg.prune_every_secs);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self
                .prune(cfg.applied_retention_hours, cfg.events_retention_hours)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned applied inbox rows and old events"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the inbox"),
            }
        }
    }
}

/// The host and port routers reach the ingest database at.
fn endpoint(pg: &tokio_postgres::Config, router_host: &str) -> Result<(String, u16)> {
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    if !router_host.is_empty() {
        return Ok((router_host.to_string(), port));
    }
    match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Ok((h.clone(), port)),
        _ => Err(Error::InvalidArgument(
            "the ingest database is reached over a Unix socket: set ingest.router_host".into(),
        )),
    }
}

/// A router's login role: `<database>_r_<router>`, shortened with a hash past PostgreSQL's
/// 63-byte limit.
fn role_name(database: &str, router: &str) -> String {
    let name = format!("{database}_r_{router}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    let keep = 63 - digest.len() - 1;
    let mut head: String = name.chars().take(keep).collect();
    head.push('_');
    head + &digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_fit_postgres() {
        assert_eq!(role_name("cat_ingest", "r1"), "cat_ingest_r_r1");
        let long = role_name("a_very_long_catalog_name_ingest", &"r".repeat(40));
        assert_eq!(long.len(), 63);
        assert_ne!(
            long,
            role_name("a_very_long_catalog_name_ingest", &"r".repeat(39))
        );
    }
}
