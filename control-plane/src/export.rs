//! Data portability: everything a tenant's database holds, in a documented, stable form,
//! streamed (`tenantctl export`).
//!
//! Every table of the tenant schema (`public`: leads, conversas, mensagens,
//! produtos_catalogo, configuracoes and the sector's own tables; not the migration
//! history), in name order, each ordered by its first column, all read in one snapshot,
//! logged in as the tenant's DML-only login role. Columns are the tenant schema's
//! (`tenant-migrations/migrations`). JSON lines: `{"table": NAME, "row": {COLUMN: VALUE}}`
//! (PostgreSQL's own `row_to_json`); CSV: one document per table with a header row
//! (PostgreSQL's `COPY ... (FORMAT csv, HEADER)`).

use crate::catalog::{Catalog, TenantRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use futures_util::{pin_mut, StreamExt};
use proto::control::v1 as pb;
use std::time::Duration;
use tenant_migrations::quote_ident;
use tokio::sync::mpsc::Sender;

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 << 10;

/// How the rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// Streams a tenant's data into `out` until done or `out` closes (the client went away).
pub async fn export(
    catalog: &Catalog,
    tenant: &TenantRecord,
    format: Format,
    connect_timeout: Duration,
    out: &Sender<Result<pb::ExportChunk, tonic::Status>>,
) -> Result<()> {
    let server = catalog
        .server_by_id(tenant.server_id)
        .await?
        .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
    let password = catalog.tenant_password(tenant)?;
    let mut client = dbserver::connect_login(
        catalog,
        &server,
        (&tenant.role, &password),
        &tenant.database,
        dbserver::SearchPath::CatalogOnly,
        connect_timeout,
    )
    .await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let tables: Vec<String> = tx
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
             AND c.relname NOT LIKE 'refinery\\_schema\\_history%' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        let source = format!("SELECT * FROM public.{} ORDER BY 1", quote_ident(&table));
        let mut buf = Vec::with_capacity(CHUNK);
        let send = |buf: Vec<u8>| {
            let chunk = pb::ExportChunk {
                table: table.clone(),
                data: buf,
            };
            async move { out.send(Ok(chunk)).await.is_ok() }
        };
        match format {
            Format::Jsonl => {
                let rows = tx
                    .query_raw(
                        &format!(
                            "SELECT pg_catalog.json_build_object('table', $1::text, 'row', \
                             pg_catalog.row_to_json(x))::text FROM ({source}) x"
                        ),
                        [&table],
                    )
                    .await?;
                pin_mut!(rows);
                while let Some(row) = rows.next().await {
                    let line: String = row?.get(0);
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    if buf.len() >= CHUNK && !send(std::mem::take(&mut buf)).await {
                        return Ok(());
                    }
                }
            }
            Format::Csv => {
                let copy = tx
                    .copy_out(&format!(
                        "COPY ({source}) TO STDOUT WITH (FORMAT csv, HEADER)"
                    ))
                    .await?;
                pin_mut!(copy);
                while let Some(data) = copy.next().await {
                    buf.extend_from_slice(&data?);
                    if buf.len() >= CHUNK && !send(std::mem::take(&mut buf)).await {
                        return Ok(());
                    }
                }
            }
        }
        if !buf.is_empty() && !send(buf).await {
            return Ok(());
        }
    }
    tx.commit().await?;
    Ok(())
}
