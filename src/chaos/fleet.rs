//! The N × N × N deployment: 2 gateway, 3 worker and 2 ticker processes (the real
//! `postgame` binary, separate OS processes) on one database, with recording clients
//! playing Tic Tac Toe (moves, chat, stalls that the turn timer ends, rematches) and Pong
//! through both gateways, then quiesced and checked against every guarantee of the design.
//!
//! Shared by `postgame chaos` (which injects faults between [`Fleet::start`] and
//! [`Fleet::finish`]), `postgame bench e2e --processes` (which measures its own players
//! beside these clients) and the integration test of the N × N × N deployment (no faults;
//! the clients hop between the gateways on their own, resuming from their last seq).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::{self, Findings};
use super::driver::{self, Client, Kind, Record, Shared, Ws};
use super::supervisor::{Common, Supervisor};
use super::Fault;
use crate::game::Registry;
use crate::gateway::auth::Auth;

/// Gateway processes.
pub const GATEWAYS: usize = 2;
/// Worker processes.
pub const WORKERS: usize = 3;
/// Ticker processes.
pub const TICKERS: usize = 2;
/// How long quiescing may take (every publish acked, the queue drained) before the run
/// counts as stuck.
const QUIESCE_LIMIT: Duration = Duration::from_secs(90);

/// A client's task: its record and, when stopped (not left), its live connection.
type ClientTask = JoinHandle<(Record, Option<Ws>)>;

/// What a fleet runs with.
pub struct FleetConfig {
    /// The `postgame` binary the role processes run.
    pub exe: PathBuf,
    /// The database, migrated here.
    pub database_url: String,
    /// The processes' logs (`gateway-1.log`, …) go here.
    pub log_dir: PathBuf,
    /// The token secret of every process.
    pub secret: String,
    /// The processes' `--lease-seconds`.
    pub lease_seconds: f64,
    /// The processes' `--presence-timeout-seconds`.
    pub presence_timeout_seconds: f64,
    /// The processes' `--db-connections`.
    pub db_connections: u32,
    /// Tic Tac Toe matches (two recording players each, and the probes' chat).
    pub tictactoe: usize,
    /// Tic Tac Toe `turn_seconds`.
    pub turn_seconds: u32,
    /// Pong matches against the bot (one recording player each).
    pub pong: usize,
    /// Seeds the clients' choices.
    pub seed: u64,
    /// Mean seconds between a client's moves to the other gateway (it closes its
    /// connection, reconnects there and resubscribes from its last seq); `None`: a client
    /// moves only when its connection fails.
    pub hop: Option<Duration>,
}

/// A running fleet: its processes and its recording clients.
pub struct Fleet {
    pub sup: Supervisor,
    pub common: Common,
    pub shared: Arc<Shared>,
    /// A small pool of the harness's own on the fleet's database.
    pub pool: sqlx::PgPool,
    auth: Auth,
    started_wall: chrono::DateTime<chrono::Utc>,
    lease_seconds: f64,
    turn_seconds: u32,
    presence_timeout_seconds: f64,
    stop: CancellationToken,
    clients: Vec<(CancellationToken, ClientTask)>,
}

/// What a finished fleet saw and what the checks found.
pub struct Outcome {
    pub records: Vec<Record>,
    pub findings: Findings,
    /// Exits of role processes that no fault caused.
    pub exits: u32,
}

