//! Throwaway PostgreSQL servers for tests, built from the machine's own server binaries.
//!
//! Each [`PgServer`] is a fresh cluster (`initdb` into a temporary directory) on a free
//! loopback port with password (SCRAM) authentication, so role and `CONNECT` isolation is
//! enforced exactly as in production. When the tests run as root, the server runs as
//! `nobody` (PostgreSQL refuses to run as root).
//!
//! Clean-up cannot rely on `Drop` alone: servers shared by a whole test binary live in
//! statics, which are never dropped, and a test process may abort. So every postmaster is
//! started under a small supervisor shell that waits on a pipe held by the test process;
//! when the process ends for any reason the pipe closes and the supervisor stops the
//! server and deletes its directory.

mod tls;

pub use tls::{test_ca, untrusted_ca_file, TestCa};

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Superuser of every harness cluster.
pub const SUPERUSER: &str = "postgres";
/// Superuser password of every harness cluster.
pub const SUPERUSER_PASSWORD: &str = "harness-superuser-pw";

/// A running throwaway PostgreSQL server.
pub struct PgServer {
    /// Loopback port the server listens on.
    pub port: u16,
    /// Cluster directory (removed when the server stops).
    pub dir: PathBuf,
    supervisor: Mutex<Option<(Child, ChildStdin)>>,
}

/// Why a harness server could not be started.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// Directory holding `initdb`, `postgres` and `pg_ctl`: `$PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else whatever `postgres` is on `PATH`.
pub fn pg_bindir() -> Result<PathBuf, HarnessError> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .map_err(|e| err(format!("cannot look for postgres: {e}")))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&path)
        .parent()
        .filter(|_| !path.is_empty())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            err("PostgreSQL server binaries not found: install postgresql or set PG_BINDIR")
        })
}

/// Whether this process runs as root (servers then run as `nobody`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A port nobody listens on right now (the kernel's pick; a tiny race remains, which
/// [`PgServer::start`] absorbs by retrying).
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| err(e.to_string()))?
        .port();
    Ok(port)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// Creates and starts a new cluster; waits until it accepts connections.
    pub fn start() -> Result<PgServer, HarnessError> {
        Self::start_with(&[])
    }

    /// Like [`PgServer::start`], with extra server settings (`("max_connections", "2000")`)
    /// that override the harness defaults. Names and values go on the server's command line
    /// as they are: plain words and numbers only.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PgServer, HarnessError> {
        // A port picked by the kernel can be taken by someone else before postgres binds
        // it; then the whole cluster is made again on another port.
        let mut last = err("could not start postgres");
        for _ in 0..3 {
            match Self::start_once(settings) {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(settings: &[(&str, &str)]) -> Result<PgServer, HarnessError> {
        let bindir = pg_bindir()?;
        let as_root = is_root();
        let base = std::env::temp_dir().join(format!(
            "pg-harness-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let data = base.join("data");
        std::fs::create_dir_all(&base).map_err(|e| err(format!("mkdir {base:?}: {e}")))?;
        let pwfile = base.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).map_err(|e| err(e.to_string()))?;
        if as_root {
            run(Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(&base))?;
        }
        let mut initdb = wrap(as_root, &bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg("--locale=C")
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Err(e) = run(&mut initdb) {
            let _ = std::fs::remove_dir_all(&base);
            return Err(e);
        }
        // On failure the supervisor removes the directory when `spawn`'s server drops.
        let mut extra: String = match test_ca()?.install(&base) {
            Ok(ssl) => ssl,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&base);
                return Err(e);
            }
        };
        if as_root {
            run(Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(base.join("server.crt"))
                .arg(base.join("server.key")))?;
        }
        extra.extend(settings.iter().map(|(k, v)| format!(" -c {k}={v}")));
        Self::spawn(as_root, &bindir, &base, &data, free_port()?, &extra)
    }

    fn spawn(
        as_root: bool,
        bindir: &Path,
        base: &Path,
        data: &Path,
        port: u16,
        extra: &str,
    ) -> Result<PgServer, HarnessError> {
        let postgres = bindir.join("postgres");
        let runner = if as_root {
            "setpriv --reuid=nobody --regid=nogroup --clear-groups "
        } else {
            ""
        };
        // The supervisor: start postgres, then follow our stdin: `stop` stops postgres
        // (fast) keeping the cluster, `start` starts it again; when stdin closes (the test
        // process ended, however it ended) stop postgres fast and remove the cluster.
        let script = format!(
            r#"run() {{
  {runner}"{postgres}" -D "{data}" -p {port} -k "{base}" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
  -c shared_buffers=32MB -c log_min_messages=fatal{extra} >>"{base}/log" 2>&1 &
  pid=$!
}}
run
trap '' INT
while read -r cmd; do
  case "$cmd" in
    stop) [ -n "$pid" ] && {{ kill -INT $pid 2>/dev/null; wait $pid; pid=; }} ;;
    start) [ -z "$pid" ] && run ;;
  esac
