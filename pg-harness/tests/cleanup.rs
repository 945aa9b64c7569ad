//! The harness never leaves a postmaster or a cluster directory behind, even when the
//! test process dies without running any destructor.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn accepting(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn a_server_serves_sql_and_stop_removes_everything() {
    let pg = pg_harness::PgServer::start().unwrap();
    let client = pg.connect("postgres").await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Password authentication is on: a wrong password is refused.
    let mut cfg = pg.config("postgres");
    cfg.password("wrong");
    assert!(cfg.connect(tokio_postgres::NoTls).await.is_err());
    let (port, dir) = (pg.port, pg.dir.clone());
    drop(client);
    pg.stop();
    assert!(!pg.is_running());
    assert!(wait_until(Duration::from_secs(10), || !dir.exists()
        && !accepting(port)));
}

/// Child half of the next test: starts a server, reports it, and aborts (no destructors).
#[test]
#[ignore = "run by aborted_processes_leave_nothing_behind in a child process"]
fn child_starts_a_server_and_aborts() {
    let Ok(out) = std::env::var("HARNESS_CHILD_OUT") else {
        return;
    };
    let pg = pg_harness::PgServer::start().unwrap();
    std::fs::write(&out, format!("{}\n{}", pg.port, pg.dir.display())).unwrap();
    std::process::abort();
}

#[test]
fn aborted_processes_leave_nothing_behind() {
    let out = std::env::temp_dir().join(format!("harness-child-{}", std::process::id()));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_starts_a_server_and_aborts",
            "--nocapture",
        ])
        .env("HARNESS_CHILD_OUT", &out)
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborted");
    let report = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let (port, dir) = report.split_once('\n').unwrap();
    let port: u16 = port.parse().unwrap();
    let dir = std::path::PathBuf::from(dir);
    assert!(
        wait_until(Duration::from_secs(15), || !dir.exists()
            && !accepting(port)),
        "postmaster on {port} or {dir:?} survived its test process"
    );
}
