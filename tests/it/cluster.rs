//! A private PostgreSQL cluster for tests that stop, crash or restart Postgres: created
//! with `initdb` in a temporary directory, owned by the `postgres` user (when the tests
//! run as root), on a port and socket directory of its own. Never the server of
//! `DATABASE_URL`. Stopped (immediately) and deleted when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Cluster {
    dir: PathBuf,
    pub port: u16,
    max_connections: u32,
}

/// Runs a PostgreSQL program as `postgres` when we are root (initdb refuses root).
fn pg(program: &str, args: &[&str]) -> bool {
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Creates and starts a cluster (40 connections at most).
    pub fn start() -> Cluster {
        Self::start_with(40)
    }

    /// Creates and starts a cluster that takes `max_connections`.
    pub fn start_with(max_connections: u32) -> Cluster {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postgame-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres", dir.to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
        let data = dir.join("data");
        assert!(
            pg(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync"
                ]
            ),
            "initdb of a private cluster in {dir:?}"
        );
        let c = Cluster {
            dir,
            port: free_port(),
            max_connections,
        };
        c.resume();
        c
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the (stopped) cluster again, waiting until it accepts connections.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={} -c fsync=off",
            self.port,
            self.dir.display(),
            self.max_connections
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        assert!(
            pg(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start"
                ]
            ),
            "the private cluster starts (log in {log:?})"
        );
    }

    /// Stops the cluster at once, as a crash would (`-m immediate`: no checkpoint, no
    /// WAL flush; recovery runs at the next start).
    pub fn crash(&self) {
        let data = self.dir.join("data");
        pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