impl Fleet {
    /// Migrates the database, starts every process, waits for the gateways to listen,
    /// creates the matches and starts their clients.
    pub async fn start(cfg: FleetConfig) -> anyhow::Result<Self> {
        if cfg.tictactoe == 0 {
            bail!("a fleet needs at least one Tic Tac Toe match (the probes chat in the first)");
        }
        crate::setup::database_ready(&cfg.database_url).await?;
        let pool = crate::store::pool_connect(&cfg.database_url, 4, "postgame fleet").await?;
        crate::store::migrate(&pool).await?;
        let gateways: Vec<SocketAddr> = (0..GATEWAYS)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?;
        let common = Common {
            exe: cfg.exe.clone(),
            database_url: cfg.database_url.clone(),
            secret: cfg.secret.clone(),
            lease_seconds: cfg.lease_seconds,
            presence_timeout_seconds: cfg.presence_timeout_seconds,
            db_connections: cfg.db_connections,
            log_dir: cfg.log_dir.clone(),
        };
        let sup = Supervisor::start(&common, &gateways, WORKERS, TICKERS).await?;
        for addr in &gateways {
            if let Err(e) = wait_listening(*addr).await {
                sup.shutdown().await;
                return Err(e);
            }
        }
        let games = Registry::builtin();
        let ttt = games
            .get(crate::game::tictactoe::NAME)
            .context("tictactoe is built in")?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            gateways: gateways.clone(),
            pool: pool.clone(),
            unacked: AtomicI64::new(0),
            quiesce: CancellationToken::new(),
        });
        let started_wall = chrono::Utc::now();
        let mut clients = Vec::new();
        let mut first_match = String::new();
        for m in 0..cfg.tictactoe {
            let config = json!({"turn_seconds": cfg.turn_seconds, "reconnect_seconds": 30});
            let (info, _) = crate::matches::match_create(&pool, ttt.as_ref(), &config)
                .await
                .map_err(|e| anyhow::anyhow!("creating a match: {e}"))?;
            let id = info.id.to_string();
            if m == 0 {
                first_match = id.clone();
            }
            for side in ["a", "b"] {
                clients.push((format!("ttt-{m}-{side}"), Kind::TicTacToe, id.clone()));
            }
        }
        for p in 0..cfg.pong {
            let id = driver::new_pong_match(&shared)
                .await
                .context("creating a Pong match")?;
            clients.push((format!("pong-{p}"), Kind::Pong, id));
        }
        for g in 0..GATEWAYS {
            clients.push((
                format!("probe-{}", g + 1),
                Kind::Probe(g),
                first_match.clone(),
            ));
        }
        let auth = Auth::new(&cfg.secret);
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for (i, (name, kind, match_id)) in clients.into_iter().enumerate() {
            let token = auth.issue(&name, None, None, chrono::Duration::hours(24)).0;
            let leave = CancellationToken::new();
            let client = Client {
                name,
                token,
                kind,
                match_id,
                seed: cfg.seed.wrapping_add(1 + i as u64),
                hop: cfg.hop,
                leave: leave.clone(),
                stop: stop.clone(),
            };
            let task = tokio::spawn(driver::run(client, Arc::clone(&shared)));
            handles.push((leave, task));
        }
        Ok(Self {
            sup,
            common,
            shared,
            pool,
            auth,
            started_wall,
            lease_seconds: cfg.lease_seconds,
            turn_seconds: cfg.turn_seconds,
            presence_timeout_seconds: cfg.presence_timeout_seconds,
            stop,
            clients: handles,
        })
    }

    /// The gateways' addresses.
    pub fn gateways(&self) -> &[SocketAddr] {
        &self.shared.gateways
    }

    /// A token for `client`, signed with the fleet's secret.
    pub fn token(&self, client: &str) -> String {
        self.auth
            .issue(client, None, None, chrono::Duration::hours(24))
            .0
    }

    /// Quiesces (no new actions; every publish acknowledged; the queue drained; the last
    /// turn timers fired), has every other client leave, checks every guarantee (`faults`
    /// widen the bounds they excuse) and presence, and stops the processes.
    pub async fn finish(mut self, faults: &[Fault]) -> anyhow::Result<Outcome> {
        let shared = Arc::clone(&self.shared);
        let pool = self.pool.clone();
        shared.quiesce.cancel();
        let mut stuck = Vec::new();
        let deadline = Instant::now() + QUIESCE_LIMIT;
        while shared.unacked.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if shared.unacked.load(Ordering::Relaxed) > 0 {
            stuck.push(format!(
                "{} publishes still unacknowledged {} s after the clients stopped acting",
                shared.unacked.load(Ordering::Relaxed),
                QUIESCE_LIMIT.as_secs()
            ));
        }
        wait_drained(&pool, deadline).await;
        // Let the last broadcasts (and turn timers) reach everyone.
        tokio::time::sleep(Duration::from_secs_f64(
            self.lease_seconds + f64::from(self.turn_seconds) + 2.0,
        ))
        .await;
        wait_drained(&pool, Instant::now() + QUIESCE_LIMIT).await;
        let restarted = self.sup.restart_exited(&self.common.exe)?;
        if !restarted.is_empty() {
            println!("exited on their own: {restarted:?}");
        }

        // Presence: every other client leaves; the others stay connected, their
        // connections held open (answering pings) until the checks are done: the presence
        // rows and the players' connected flags must then show exactly those connections.
        let mut records: Vec<Record> = Vec::new();
        let mut remaining = Vec::new();
        for (i, (leave, task)) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            if i % 2 == 1 {
                leave.cancel();
                records.push(task.await.context("a client task panicked")?.0);
            } else {
                remaining.push(task);
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(self.presence_timeout_seconds + 2.0)).await;
        wait_drained(&pool, Instant::now() + QUIESCE_LIMIT).await;
        self.stop.cancel();
        let close = CancellationToken::new();
        let mut holds = Vec::new();
        for task in remaining {
            let (rec, ws) = task.await.context("a client task panicked")?;
            if let Some(ws) = ws {
                holds.push((
                    rec.name.clone(),
                    tokio::spawn(driver::hold(ws, close.clone())),
                ));
            }
            records.push(rec);
        }
        let live: Vec<(String, String, String)> = records
            .iter()
            .filter_map(|r| r.live.clone().map(|(c, m)| (c, m, r.name.clone())))
            .collect();
        // The last connections' `$connected` may still be on their way (a session records
        // presence after its `subscribed`): wait for the queue to drain and the rows to
        // match, at most the presence timeout and a few heartbeats.
        let settle = Instant::now();
        let settled = settle_presence(&pool, &live, self.presence_timeout_seconds + 5.0).await;
        let players: BTreeMap<String, String> = records
            .iter()
            .filter(|r| r.kind == Kind::TicTacToe)
            .map(|r| (r.name.clone(), String::new()))
            .collect();
        let bounds = check::Bounds {
            lease_seconds: self.lease_seconds,
            started: self.started_wall,
        };
        let mut findings = check::run(&pool, &records, faults, &bounds).await?;
        check::presence(&pool, &live, &players, &mut findings).await?;
        findings.count(
            "presence: ms to settle after the clients stopped",
            settle.elapsed().as_millis() as u64,
        );
        if !settled {
            stuck.push("presence did not settle after the clients stopped".to_owned());
        }
        close.cancel();
        for (name, hold) in holds {
            if !hold.await.context("a holding task panicked")? {
                stuck.push(format!(
                    "{name}: its live connection was closed by the gateway while presence was checked"
                ));
            }
        }
        for s in stuck {
            findings.violations.insert(0, s);
        }
        let exits: u32 = self.sup.procs.iter().map(|p| p.unexpected_exits).sum();
        self.sup.shutdown().await;
        pool.close().await;
        Ok(Outcome {
            records,
            findings,
            exits,
        })
    }

    /// Stops the processes without checking anything (a run that failed half-way).
    pub async fn abort(self) {
        self.stop.cancel();
        for (leave, _) in &self.clients {
            leave.cancel();
        }
        self.sup.shutdown().await;
        self.pool.close().await;
    }
}