done
[ -n "$pid" ] && {{ kill -INT $pid 2>/dev/null; wait $pid; }}
rm -rf "{base}"
"#,
            postgres = postgres.display(),
            data = data.display(),
            base = base.display(),
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("spawn supervisor: {e}")))?;
        let stdin = child.stdin.take().ok_or_else(|| err("supervisor stdin"))?;
        let server = PgServer {
            port,
            dir: base.to_path_buf(),
            supervisor: Mutex::new(Some((child, stdin))),
        };
        server.wait_ready(0)?;
        Ok(server)
    }

    /// Waits until *our* postmaster says it is ready in its pid file (line 4: port, line
    /// 8: status): another server answering on the same port must not pass for ours. Log
    /// lines before byte `log_from` are an earlier run's.
    fn wait_ready(&self, log_from: usize) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pidfile = self.dir.join("data").join("postmaster.pid");
        loop {
            let ready = std::fs::read_to_string(&pidfile)
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines.get(3).map(|l| l.trim()) == Some(self.port.to_string().as_str())
                        && lines.get(7).map(|l| l.trim()) == Some("ready")
                })
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            let log = log.get(log_from..).unwrap_or_default();
            if startup_failed(log) || self.exited() || Instant::now() > deadline {
                return Err(err(format!(
                    "postgres on port {} did not start: {log}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown: sessions end) keeping its cluster, as an operator
    /// stopping a database server would; [`PgServer::restart`] brings it back.
    pub fn halt(&self) -> Result<(), HarnessError> {
        self.command("stop")?;
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pidfile.exists() {
            if Instant::now() > deadline {
                return Err(err("postgres did not stop"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts a halted server again on the same port and cluster; waits until it is ready.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let log_from = std::fs::metadata(self.dir.join("log")).map_or(0, |m| m.len() as usize);
        self.command("start")?;
        self.wait_ready(log_from)
    }

    fn command(&self, cmd: &str) -> Result<(), HarnessError> {
        let mut guard = self.supervisor.lock().unwrap_or_else(|p| p.into_inner());
        let (_, stdin) = guard.as_mut().ok_or_else(|| err("server stopped"))?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .map_err(|e| err(format!("supervisor: {e}")))
    }

    fn exited(&self) -> bool {
        let mut guard = self.supervisor.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some((child, _)) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Superuser connection URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Superuser `tokio_postgres` config for `database`.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname(database);
        cfg
    }

    /// Connects as superuser to `database`; the connection task is spawned on the
    /// current runtime and ends with the client.
    pub async fn connect(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config(database).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Creates a fresh, uniquely named database and returns its name.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, tokio_postgres::Error> {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(name)
    }

    /// Stops the server now (fast shutdown) and removes its directory.
    pub fn stop(&self) {
        let taken = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut child, mut stdin)) = taken {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Whether the server's process is still running.
    pub fn is_running(&self) -> bool {
        !self.exited()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wrap(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Result<(), HarnessError> {
    let out = cmd.output().map_err(|e| err(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// One server shared by every test of a test binary, started on first use.
pub fn shared() -> &'static PgServer {
    static SHARED: std::sync::OnceLock<PgServer> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| PgServer::start().expect("the shared test PostgreSQL server must start"))
}

/// A second shared server, for placement tests that need two.
pub fn shared_second() -> &'static PgServer {
    static SECOND: std::sync::OnceLock<PgServer> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| PgServer::start().expect("the second test PostgreSQL server must start"))
}

/// The settings of a durable server (the harness's default is not: `fsync=off`).
pub const DURABLE: [(&str, &str); 3] = [
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];

/// A shared durable server (`fsync=on`), for the message pipeline's ingest databases: the
/// control plane refuses to keep its inbox anywhere else.
pub fn shared_durable() -> &'static PgServer {
    static DURABLE_SERVER: std::sync::OnceLock<PgServer> = std::sync::OnceLock::new();
    DURABLE_SERVER.get_or_init(|| {
        PgServer::start_with(&DURABLE).expect("the durable test PostgreSQL server must start")
    })
}

/// A fresh ingest database on the shared durable server: its URL.
pub async fn fresh_ingest() -> Result<String, tokio_postgres::Error> {
    let pg = shared_durable();
    let db = pg.fresh_database("ingest").await?;
    Ok(pg.url(&db))
}

/// Polls `check` every 20 ms until it holds (true) or `within` passes (false): tests wait
/// for conditions, never for fixed sleeps.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lifts every plan's limits in a control-plane catalog on `pg` (pool size, calls per
/// second, users): for tests and benchmarks that measure the router, not the plans. Run it
/// once the control plane has migrated its catalog.
pub async fn lift_plan_limits(pg: &PgServer, catalog_db: &str) -> Result<(), String> {
    let client = pg.connect(catalog_db).await.map_err(|e| e.to_string())?;
    client
        .execute(
            "UPDATE planos SET max_conexoes = 1000, chamadas_por_segundo = NULL, max_usuarios = NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether postgres's log says the server itself failed to start. A client that connects
/// while the server starts (a service reconnecting to a restarted server) is turned away
/// with a FATAL of its own ("the database system is starting up"): that is not a failure.
fn startup_failed(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("FATAL") && !l.contains("the database system is "))
}

#[cfg(test)]
mod tests {
    use super::startup_failed;

    #[test]
    fn a_client_turned_away_during_startup_is_not_a_failed_start() {
        let log = "2026-12-06 04:44:43.957 UTC [4825] FATAL:  the database system is starting up\n";
        assert!(!startup_failed(log));
        let log = "2026-12-06 04:44:43.957 UTC [4825] FATAL:  the database system is not yet accepting connections\n";
        assert!(!startup_failed(log));
    }

    #[test]
    fn the_server_failing_to_start_is_a_failed_start() {
        let log = "2026-12-06 04:44:43.957 UTC [4825] FATAL:  the database system is starting up\n\
                   2026-12-06 04:44:44.001 UTC [4801] FATAL:  could not create any TCP/IP sockets\n";
        assert!(startup_failed(log));
        assert!(!startup_failed(""));
    }
}
