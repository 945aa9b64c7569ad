//! Group commit: deliveries that arrive while earlier commits are in flight are written
//! together, in one statement and one commit (one WAL flush for all of them).

use super::{is_data_error, Inbox, InboxError, Submission};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const INSERT: &str = "INSERT INTO inbox (empresa_id, servidor, fonte, numero, lote, mensagens) \
     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])";

/// Commits queued deliveries until `cancel` fires; then finishes the commits in flight and
/// answers what is still queued with [`InboxError::ShuttingDown`].
pub(crate) async fn run(
    inbox: Arc<Inbox>,
    mut queue: mpsc::Receiver<Submission>,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(inbox.cfg.writers));
    let mut inflight = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            s = queue.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < inbox.cfg.group_rows {
            match queue.try_recv() {
                Ok(s) => {
                    rows += s.rows.len();
                    group.push(s);
                }
                Err(_) => break,
            }
        }
        let inbox = Arc::clone(&inbox);
        inflight.spawn(async move {
            commit_group(&inbox, group).await;
            drop(permit);
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    queue.close();
    while let Ok(s) = queue.try_recv() {
        let _ = s.done.send(Err(InboxError::ShuttingDown));
    }
}

/// Writes a group and answers each delivery in it. If the database refuses the group's
/// data, each delivery is written on its own so one cannot fail the others.
async fn commit_group(inbox: &Inbox, group: Vec<Submission>) {
    match insert(inbox, &group).await {
        Ok(()) => finish(inbox, group, Ok(())),
        Err(Some(e)) if group.len() > 1 && is_data_error(&e) => {
            for s in group {
                let r = insert(inbox, std::slice::from_ref(&s)).await;
                finish(inbox, vec![s], r.map_err(|_| InboxError::Unavailable));
            }
        }
        Err(_) => finish(inbox, group, Err(InboxError::Unavailable)),
    }
}

fn finish(inbox: &Inbox, group: Vec<Submission>, result: Result<(), InboxError>) {
    for s in group {
        if result.is_ok() {
            for r in &s.rows {
                inbox.wake(r.tenant_id, super::Wake::Rows);
            }
        }
        let _ = s.done.send(result.clone());
    }
}

/// One statement for the whole group (`None`: no connection).
async fn insert(inbox: &Inbox, group: &[Submission]) -> Result<(), Option<tokio_postgres::Error>> {
    let rows = group.iter().flat_map(|s| s.rows.iter());
    let n = group.iter().map(|s| s.rows.len()).sum();
    let (mut ids, mut servers, mut sources, mut numbers, mut batches, mut counts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in rows {
        ids.push(r.tenant_id);
        servers.push(r.server.as_str());
        sources.push(r.source);
        numbers.push(r.phone.as_str());
        batches.push(r.batch.as_str());
        counts.push(r.messages);
    }
    let conn = inbox.connection(|c| &c.writer).await.map_err(|_| None)?;
    let stmt = conn.prepare_cached(INSERT).await.map_err(Some)?;
    conn.execute(
        &stmt,
        &[&ids, &servers, &sources, &numbers, &batches, &counts],
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, rows = n, "cannot write deliveries to the inbox");
        Some(e)
    })?;
    Ok(())
}
