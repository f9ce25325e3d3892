//! PgBouncer in transaction mode in front of the roles (`--database-url` through it,
//! `--direct-database-url` straight to PostgreSQL for LISTEN, the VACUUM task's session
//! lock and migrations): a real PgBouncer, started here with its own configuration in a
//! folder of its own, on a free port, `pool_mode = transaction`, in front of the test
//! database; then the core scenarios through it. Skipped, saying so, where the
//! `pgbouncer` program is not installed (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{database_url, play, TestApp, TestDb};
use crate::tictactoe::{table_on, Table};

/// A PgBouncer run by this test; stopped (SIGTERM, then SIGKILL) and its folder removed when
/// dropped.
struct Bouncer {
    dir: PathBuf,
    port: u16,
}

fn pgbouncer_program() -> Option<PathBuf> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Bouncer {
    /// Starts PgBouncer in front of the server `host:port`; `None` when it is not installed.
    fn start(host: &str, port: u16) -> Option<Bouncer> {
        let program = pgbouncer_program()?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postgame-pgbouncer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let my_port = listen.local_addr().unwrap().port();
        drop(listen);
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        // The settings docs/DEPLOY.md documents for postgame.
        let ini = format!(
            "[databases]\n\
             * = host={host} port={port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {my_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             admin_users = postgres\n\
             pool_mode = transaction\n\
             default_pool_size = 8\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits\n\
             server_reset_query =\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        // PgBouncer refuses to run as root: `-u` switches to `postgres`, who must be able to
        // write the log and pid files.
        let mut cmd = Command::new(&program);
        cmd.arg("-d");
        if running_as_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres", dir.to_str().unwrap()])
                .status();
            cmd.args(["-u", "postgres"]);
        }
        let status = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("pgbouncer runs");
        let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
        assert!(status.success(), "pgbouncer did not start: {log}");
        let b = Bouncer { dir, port: my_port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", my_port)).is_ok() {
                return Some(b);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pgbouncer never listened on {my_port}: {log}");
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
    }

    /// `SHOW <what>` on the admin console, as rows of columns.
    fn show(&self, what: &str) -> Vec<Vec<String>> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-AtF", "\t", "pgbouncer", "-c"])
            .arg(format!("SHOW {what}"))
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "SHOW {what}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(&pid).status();
            for _ in 0..50 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-9", &pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_core_scenarios_work_through_pgbouncer_in_transaction_mode() {
    let (_db, opts) = TestDb::new().await;
    let host = opts.get_host().to_owned();
    let port = opts.get_port();
    let Some(bouncer) = tokio::task::spawn_blocking(move || Bouncer::start(&host, port))
        .await
        .unwrap()
    else {
        eprintln!(
            "SKIPPED the_core_scenarios_work_through_pgbouncer_in_transaction_mode: the \
             pgbouncer program is not installed (apt-get install pgbouncer; .ci/run does)"
        );
        return;
    };
    let direct = database_url(&opts);
    let db = opts.get_database().unwrap().to_owned();
    let pooled = format!("postgres://postgres@127.0.0.1:{}/{db}", bouncer.port);
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.db.database_url = pooled.clone();
        c.direct_database_url = Some(direct.clone());
        c.db_connections = 4;
        c.vacuum_seconds = 1.0;
    })
    .await;

    // Publish → apply → broadcast: a whole Tic Tac Toe game, seen in order by a spectator.
    let Table {
        app,
        id,
        mut x,
        mut o,
        mut spectator,
    } = table_on(app).await;
    let channel = format!("match:{id}");
    play(
        &mut x,
        &mut o,
        &id,
        &[(0, 0), (1, 3), (0, 1), (1, 4), (0, 2)],
    )
    .await;
    let mut seqs = Vec::new();
    let mut counts = Vec::new();
    loop {
        let m = spectator.message(&channel).await;
        seqs.push(m["seq"].as_i64().unwrap());
        if m["name"] == "state" {
            counts.push(m["data"]["move_count"].as_i64().unwrap());
            if m["data"]["status"] == "won" {
                assert_eq!(m["data"]["winner"], "X");
                break;
            }
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "no gap");
    let moves: Vec<i64> = counts.into_iter().skip_while(|c| *c == 0).collect();
    assert_eq!(moves, vec![1, 2, 3, 4, 5], "each move once, in order");

    // Resume: a client away for a while gets exactly what it missed.
    let last = *seqs.last().unwrap();
    drop(spectator);
    for i in 0..5 {
        x.act(&id, "chat", json!({ "text": format!("line {i}") }))
            .await;
    }
    let mut back = app.ws(&app.token("carol")).await;
    assert_eq!(
        back.subscribe(&channel, Some(last)).await["recovered"],
        true
    );
    for i in 0..5 {
        let m = back.named(&channel, "chat").await;
        assert_eq!(m["seq"], json!(last + 1 + i));
        assert_eq!(m["data"]["text"], format!("line {i}"));
    }

    // A turn timer, on the ticker: X stalls, O wins when the 1 s turn runs out.
    let timed = app
        .create_match(&app.token("alice"), "tictactoe", json!({"turn_seconds": 1}))
        .await;
    for c in [&mut x, &mut o] {
        c.subscribe(&format!("match:{timed}"), Some(0)).await;
        c.act(&timed, "join", json!({})).await;
    }
    let s = o
        .state_until(&timed, |s| {
            s["status"] != "waiting" && s["status"] != "playing"
        })
        .await;
    assert_eq!(s["status"], "won", "{s}");
    assert_eq!(s["winner"], "O", "X ran out of time: {s}");

    // A Pong match against the bot ticking at 20 Hz: `latest` frames with rising ticks.
    let pong = app
        .create_match(&app.token("dave"), "pong", json!({"bot": true}))
        .await;
    let mut p = app.ws(&app.token("dave")).await;
    p.subscribe(&format!("match:{pong}"), Some(0)).await;
    p.act(&pong, "join", json!({})).await;
    let mut ticks = Vec::new();
    while ticks.len() < 20 {
        let f = p.recv_where(|v| v["op"] == "latest").await;
        if f["data"]["status"] == "playing" {
            ticks.push(f["data"]["tick"].as_i64().unwrap());
        }
    }
    assert!(
        ticks.windows(2).all(|w| w[1] > w[0]),
        "ticks only go up: {ticks:?}"
    );

    // The traffic did go through PgBouncer: its statistics count the transactions.
    let xacts: i64 = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            let stats = bouncer.show("STATS");
            let row = stats.into_iter().find(|r| r[0] == db);
            drop(bouncer);
            row.map(|r| r[1].parse().unwrap()).unwrap_or(0)
        }
    })
    .await
    .unwrap();
    eprintln!("transactions through PgBouncer: {xacts}");
    assert!(
        xacts > 100,
        "only {xacts} transactions went through PgBouncer"
    );
    app.shutdown().await;
}
