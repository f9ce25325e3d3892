//! The processes under test: 2 gateways, 3 workers and 2 tickers, each a `postgame serve
//! --role …` child of this process (the same binary), with its log in the run's folder.
//! Faults are done to them here: SIGKILL then a restart, SIGSTOP then SIGCONT.
//!
//! Signals: `Child::start_kill` sends SIGKILL; SIGSTOP and SIGCONT are sent by running
//! `kill -STOP|-CONT <pid>` (as the lease tests do). The crate forbids `unsafe` (so no
//! `libc::kill`), and `nix` would be a dependency for two signals whose few milliseconds of
//! process start do not matter here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Worker tasks per worker process.
const WORKER_TASKS: &str = "2";

/// One role process.
pub struct Proc {
    /// `gateway-1`, `worker-3`, …
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Exits that no fault caused (a process that gave up on its own), restarted.
    pub unexpected_exits: u32,
    /// The gateway's address, for gateways.
    pub addr: Option<SocketAddr>,
}

/// The settings every process shares.
pub struct Common {
    pub exe: PathBuf,
    pub database_url: String,
    pub secret: String,
    pub lease_seconds: f64,
    pub presence_timeout_seconds: f64,
    /// `--db-connections` of each process.
    pub db_connections: u32,
    pub log_dir: PathBuf,
}

pub struct Supervisor {
    pub procs: Vec<Proc>,
    secret: String,
}

impl Supervisor {
    /// Starts every process; `gateways` are their listen addresses.
    pub async fn start(
        common: &Common,
        gateways: &[SocketAddr],
        workers: usize,
        tickers: usize,
    ) -> anyhow::Result<Self> {
        let base = vec![
            "serve".to_owned(),
            "--database-url".to_owned(),
            common.database_url.clone(),
            "--lease-seconds".to_owned(),
            common.lease_seconds.to_string(),
            "--presence-timeout-seconds".to_owned(),
            common.presence_timeout_seconds.to_string(),
            "--poll-seconds".to_owned(),
            "0.5".to_owned(),
            "--heartbeat-seconds".to_owned(),
            "1".to_owned(),
            "--statement-timeout-seconds".to_owned(),
            "10".to_owned(),
            "--db-connections".to_owned(),
            common.db_connections.to_string(),
            // Every client runs from this host, some publish fast: no per-client limits.
            "--client-publish-burst".to_owned(),
            "0".to_owned(),
            "--client-pending-max".to_owned(),
            "0".to_owned(),
            "--conn-publish-burst".to_owned(),
            "0".to_owned(),
            "--max-connections-per-ip".to_owned(),
            "0".to_owned(),
        ];
        let mut procs = Vec::new();
        for (i, addr) in gateways.iter().enumerate() {
            let mut args = base.clone();
            args.extend(["--role", "gateway", "--listen"].map(String::from));
            args.push(addr.to_string());
            procs.push(Proc::new(
                &format!("gateway-{}", i + 1),
                args,
                common,
                Some(*addr),
            ));
        }
        for i in 0..workers {
            let mut args = base.clone();
            args.extend(["--role", "worker", "--workers", WORKER_TASKS].map(String::from));
            procs.push(Proc::new(&format!("worker-{}", i + 1), args, common, None));
        }
        for i in 0..tickers {
            let mut args = base.clone();
            args.extend(["--role", "ticker", "--tickers", "1"].map(String::from));
            procs.push(Proc::new(&format!("ticker-{}", i + 1), args, common, None));
        }
        let mut sup = Self {
            procs,
            secret: common.secret.clone(),
        };
        for i in 0..sup.procs.len() {
            sup.spawn(i, &common.exe)?;
        }
        Ok(sup)
    }

    fn spawn(&mut self, i: usize, exe: &Path) -> anyhow::Result<()> {
        let secret = self.secret.clone();
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("cannot open {}", p.log.display()))?;
        let child = Command::new(exe)
            .args(&p.args)
            .env("POSTGAME_SECRET", secret)
            .env("RUST_LOG", "warn,postgame=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", p.name))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILL, reaped, then started again.
    pub async fn kill_and_restart(
        &mut self,
        i: usize,
        exe: &Path,
        pause: Duration,
    ) -> anyhow::Result<()> {
        if let Some(mut child) = self.procs[i].child.take() {
            child.start_kill().context("SIGKILL")?;
            child.wait().await.context("reaping a killed process")?;
        }
        tokio::time::sleep(pause).await;
        self.spawn(i, exe)
    }

    /// SIGSTOP (`stop`) or SIGCONT.
    pub async fn signal(&self, i: usize, stop: bool) -> anyhow::Result<()> {
        let Some(pid) = self.procs[i].child.as_ref().and_then(Child::id) else {
            bail!("{} is not running", self.procs[i].name);
        };
        let status = Command::new("kill")
            .arg(if stop { "-STOP" } else { "-CONT" })
            .arg(pid.to_string())
            .status()
            .await
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill {} failed for {}", pid, self.procs[i].name);
        }
        Ok(())
    }

    /// Restarts every process that exited on its own; returns their names.
    pub fn restart_exited(&mut self, exe: &Path) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited {
                self.procs[i].unexpected_exits += 1;
                restarted.push(self.procs[i].name.clone());
                self.spawn(i, exe)?;
            }
        }
        Ok(restarted)
    }

    /// SIGTERM to every process, then SIGKILL to those still there after 10 s.
    pub async fn shutdown(mut self) {
        for p in &self.procs {
            if let Some(pid) = p.child.as_ref().and_then(Child::id) {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(pid.to_string())
                    .status()
                    .await;
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }
}

impl Proc {
    fn new(name: &str, args: Vec<String>, common: &Common, addr: Option<SocketAddr>) -> Self {
        Self {
            name: name.to_owned(),
            args,
            log: common.log_dir.join(format!("{name}.log")),
            child: None,
            unexpected_exits: 0,
            addr,
        }
    }
}
