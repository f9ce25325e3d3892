//! The first five minutes, with the real binary: `postgame serve` where nothing answers at
//! the default database URL starts a private cluster (and reuses it, and stops it on
//! SIGTERM); a URL the user set that nothing answers at is a short message, not a
//! backtrace; `--version`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_postgame");
/// initdb and a first start on a busy machine.
const START_WAIT: Duration = Duration::from_secs(120);

/// A TCP port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A fresh folder under the system's temp folder (reachable by the `postgres` user when
/// the tests run as root), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "postgame-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Stop a cluster a failed test left running, then remove the folder.
        let data = self.0.join("pgdata");
        if data.join("postmaster.pid").exists() {
            let _ = std::process::Command::new(BIN)
                .args(["cluster", "stop", "--data-dir"])
                .arg(&data)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `postgame serve` as a new user runs it: no DATABASE_URL, the default URL pointing at
/// `default_port` (where nothing listens), data in `data_dir`.
fn serve_fresh(default_port: u16, data_dir: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("POSTGAME_EMBEDDED")
        .env(
            "POSTGAME_DEFAULT_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{default_port}/postgame"),
        )
        .env("POSTGAME_DB_CONNECTIONS", "4")
        .env("POSTGAME_WORKERS", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The server's log (stderr), collected line by line in the background.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>, Arc<Notify>);

impl Log {
    fn collect(child: &mut Child) -> Self {
        let log = Log::default();
        let stderr = child.stderr.take().unwrap();
        let to = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                to.0.lock().unwrap().push(line);
                to.1.notify_waiters();
            }
            to.1.notify_waiters();
        });
        log
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits for the line that says where the server listens; returns that address.
    async fn listening_addr(&self) -> String {
        let found = tokio::time::timeout(START_WAIT, async {
            loop {
                let woken = self.1.notified();
                let addr = self.0.lock().unwrap().iter().find_map(|l| {
                    l.split("postgame is listening on http://")
                        .nth(1)
                        .map(|a| a.trim_end_matches('/').to_owned())
                });
                if let Some(a) = addr {
                    return a;
                }
                woken.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("the server did not start; its log:\n{}", self.text()))
    }
}

/// SIGTERM, then the exit status.
async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap()
}

#[tokio::test]
async fn a_fresh_start_without_a_database_runs_a_private_cluster_reuses_it_and_stops_it() {
    let tmp = TempDir::new("first-run");
    let data = tmp.0.join("pgdata");
    let port = free_port();
    let http = reqwest::Client::new();

    // First start: the cluster is created.
    let mut first = serve_fresh(port, &data);
    let log = Log::collect(&mut first);
    let addr = log.listening_addr().await;
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready");
    let lines = log.text();
    assert!(
        lines.contains("creating a private PostgreSQL cluster"),
        "the first start creates the cluster:\n{lines}"
    );
    assert!(
        lines.contains(&format!("127.0.0.1:{port}")),
        "the log says nothing answered at the default:\n{lines}"
    );
    let using: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("using database"))
        .collect();
    assert_eq!(using.len(), 1, "one line names the database:\n{lines}");
    assert!(using[0].contains("\"postgame\"") && using[0].contains("private"));
    assert!(data.join("PG_VERSION").exists());
    assert!(
        data.join(".s.PGSQL.5432").exists(),
        "the socket is in the data folder"
    );
    let conf = std::fs::read_to_string(data.join("postgame.conf")).unwrap();
    assert!(
        conf.contains("listen_addresses = ''"),
        "no TCP port: {conf}"
    );

    // Something to find again: a guest and a match.
    let token: Value = crate::helpers::guest(&http, &format!("http://{addr}")).await;
    let token = token["token"].as_str().unwrap().to_owned();
    let created: Value = http
        .post(format!("http://{addr}/v1/matches"))
        .bearer_auth(&token)
        .json(&json!({"game": "tictactoe"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let match_id = created["id"].as_str().unwrap().to_owned();

    // SIGTERM stops the server and the cluster it started.
    let status = terminate(&mut first).await;
    assert!(status.success(), "a clean exit: {status:?}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "the private cluster was stopped"
    );

    // Second start: the same cluster, with what the first run stored.
    let mut second = serve_fresh(port, &data);
    let log = Log::collect(&mut second);
    let addr = log.listening_addr().await;
    let lines = log.text();
    assert!(
        !lines.contains("creating a private PostgreSQL cluster"),
        "the second start reuses the cluster:\n{lines}"
    );
    let got = http
        .get(format!("http://{addr}/v1/matches/{match_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status().as_u16(),
        200,
        "the match of the first run is kept"
    );
    assert!(terminate(&mut second).await.success());
    assert!(!data.join("postmaster.pid").exists());
}

#[tokio::test]
async fn an_unreachable_database_the_user_set_is_one_clear_message_without_a_backtrace() {
    let port = free_port();
    let tmp = TempDir::new("unreachable");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.0.join("pgdata"))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/postgame"),
        )
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "names the address: {err}"
    );
    assert!(err.contains("start PostgreSQL"), "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(err.contains("docker compose up"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.lines().count() <= 4, "short: {err}");
    assert!(
        !tmp.0.join("pgdata").exists(),
        "a URL the user set never falls back to a private cluster"
    );
}

#[tokio::test]
async fn version_prints_the_package_version() {
    let out = Command::new(BIN).arg("--version").output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("postgame {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn doctor_says_what_is_wrong_and_exits_non_zero_until_it_is_fixed() {
    let (_db, opts) = crate::helpers::TestDb::new().await;
    let url = crate::helpers::database_url(&opts);
    let doctor = || {
        Command::new(BIN)
            .args(["doctor", "--database-url", &url])
            .env("NO_COLOR", "1")
            .output()
    };
    let out = doctor().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("PROBLEM") && text.contains("no migrations applied"),
        "{text}"
    );

    let app = crate::helpers::TestApp::spawn(opts).await;
    let out = doctor().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let embedded = postgame::store::MIGRATOR.iter().count();
    assert!(
        text.contains(&format!("all {embedded} of this binary")),
        "{text}"
    );
    assert!(
        text.contains("\"postgame gateway+worker+ticker\""),
        "the running server: {text}"
    );
    assert!(!text.contains("PROBLEM"), "{text}");
    app.shutdown().await;
}
