//! One call's statements on a tenant connection, each bounded on the server by the call's
//! time limit.
//!
//! Calls pipelined on one connection must not stop each other: a PostgreSQL cancel request
//! stops whatever the backend runs when it arrives, which may be another call's statement.
//! So a pipelined statement's limit is the session's `statement_timeout`, set just before
//! the statement whenever it differs from the previous statement's. The `SET` and the
//! statement are put on the connection's queue together, under the connection's lock (the
//! first poll of a tokio-postgres query sends it; nothing is awaited under the lock), so no
//! other call's statement can come between them and each statement runs under its own
//! call's limit. Limits are rounded down to a ladder, so calls with similar deadlines share
//! one setting and most statements need no `SET`.

use super::manager::PgConn;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement};

/// Statement time limits used, in milliseconds (a limit is the largest at most the call's
/// remaining time; below the first, the remaining time itself).
const LADDER_MS: [u32; 17] = [
    10, 15, 25, 40, 60, 100, 150, 250, 400, 600, 1_000, 1_500, 2_500, 4_000, 6_000, 10_000, 15_000,
];
/// Longer calls get this ladder's multiples of 15 s (up to the 300 s most calls may take).
const LONG_STEP_MS: u32 = 15_000;

/// The statement time limit for a call with `remaining` time left, in milliseconds.
pub fn limit_for(remaining: Duration) -> u32 {
    let ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
    if ms >= LONG_STEP_MS {
        return ms.min(300_000) / LONG_STEP_MS * LONG_STEP_MS;
    }
    LADDER_MS
        .iter()
        .rev()
        .copied()
        .find(|&rung| rung <= ms)
        .unwrap_or(ms.max(1))
}

/// A call's view of a (possibly shared) connection: its statements run under its limit.
pub struct Db<'a> {
    conn: &'a PgConn,
    limit_ms: u32,
}

impl<'a> Db<'a> {
    /// The connection, for a call whose statements may each run `limit_ms`.
    pub fn new(conn: &'a PgConn, limit_ms: u32) -> Db<'a> {
        Db { conn, limit_ms }
    }

    /// A prepared statement for `sql` (prepared once per connection). Preparing takes the
    /// statement's locks (parse analysis opens its tables), so it runs under the call's
    /// limit too: a call past its deadline must not leave a preparation waiting on the
    /// server, nor one that waits under another call's limit.
    pub async fn prepare(&self, sql: &'static str) -> Result<Statement, Error> {
        if let Some(s) = self.conn.prepared(sql) {
            return Ok(s);
        }
        let (set, q) = self.enqueue(|c| c.prepare(sql));
        let s = finish(set, q).await?;
        self.conn.keep_prepared(sql, &s);
        Ok(s)
    }

    /// Rows of a prepared statement.
    pub async fn query(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let (set, q) = self.enqueue(|c| c.query(stmt, params));
        finish(set, q).await
    }

    /// At most one row of a prepared statement.
    pub async fn query_opt(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let (set, q) = self.enqueue(|c| c.query_opt(stmt, params));
        finish(set, q).await
    }

    /// Exactly one row of a prepared statement.
    pub async fn query_one(
        &self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let (set, q) = self.enqueue(|c| c.query_one(stmt, params));
        finish(set, q).await
    }

    /// Sends the limit (when the session has another) and the statement, one after the
    /// other with nothing between them.
    #[allow(clippy::type_complexity)]
    fn enqueue<'f, F: Future>(
        &'f self,
        statement: impl FnOnce(&'f tokio_postgres::Client) -> F,
    ) -> (
        Option<Started<impl Future<Output = Result<(), Error>> + 'f>>,
        Started<F>,
    ) {
        let mut session = self.conn.session_limit();
        let set = (*session != Some(self.limit_ms)).then(|| {
            self.conn.limit_set(&mut session, self.limit_ms);
            start(set_limit(&self.conn.client, self.limit_ms))
        });
        let q = start(statement(&self.conn.client));
        if matches!(set, Some(Started::Done(Err(_)))) {
            // Not applied (the connection is broken): set it again next time.
            *session = None;
        }
        (set, q)
    }

    /// Sets the session's limit if it has another (for a connection used exclusively).
    pub async fn apply_limit(&self) -> Result<(), Error> {
        let set = {
            let mut session = self.conn.session_limit();
            if *session == Some(self.limit_ms) {
                return Ok(());
            }
            self.conn.limit_set(&mut session, self.limit_ms);
            start(set_limit(&self.conn.client, self.limit_ms))
        };
        let r = set.finish().await;
        if r.is_err() {
            *self.conn.session_limit() = None;
        }
        r
    }
}

fn set_limit(
    client: &tokio_postgres::Client,
    ms: u32,
) -> impl Future<Output = Result<(), Error>> + '_ {
    // Built from a number only: nothing of a caller's reaches this text.
    let sql = format!("SET statement_timeout = {ms}");
    async move { client.batch_execute(&sql).await }
}

async fn finish<S, F, T>(set: Option<Started<S>>, q: Started<F>) -> Result<T, Error>
where
    S: Future<Output = Result<(), Error>>,
    F: Future<Output = Result<T, Error>>,
{
    if let Some(set) = set {
        set.finish().await?;
    }
    q.finish().await
}

/// A future polled once, so that what it sends on its first poll is sent now.
enum Started<F: Future> {
    Pending(Pin<Box<F>>),
    Done(F::Output),
}

fn start<F: Future>(f: F) -> Started<F> {
    let mut f = Box::pin(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Started::Done(out),
        Poll::Pending => Started::Pending(f),
    }
}

impl<F: Future> Started<F> {
    async fn finish(self) -> F::Output {
        match self {
            Started::Pending(f) => f.await,
            Started::Done(out) => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_down_to_the_ladder() {
        let ms = |n| limit_for(Duration::from_millis(n));
        assert_eq!(ms(0), 1);
        assert_eq!(ms(7), 7);
        assert_eq!(ms(10), 10);
        assert_eq!(ms(299), 250);
        assert_eq!(ms(4_999), 4_000);
        assert_eq!(ms(14_999), 10_000);
        assert_eq!(ms(29_999), 15_000);
        assert_eq!(ms(30_000), 30_000);
        assert_eq!(ms(10_000_000), 300_000);
        for n in [1, 12, 99, 250, 777, 5_000, 40_000] {
            assert!(ms(n) <= n as u32, "{n}");
        }
    }
}
