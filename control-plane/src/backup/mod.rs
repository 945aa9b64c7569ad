//! Tenant backups: a logical dump (`pg_dump` custom format, the server's own major
//! version), taken logged in as the tenant's owner role (never an admin), encrypted with a
//! per-backup data key (`stream`) and streamed into the backup store (`store`) by multipart
//! upload, without holding the dump in memory or on local disk.
//!
//! The dump and the manifest's per-table row counts come from one exported snapshot, so a
//! restore can check every table against them. Each attempt is a catalog row: `running`
//! with a heartbeat while it streams, `ok` with size, checksum (SHA-256 of the stored
//! object), duration and manifest once the object is complete, `failed` otherwise (the
//! upload aborted). A replica that dies mid-backup leaves a `running` row whose heartbeat
//! stops; any replica marks it `abandoned` (its upload never completed, so no object
//! exists under its name).

mod restore;
pub mod store;
pub mod stream;

use crate::catalog::{BackupKind, BackupRecord, Catalog, NewBackup, TenantRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use crate::model::Status;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

pub use store::Store;

/// Advisory-lock key of the backup scheduler (one replica schedules at a time).
const SCHEDULE_LOCK: i64 = 0x0062_6b5f_7363_6864;
/// Bytes read from pg_dump at a time.
const READ: usize = 256 << 10;
/// How many heartbeats fit in `stale_after_secs` (a live backup is never taken for dead).
const BEATS_PER_STALE: u32 = 4;

/// Takes and lists backups; cheap to clone.
#[derive(Clone)]
pub struct Backups {
    catalog: Catalog,
    cfg: crate::config::Backup,
    /// Names, role limits and SCRAM cost of new database generations (restores).
    prov: crate::config::Provisioning,
    store: Store,
    /// The CA file PostgreSQL server certificates are checked against (verify-full).
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
    replica: String,
    global: Arc<Semaphore>,
    per_server: Arc<Mutex<HashMap<i64, Arc<Semaphore>>>>,
    jobs: crate::telemetry::Jobs,
}

impl Backups {
    pub fn new(
        catalog: Catalog,
        config: &crate::Config,
        jobs: crate::telemetry::Jobs,
    ) -> Result<Backups> {
        Ok(Backups {
            jobs,
            store: Store::open(&config.backup.store)?,
            catalog,
            ca_file: config.database_tls.as_ref().map(|t| t.ca_file.clone()),
            connect_timeout: Duration::from_millis(config.provisioning.connect_timeout_ms),
            replica: format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "control-plane".into()),
                std::process::id()
            ),
            global: Arc::new(Semaphore::new(config.backup.concurrency)),
            per_server: Arc::new(Mutex::new(HashMap::new())),
            cfg: config.backup.clone(),
            prov: config.provisioning.clone(),
        })
    }

    /// The backup store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn stale(&self) -> Duration {
        Duration::from_secs(self.cfg.stale_after_secs)
    }

    /// How often a running backup or restore says it is alive.
    fn beat_every(&self) -> Duration {
        self.stale() / BEATS_PER_STALE
    }

    /// Now and every `stale_after_secs` until `cancel`: marks backups of dead replicas
    /// abandoned, undoes their restores (the tenant back on its database, the half-built
    /// generation dropped), and drops generations whose restore grace period is over.
    pub async fn sweep_loop(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "backup sweep failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.stale()) => {}
            }
        }
    }

    async fn sweep(&self) -> Result<()> {
        for b in self
            .catalog
            .abandon_stale_backups(self.cfg.stale_after_secs)
            .await?
        {
            tracing::warn!(
                backup = b.id,
                "backup abandoned: the replica taking it stopped"
            );
            delete_object(&self.store, &b.object).await?;
        }
        for (job, tenant_id, generation) in self
            .catalog
            .stale_restores(self.cfg.stale_after_secs)
            .await?
        {
            let Some(tenant) = self.catalog.tenant_by_id(tenant_id).await? else {
                continue;
            };
            if let Some(server) = self.catalog.server_by_id(tenant.server_id).await? {
                let names = crate::model::TenantNames::derive(
                    &self.prov.name_prefix,
                    tenant_id,
                    generation,
                );
                self.discard(&server, &names).await;
            }
            self.catalog
                .end_restore(job, "abandoned", "the replica running it stopped")
                .await?;
            if tenant.status == Status::Provisioning {
                // A restore into a new tenant (`--as`): the tenant was only ever its copy.
                self.catalog.delete_tenant_row(tenant_id).await?;
            }
            tracing::warn!(tenant = %tenant.slug, restore = job, "restore abandoned; the tenant stays on its database");
        }
        for retired in self.catalog.due_retired_generations().await? {
            let Some(server) = self.catalog.server_by_id(retired.server_id).await? else {
                continue;
            };
            let admin =
                dbserver::connect_maintenance(&self.catalog, &server, self.connect_timeout).await?;
            crate::roles::drop_generation(&admin, &retired.names).await?;
            self.catalog
                .retired_generation_dropped(server.id, &retired.names.database)
                .await?;
            tracing::info!(database = %retired.names.database, "retired generation dropped after its grace period");
        }
        Ok(())
    }

    /// Every `schedule_every_secs` until `cancel` (unless 0): one replica at a time backs
    /// up the tenants their plan says are due and applies retention.
    pub async fn schedule_loop(self, cancel: CancellationToken) {
        if self.cfg.schedule_every_secs == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(self.cfg.schedule_every_secs)) => {}
            }
            if let Err(e) = self.scheduled_round(&cancel).await {
                tracing::warn!(error = %e, "scheduled backups failed");
            }
        }
    }

    async fn scheduled_round(&self, cancel: &CancellationToken) -> Result<()> {
        // One replica schedules at a time (a session lock: released if it dies).
        let lock = self.catalog.dedicated().await?;
        let held: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SCHEDULE_LOCK])
            .await?
            .get(0);
        if !held {
            return Ok(());
        }
        let mut jobs = tokio::task::JoinSet::new();
        for due in self.catalog.overdue_backups().await? {
            let me = self.clone();
            jobs.spawn(async move {
                let Some(t) = me.catalog.tenant_by_id(due.tenant_id).await? else {
                    return Ok(());
                };
                let b = me.backup_tenant(&t, "scheduled").await?;
                if b.state != tenant_model::BackupState::Ok {
                    tracing::warn!(tenant = %t.slug, backup = b.id, error = b.error.as_deref().unwrap_or(""), "scheduled backup failed");
                }
                Ok::<_, Error>(())
            });
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Shutting down: let the running backups end on their own terms.
                    while jobs.join_next().await.is_some() {}
                    return Ok(());
                }
                next = jobs.join_next() => match next {
                    None => break,
                    Some(Ok(Err(e))) => tracing::warn!(error = %e, "scheduled backup not taken"),
                    Some(_) => {}
                },
            }
        }
        if self.verification_due().await? {
            for id in self
                .catalog
                .backups_to_verify(i64::from(self.cfg.verify_sample))
                .await?
            {
                if let Err(e) = self.verify(id).await {
                    tracing::warn!(backup = id, error = %e, "cannot verify a backup");
                }
            }
        }
        if self.catalog_due().await? {
            let b = self.backup_catalog("scheduled").await?;
            if b.state != tenant_model::BackupState::Ok {
                tracing::warn!(
                    backup = b.id,
                    error = b.error.as_deref().unwrap_or(""),
                    "scheduled catalog backup failed"
                );
            }
        }
        self.apply_retention().await
    }

    /// Whether the last verification is older than `verify_every_secs`.
    async fn verification_due(&self) -> Result<bool> {
        if self.cfg.verify_every_secs == 0 {
            return Ok(false);
        }
        let now_ms = i64::try_from(caller_auth::now_secs()).unwrap_or(i64::MAX) * 1000;
        let every_ms = i64::try_from(self.cfg.verify_every_secs * 1000).unwrap_or(i64::MAX);
        Ok(self
            .catalog
            .last_verification_ms()
            .await?
            .is_none_or(|last| now_ms - last > every_ms))
    }

    /// Whether the catalog's newest good backup is older than `catalog_every_secs`.
    async fn catalog_due(&self) -> Result<bool> {
        if self.cfg.catalog_every_secs == 0 {
            return Ok(false);
        }
        let newest = self
            .catalog
            .backups(None, 1)
            .await?
            .into_iter()
            .find(|b| b.state == tenant_model::BackupState::Ok);
        let age_ms = |b: &BackupRecord| {
            i64::try_from(caller_auth::now_secs()).unwrap_or(i64::MAX) * 1000 - b.started_ms
        };
        Ok(newest.is_none_or(|b| {
            age_ms(&b) > i64::try_from(self.cfg.catalog_every_secs * 1000).unwrap_or(i64::MAX)
        }))
    }

    /// Deletes the backups each tenant's plan no longer keeps (object first, then row).
    pub async fn apply_retention(&self) -> Result<()> {
        for tenant in self.catalog.tenants_with_backups().await? {
            for (id, object) in self.catalog.backups_past_retention(tenant).await? {
                delete_object(&self.store, &object).await?;
                self.catalog.delete_backup_row(id).await?;
                tracing::info!(tenant, backup = id, "backup past retention deleted");
            }
        }
        let kept = self.cfg.catalog_keep as usize;
        for old in self
            .catalog
            .backups(None, 1000)
            .await?
            .into_iter()
            .filter(|b| b.state == tenant_model::BackupState::Ok)
            .skip(kept)
        {
            delete_object(&self.store, &old.object).await?;
            self.catalog.delete_backup_row(old.id).await?;
        }
        self.catalog.prune_failed_backups(7).await?;
        Ok(())
    }

    /// Rewrites every good backup's key object with the key as the catalog now seals it
    /// (after `tenantctl rekey`), so the store stays openable with the current master key.
    pub async fn reseal_key_objects(&self) -> Result<usize> {
        let mut n = 0;
        for (id, object) in self.catalog.good_backup_objects().await? {
            if let Some(b) = self.catalog.backup(id).await? {
                self.store.put(&key_object(&object), b.sealed_key).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Backs up one tenant; the finished (or failed) row.
    pub async fn backup_tenant(
        &self,
        tenant: &TenantRecord,
        reason: &'static str,
    ) -> Result<BackupRecord> {
        self.jobs
            .time("backup", self.backup_tenant_job(tenant, reason))
            .await
    }

    async fn backup_tenant_job(
        &self,
        tenant: &TenantRecord,
        reason: &'static str,
    ) -> Result<BackupRecord> {
        if !matches!(tenant.status, Status::Active | Status::Suspended) {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}: only active or suspended tenants are backed up",
                tenant.slug,
                tenant.status.as_str()
            )));
        }
        let names = tenant.require_names()?;
        let server = self
            .catalog
            .server_by_id(tenant.server_id)
            .await?
            .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
        let _global = self
            .global
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        let server_slots = {
            let mut map = self.per_server.lock().await;
            Arc::clone(
                map.entry(server.id)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_server))),
            )
        };
        let _server = server_slots
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;

        let owner_password = self.catalog.owner_password(tenant)?;
        let source = Source {
            conninfo: self.conninfo((&server.host, server.port), &names.owner, &tenant.database),
            password: owner_password.clone(),
        };
        let connect = dbserver::connect_login(
            &self.catalog,
            &server,
            (&names.owner, &owner_password),
            &tenant.database,
            dbserver::SearchPath::CatalogOnly,
            self.connect_timeout,
        );
        let record = NewBackup {
            tenant_id: Some(tenant.id),
            kind: BackupKind::Tenant,
            reason,
            object: format!("tenants/{}/{}", tenant.id, object_name()),
            sealed_key: Vec::new(),
            versions: (tenant.schema_version, tenant.sector_schema_version),
            replica: self.replica.clone(),
        };
        self.take(record, source, connect).await
    }

    /// Backs up the catalog itself (every credential, sealed with the master key) to the
    /// same store; the finished (or failed) row.
    pub async fn backup_catalog(&self, reason: &'static str) -> Result<BackupRecord> {
        self.jobs
            .time("catalog_backup", self.backup_catalog_job(reason))
            .await
    }

    async fn backup_catalog_job(&self, reason: &'static str) -> Result<BackupRecord> {
        let cfg = self.catalog.pg_config();
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => {
                return Err(Error::FailedPrecondition(
                    "the catalog must be reached over TCP to be backed up".into(),
                ))
            }
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let database = cfg.get_dbname().unwrap_or(&user).to_string();
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let _global = self
            .global
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        let source = Source {
            conninfo: self.conninfo((&host, port), &user, &database),
            password,
        };
        let catalog = self.catalog.clone();
        let connect = async move { catalog.dedicated().await };
        let record = NewBackup {
            tenant_id: None,
            kind: BackupKind::Catalog,
            reason,
            object: format!("catalog/{}", object_name()),
            sealed_key: Vec::new(),
            versions: (0, 0),
            replica: self.replica.clone(),
        };
        self.take(record, source, connect).await
    }

    /// Records, dumps, seals and stores one backup; the finished (or failed) row.
    async fn take(
        &self,
        mut record: NewBackup,
        source: Source,
        connect: impl std::future::Future<Output = Result<tokio_postgres::Client>>,
    ) -> Result<BackupRecord> {
        let key = stream::new_data_key();
        record.sealed_key = self
            .catalog
            .secrets()
            .seal(
                &base64::engine::general_purpose::STANDARD.encode(key),
                &key_context(&record.object),
            )
            .map_err(|e| Error::internal("seal a backup key", e))?;
        let id = self.catalog.start_backup(&record).await?;
        let started = Instant::now();
        let result = async {
            // The sealed key beside the object: the store and the master key alone open
            // any backup, even when the catalog is lost (see `decrypt`).
            self.store
                .put(&key_object(&record.object), record.sealed_key.clone())
                .await?;
            self.dump(connect.await?, &source, &record.object, &key, id)
                .await
        }
        .await;
        let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match result {
            Ok(done) => {
                self.catalog
                    .finish_backup(id, done.bytes, &done.checksum, ms, &done.manifest)
                    .await?;
            }
            Err(e) => {
                tracing::warn!(object = %record.object, backup = id, error = %e, "backup failed");
                self.catalog.fail_backup(id, &e.to_string(), ms).await?;
                // No object was completed; its key goes too.
                if let Err(e) = delete_object(&self.store, &record.object).await {
                    tracing::warn!(backup = id, error = %e, "cannot delete a failed backup's key");
                }
            }
        }
        self.catalog
            .backup(id)
            .await?
            .ok_or_else(|| Error::Internal("backup row vanished".into()))
    }

    /// Dumps the database `snap` is connected to (a snapshot exported from it) into the
    /// store under `object`.
    async fn dump(
        &self,
        mut snap: tokio_postgres::Client,
        source: &Source,
        object: &str,
        key: &[u8; 32],
        id: i64,
    ) -> Result<Dumped> {
        let version: i32 = snap
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await?
            .get(0);
        let tx = snap
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let snapshot: String = tx
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await?
            .get(0);
        let tables = row_counts(&tx).await?;
        let pg_dump = self.tool(version, "pg_dump")?;
        let mut child = tokio::process::Command::new(&pg_dump)
            .arg("--format=custom")
            .arg("--no-password")
            .arg(format!("--snapshot={snapshot}"))
            .arg(format!("--dbname={}", source.conninfo))
            .env("PGPASSWORD", &source.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::internal("start pg_dump", e))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("pg_dump has no stdout".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Internal("pg_dump has no stderr".into()))?;
        let errors = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(16 << 10).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        });

        let mut writer = self.store.writer(object).await?;
        let streamed = async {
            let mut sealer = stream::Sealer::new(key);
            let mut hash = Sha256::new();
            let mut plain_bytes = 0u64;
            let mut buf = vec![0u8; READ];
            let mut beat = Instant::now();
            loop {
                let n = stdout
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::internal("read pg_dump", e))?;
                if n == 0 {
                    break;
                }
                plain_bytes += n as u64;
                let sealed = sealer
                    .push(&buf[..n])
                    .map_err(|e| Error::internal("seal", e))?;
                hash.update(&sealed);
                writer.write(&sealed).await?;
                if beat.elapsed() > self.beat_every() {
                    self.catalog.backup_heartbeat(id).await?;
                    beat = Instant::now();
                }
            }
            let status = child
                .wait()
                .await
                .map_err(|e| Error::internal("wait for pg_dump", e))?;
            if !status.success() {
                let detail = errors.await.unwrap_or_default();
                return Err(Error::Aborted(format!(
                    "pg_dump failed ({status}): {detail}"
                )));
            }
            let last = sealer.finish().map_err(|e| Error::internal("seal", e))?;
            hash.update(&last);
            writer.write(&last).await?;
            Ok::<_, Error>((hex::encode(hash.finalize()), plain_bytes))
        }
        .await;
        let (checksum, plain_bytes) = match streamed {
            Ok(v) => v,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let bytes = i64::try_from(writer.bytes).unwrap_or(i64::MAX);
        writer.finish().await?;
        tx.commit().await?;
        Ok(Dumped {
            bytes,
            checksum,
            manifest: serde_json::json!({
                "format": "TNBKP001",
                "server_version_num": version,
                "dump_bytes": plain_bytes,
                "tables": tables,
            }),
        })
    }

    /// A libpq connection string for pg_dump (the password travels in the environment).
    fn conninfo(&self, (host, port): (&str, u16), user: &str, database: &str) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} user={} dbname={} application_name='control-plane backup'",
            q(host),
            port,
            q(user),
            q(database)
        );
        match &self.ca_file {
            Some(ca) => s.push_str(&format!(
                " sslmode=verify-full sslrootcert={}",
                q(&ca.display().to_string())
            )),
            None => s.push_str(" sslmode=prefer"),
        }
        s
    }
}