impl Outcome {
    /// Connections the clients made, over all of them (more than the clients: they moved).
    pub fn connections(&self) -> u32 {
        self.records.iter().map(|r| r.connections).sum()
    }

    /// Prints what was checked and every violation.
    pub fn print_checks(&self) {
        for (what, n) in &self.findings.checked {
            println!("  {what}: {n}");
        }
        if self.findings.violations.is_empty() {
            println!("OK: no violation");
        } else {
            println!("VIOLATIONS: {}", self.findings.violations.len());
            for v in &self.findings.violations {
                println!("  - {v}");
            }
        }
    }
}

/// Waits until the control queue is empty (or `deadline`).
async fn wait_drained(pool: &sqlx::PgPool, deadline: Instant) {
    while Instant::now() < deadline {
        let left: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
            .fetch_one(pool)
            .await;
        if matches!(left, Ok(0)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the control queue is empty and `postgame.presence` holds exactly the `live`
/// connections (for at most `limit` seconds); false when it never did.
async fn settle_presence(
    pool: &sqlx::PgPool,
    live: &[(String, String, String)],
    limit: f64,
) -> bool {
    let expected: std::collections::BTreeSet<(String, String, String)> =
        live.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    loop {
        wait_drained(pool, deadline).await;
        if let Ok(rows) = check::presence_rows(pool).await {
            if rows == expected {
                // A row is written just before its `$connected` is enqueued: give that
                // publish time to commit, then let the workers apply it.
                tokio::time::sleep(Duration::from_secs(2)).await;
                wait_drained(pool, deadline + Duration::from_secs(30)).await;
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the gateway on {addr} never listened (see its log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
