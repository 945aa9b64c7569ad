//! refinery migrations of tenant databases and the runner that applies them safely.
//!
//! Every tenant database carries the common set (leads, conversations, messages, catalog)
//! and at most one sector set. Each set has its own refinery history table, so the sets
//! version independently. refinery takes no lock of its own, so [`migrate`] holds a
//! per-database advisory lock around it: two runs (two operators, a fleet run and a
//! provisioning) never migrate one database at once.

use refinery::Runner;
use tokio_postgres::Client;

mod sets {
    pub mod common {
        refinery::embed_migrations!("migrations/common");
    }
    pub mod veiculos {
        refinery::embed_migrations!("migrations/veiculos");
    }
    pub mod imoveis {
        refinery::embed_migrations!("migrations/imoveis");
    }
    pub mod produtos {
        refinery::embed_migrations!("migrations/produtos");
    }
}

/// Advisory-lock key taken in a tenant database while it is being migrated
/// (ASCII "tnntmig"). Advisory locks are per database, so tenants never wait on each other.
pub const MIGRATION_LOCK_KEY: i64 = 0x0074_6e6e_746d_6967;

pub use tenant_model::Sector;

/// What a sector means for a tenant database's schema.
pub trait SectorSchema {
    /// The sector migration set this sector's databases carry, if any.
    fn set(self) -> Option<MigrationSet>;
    /// Settings every new tenant of this sector starts with (rows of `configuracoes`).
    fn seed_sql(self) -> String;
}

impl SectorSchema for Sector {
    fn set(self) -> Option<MigrationSet> {
        match self {
            Sector::Veiculos => Some(MigrationSet::Veiculos),
            Sector::Imoveis => Some(MigrationSet::Imoveis),
            Sector::Autopecas | Sector::Varejo => Some(MigrationSet::Produtos),
            Sector::Servicos => None,
        }
    }

    fn seed_sql(self) -> String {
        let funil = match self {
            Sector::Veiculos => r#"["novo","test_drive","proposta","financiamento","vendido"]"#,
            Sector::Imoveis => r#"["novo","visita","proposta","documentacao","fechado"]"#,
            Sector::Autopecas | Sector::Varejo => r#"["novo","orcamento","pedido","entregue"]"#,
            Sector::Servicos => r#"["novo","orcamento","agendado","concluido"]"#,
        };
        format!(
            "INSERT INTO configuracoes (chave, valor) VALUES \
             ('setor', '\"{sector}\"'), ('funil', '{funil}'), ('moeda', '\"BRL\"'), \
             ('fuso_horario', '\"America/Sao_Paulo\"') ON CONFLICT (chave) DO NOTHING",
            sector = self.as_str()
        )
    }
}

/// One independently versioned set of migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationSet {
    Common,
    Veiculos,
    Imoveis,
    Produtos,
}

impl MigrationSet {
    /// Every set.
    pub const ALL: [MigrationSet; 4] = [
        MigrationSet::Common,
        MigrationSet::Veiculos,
        MigrationSet::Imoveis,
        MigrationSet::Produtos,
    ];

    /// Name used in reports and in the checksum lock file.
    pub fn name(self) -> &'static str {
        match self {
            MigrationSet::Common => "common",
            MigrationSet::Veiculos => "veiculos",
            MigrationSet::Imoveis => "imoveis",
            MigrationSet::Produtos => "produtos",
        }
    }

    /// The refinery history table of this set.
    pub fn history_table(self) -> &'static str {
        match self {
            MigrationSet::Common => "refinery_schema_history",
            MigrationSet::Veiculos => "refinery_schema_history_veiculos",
            MigrationSet::Imoveis => "refinery_schema_history_imoveis",
            MigrationSet::Produtos => "refinery_schema_history_produtos",
        }
    }

    /// A configured refinery runner for this set (refuses divergent and missing versions).
    pub fn runner(self) -> Runner {
        let mut runner = match self {
            MigrationSet::Common => sets::common::migrations::runner(),
            MigrationSet::Veiculos => sets::veiculos::migrations::runner(),
            MigrationSet::Imoveis => sets::imoveis::migrations::runner(),
            MigrationSet::Produtos => sets::produtos::migrations::runner(),
        };
        runner.set_migration_table_name(self.history_table());
        runner
            .set_abort_divergent(true)
            .set_abort_missing(true)
            .set_grouped(false)
    }

    /// The embedded migrations of this set as `(version, name, checksum)`, ascending.
    pub fn migrations(self) -> Vec<(i32, String, u64)> {
        let mut all: Vec<_> = self
            .runner()
            .get_migrations()
            .iter()
            .map(|m| (m.version(), m.name().to_string(), m.checksum()))
            .collect();
        all.sort_by_key(|m| m.0);
        all
    }

    /// Highest version this build ships for the set (0 when it ships none).
    pub fn target(self) -> i32 {
        self.migrations().last().map(|m| m.0).unwrap_or(0)
    }
}