/// How pg_dump reaches the database (the password travels in its environment).
struct Source {
    conninfo: String,
    password: String,
}

/// A new object's name: start time and a random suffix.
fn object_name() -> String {
    format!(
        "{}-{}.tnbk",
        caller_auth::now_secs(),
        hex::encode(&stream::new_data_key()[..6])
    )
}

/// What a finished dump produced.
struct Dumped {
    bytes: i64,
    checksum: String,
    manifest: serde_json::Value,
}

/// Where a backup's sealed data key is stored beside it.
pub fn key_object(object: &str) -> String {
    format!("{object}.key")
}

/// Deletes a backup's object and its key object.
pub(crate) async fn delete_object(store: &Store, object: &str) -> Result<()> {
    store.delete(object).await?;
    store.delete(&key_object(object)).await
}

/// Decrypts a stored backup object into `out` with nothing but the store and the master
/// key (disaster recovery: `control-plane decrypt-backup`). Checks every chunk as it goes.
pub async fn decrypt(
    store: &Store,
    secrets: &crate::crypto::SecretBox,
    object: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<u64> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let sealed = store.get(&key_object(object)).await?;
    let key = open_data_key(secrets, &sealed, object)
        .map_err(|e| Error::FailedPrecondition(format!("cannot open the backup's key: {e}")))?;
    let mut opener = stream::Opener::new(&key);
    let mut written = 0u64;
    let mut body = store.read(object).await?;
    while let Some(piece) = body.next().await {
        let plain = opener
            .push(&piece?)
            .map_err(|e| Error::Aborted(e.to_string()))?;
        out.write_all(&plain)
            .await
            .map_err(|e| Error::internal("write", e))?;
        written += plain.len() as u64;
    }
    let last = opener.finish().map_err(|e| Error::Aborted(e.to_string()))?;
    out.write_all(&last)
        .await
        .map_err(|e| Error::internal("write", e))?;
    out.flush().await.map_err(|e| Error::internal("write", e))?;
    Ok(written + last.len() as u64)
}

/// Opens the data key sealed (with the master key) for `object`; why not, in words.
pub fn open_data_key(
    secrets: &crate::crypto::SecretBox,
    sealed: &[u8],
    object: &str,
) -> std::result::Result<[u8; 32], String> {
    let encoded = secrets
        .open(sealed, &key_context(object))
        .map_err(|e| e.to_string())?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| "a backup key is not 32 bytes".to_string())
}

/// The associated data a backup's sealed data key is bound to.
pub fn key_context(object: &str) -> String {
    format!("backup:{object}")
}

/// Rows per table at the snapshot, `schema.table -> count`.
async fn row_counts(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let tables = tx
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' \
             AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut counts = serde_json::Map::new();
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let n: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    tenant_migrations::quote_ident(&schema),
                    tenant_migrations::quote_ident(&table)
                ),
                &[],
            )
            .await?
            .get(0);
        counts.insert(format!("{schema}.{table}"), n.into());
    }
    Ok(counts)
}
