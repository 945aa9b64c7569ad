//! How the control plane reaches PostgreSQL (the catalog and every database server):
//! plaintext, or TLS with the server's certificate verified against a configured CA
//! (`database_tls.ca_file`; the equivalent of libpq's `sslmode=verify-full`).

use futures_util::stream::BoxStream;
use service_kit::tls::{ClientTls, TlsError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, Error};

/// Connection security to PostgreSQL.
#[derive(Clone)]
pub enum DbTls {
    /// Plaintext (a cluster on loopback, as in the dev system).
    Off,
    /// TLS, verified against the configured CA.
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

/// Asynchronous messages (notifications) of a connection, until it closes.
pub type Messages = BoxStream<'static, Result<AsyncMessage, Error>>;

impl DbTls {
    /// From the `database_tls` setting.
    pub fn from_config(cfg: Option<&ClientTls>) -> Result<DbTls, TlsError> {
        Ok(match cfg {
            Some(c) => DbTls::Verified(c.postgres()?),
            None => DbTls::Off,
        })
    }

    /// Connects; the connection's driver task lives exactly as long as the client (it
    /// returns once the client is dropped and the socket closes).
    pub async fn connect(&self, cfg: &Config) -> Result<Client, Error> {
        match self {
            DbTls::Off => Ok(spawn(cfg.connect(tokio_postgres::NoTls).await?)),
            DbTls::Verified(tls) => Ok(spawn(cfg.connect(tls.clone()).await?)),
        }
    }

    /// Connects and hands back the connection's notifications instead of driving it in a
    /// task (for `LISTEN`); the caller polls the stream.
    pub async fn connect_listening(&self, cfg: &Config) -> Result<(Client, Messages), Error> {
        match self {
            DbTls::Off => Ok(messages(cfg.connect(tokio_postgres::NoTls).await?)),
            DbTls::Verified(tls) => Ok(messages(cfg.connect(tls.clone()).await?)),
        }
    }

    /// A deadpool manager for `cfg`.
    pub fn manager(
        &self,
        cfg: Config,
        manager: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        match self {
            DbTls::Off => {
                deadpool_postgres::Manager::from_config(cfg, tokio_postgres::NoTls, manager)
            }
            DbTls::Verified(tls) => {
                deadpool_postgres::Manager::from_config(cfg, tls.clone(), manager)
            }
        }
    }
}

fn spawn<S, T>((client, conn): (Client, Connection<S, T>)) -> Client
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    client
}

fn messages<S, T>((client, mut conn): (Client, Connection<S, T>)) -> (Client, Messages)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    (client, Box::pin(stream))
}