/// Target versions for a sector: `(common, sector set)`; the sector part is 0 for sectors
/// without a set.
pub fn targets(sector: Sector) -> (i32, i32) {
    (
        MigrationSet::Common.target(),
        sector.set().map(MigrationSet::target).unwrap_or(0),
    )
}

/// Names (`V<version>__<name>`) of the migrations a database at the given versions lacks.
pub fn pending(sector: Sector, common_version: i32, sector_version: i32) -> Vec<String> {
    let mut out: Vec<String> = MigrationSet::Common
        .migrations()
        .into_iter()
        .filter(|m| m.0 > common_version)
        .map(|m| format!("common/V{}__{}", m.0, m.1))
        .collect();
    if let Some(set) = sector.set() {
        out.extend(
            set.migrations()
                .into_iter()
                .filter(|m| m.0 > sector_version)
                .map(|m| format!("{}/V{}__{}", set.name(), m.0, m.1)),
        );
    }
    out
}

/// What one [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Common set version after the run.
    pub common_version: i32,
    /// Sector set version after the run (0 when the sector has none).
    pub sector_version: i32,
    /// Migrations applied by this run.
    pub applied: u32,
}

/// Why a tenant database could not be migrated.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Another run holds the database's migration lock.
    #[error("another migration run holds this database's migration lock")]
    Busy,
    /// The database's history disagrees with the shipped migrations (edited or removed files).
    #[error("migration history diverges from the shipped migrations: {0}")]
    Divergent(String),
    /// A migration failed; earlier ones stay applied (each runs in its own transaction).
    #[error("migration failed: {0}")]
    Failed(String),
    /// The database itself failed (connection, lock, role).
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// Applies the common set and the sector's set to the database `client` is connected to.
///
/// `client` must be logged in as the role that owns the tenant database (never a superuser
/// with `SET ROLE`: a superuser session can always be talked back out of `SET ROLE` by a
/// function the database holds). Holds [`MIGRATION_LOCK_KEY`] for the duration (returns
/// [`MigrateError::Busy`] at once if another session holds it). Calls into `pg_catalog`
/// are schema-qualified so nothing in the tenant's schemas can stand in for them.
pub async fn migrate(client: &mut Client, sector: Sector) -> Result<Outcome, MigrateError> {
    let locked: bool = client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1)",
            &[&MIGRATION_LOCK_KEY],
        )
        .await?
        .get(0);
    if !locked {
        return Err(MigrateError::Busy);
    }
    let result = migrate_locked(client, sector).await;
    // If the session is broken the lock dies with it anyway.
    let _ = client
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_advisory_unlock({MIGRATION_LOCK_KEY})"
        ))
        .await;
    result
}

async fn migrate_locked(client: &mut Client, sector: Sector) -> Result<Outcome, MigrateError> {
    migrate_sets(client, sector, None).await
}

/// Migrates a scratch database to exactly `versions` (`(common, sector set)`), to compare
/// a tenant at those versions against (the isolation upgrade's reference). Takes no lock:
/// nobody else knows the scratch database.
pub async fn migrate_to(
    client: &mut Client,
    sector: Sector,
    versions: (i32, i32),
) -> Result<Outcome, MigrateError> {
    migrate_sets(client, sector, Some(versions)).await
}

async fn migrate_sets(
    client: &mut Client,
    sector: Sector,
    target: Option<(i32, i32)>,
) -> Result<Outcome, MigrateError> {
    let mut applied = 0u32;
    let common_version = run_set(
        client,
        MigrationSet::Common,
        target.map(|t| t.0),
        &mut applied,
    )
    .await?;
    let sector_version = match sector.set() {
        Some(set) => run_set(client, set, target.map(|t| t.1), &mut applied).await?,
        None => 0,
    };
    Ok(Outcome {
        common_version,
        sector_version,
        applied,
    })
}

/// The statements that give a tenant's login roles exactly what the domain API needs and
/// nothing else: usage of schema `public`, DML on its tables, usage of its sequences, no
/// access to the migration history, and nothing at all for `PUBLIC`. Run by the owner
/// after every migration (new tables need their grants) and by the isolation upgrade.
pub fn grants_sql(logins: &[&str]) -> String {
    let to = logins
        .iter()
        .map(|l| quote_ident(l))
        .collect::<Vec<_>>()
        .join(", ");
    let history = MigrationSet::ALL
        .iter()
        .map(|s| s.history_table())
        .collect::<Vec<_>>();
    let mut sql = format!(
        "REVOKE ALL ON SCHEMA public FROM PUBLIC; \
         GRANT USAGE ON SCHEMA public TO {to}; \
         REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC; \
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC; \
         REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {to}; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {to}; "
    );
    for table in history {
        // A sector's history table exists only in databases of that sector.
        sql.push_str(&format!(
            "DO $$ BEGIN IF pg_catalog.to_regclass('public.{table}') IS NOT NULL THEN \
             EXECUTE pg_catalog.format('REVOKE ALL ON public.{table} FROM %s', {list}); END IF; END $$; ",
            list = quote_literal(&to),
        ));
    }
    sql
}

/// Quotes a PostgreSQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

async fn run_set(
    client: &mut Client,
    set: MigrationSet,
    target: Option<i32>,
    applied: &mut u32,
) -> Result<i32, MigrateError> {
    let runner = match target {
        // Version 0: the set was never applied; nothing to run.
        Some(0) => return Ok(0),
        Some(v) => set.runner().set_target(refinery::Target::Version(v)),
        None => set.runner(),
    };
    match runner.run_async(client).await {
        Ok(report) => {
            *applied += u32::try_from(report.applied_migrations().len()).unwrap_or(u32::MAX);
            let last = runner
                .get_last_applied_migration_async(client)
                .await
                .map_err(|e| MigrateError::Failed(format!("{}: {e}", set.name())))?;
            Ok(last.map(|m| m.version()).unwrap_or(0))
        }
        Err(e) => {
            use refinery::error::Kind;
            let msg = format!("{}: {}", set.name(), describe(&e));
            match e.kind() {
                Kind::DivergentVersion(..)
                | Kind::MissingVersion(..)
                | Kind::RepeatedVersion(..) => Err(MigrateError::Divergent(msg)),
                _ => Err(MigrateError::Failed(msg)),
            }
        }
    }
}

/// refinery's message plus PostgreSQL's own (refinery only says "db error").
fn describe(err: &refinery::Error) -> String {
    let mut out = match err.kind() {
        refinery::error::Kind::Connection(msg, _) => msg.trim_matches('`').to_string(),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(pg) = s.downcast_ref::<tokio_postgres::Error>() {
            if let Some(db) = pg.as_db_error() {
                out.push_str(": ");
                out.push_str(db.message());
                return out;
            }
        }
        source = s.source();
    }
    out
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The versions a database is at now, `(common, sector set)`, read from the history tables
/// (0 for a set never applied).
pub async fn current_versions(
    client: &Client,
    sector: Sector,
) -> Result<(i32, i32), tokio_postgres::Error> {
    async fn max_version(client: &Client, set: MigrationSet) -> Result<i32, tokio_postgres::Error> {
        let exists: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&format!("public.{}", set.history_table())],
            )
            .await?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(max(version), 0)::int4 FROM public.{}",
                    set.history_table()
                ),
                &[],
            )
            .await?;
        Ok(row.get(0))
    }
    let common = max_version(client, MigrationSet::Common).await?;
    let sector_version = match sector.set() {
        Some(set) => max_version(client, set).await?,
        None => 0,
    };
    Ok((common, sector_version))
}
