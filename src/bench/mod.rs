//! `postgame bench <scenario>`: load generators built into the binary (like `pgbench`).
//! Each scenario creates its own database on the server of `DATABASE_URL` (dropped at the
//! end; `--in-place` uses that database as it is), starts the roles it needs in-process,
//! shows progress on stderr, and ends with a table, or with one JSON object (`--json`)
//! holding at least `scenario`, `throughput_per_s` and `latency_ms` (`p50`, `p90`, `p99`,
//! `max`, from an HDR histogram) plus the parameters it ran with.

pub mod churn;
pub mod e2e;
pub mod fanout;
mod idle;
pub mod queue;
pub mod soak;
pub mod ticks;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use sqlx::migrate::MigrateDatabase;
use sqlx::Postgres;
use tokio_util::sync::CancellationToken;

use crate::config::{BenchArgs, Scenario};

/// Runs the scenario the command line names; the scenarios that create matches create
/// them of `games` (the binary's registry).
pub async fn run(mut args: BenchArgs, games: &crate::game::Registry) -> anyhow::Result<()> {
    // The default URL with nothing answering means a private cluster, as for `serve`.
    let cluster = crate::setup::prepare(&mut args.db).await?;
    let result = run_on(&args, games).await;
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    result
}

async fn run_on(args: &BenchArgs, games: &crate::game::Registry) -> anyhow::Result<()> {
    let db = BenchDb::prepare(&args.db.database_url, args.in_place).await?;
    let pooled = match &args.pooler_url {
        Some(p) => {
            let name = db.url().rsplit('/').next().unwrap_or_default().to_owned();
            Some(crate::setup::url_with_database(p, &name)?)
        }
        None => None,
    };
    let result = match &args.scenario {
        Scenario::E2e(a) => e2e::run_via(db.url(), pooled.as_deref(), a, !args.json, games).await,
        Scenario::Queue(a) => queue::run_via(db.url(), pooled.as_deref(), a, !args.json).await,
        Scenario::Fanout(a) => fanout::run(db.url(), a, !args.json, games).await,
        Scenario::Ticks(a) => ticks::run(db.url(), a, !args.json, games).await,
        Scenario::Soak(a) => soak::run(db.url(), a, !args.json).await,
        Scenario::Churn(a) => churn::run(db.url(), a, !args.json).await,
    };
    db.finish().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

/// The database a benchmark runs in.
pub struct BenchDb {
    url: String,
    created: bool,
}

impl BenchDb {
    /// A fresh database beside the one `base_url` names, or that one when `in_place`.
    pub async fn prepare(base_url: &str, in_place: bool) -> anyhow::Result<Self> {
        if in_place {
            return Ok(Self {
                url: base_url.to_owned(),
                created: false,
            });
        }
        let name = format!(
            "postgame_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = crate::setup::url_with_database(base_url, &name)?;
        Postgres::create_database(&url)
            .await
            .context("cannot create the benchmark database")?;
        Ok(Self { url, created: true })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database if this run created it.
    pub async fn finish(self) {
        if self.created {
            if let Err(e) = Postgres::force_drop_database(&self.url).await {
                eprintln!("warning: could not drop the benchmark database: {e}");
            }
        }
    }
}

/// A postgame server running on its own tokio runtime (its own threads), so the load
/// generator's tasks never queue in front of the server's: what a separate process gives
/// a real deployment.
pub struct ServerThread {
    pub addr: Option<std::net::SocketAddr>,
    pub pool: sqlx::PgPool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Starts `config` with `games`; binds 127.0.0.1:0 when the gateway runs.
    pub async fn start(
        config: crate::config::ServeConfig,
        games: crate::game::Registry,
    ) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("postgame-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("postgame-server")
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = if config.runs(crate::config::Role::Gateway) {
                        match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                            Ok(l) => Some(l),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.into()));
                                return;
                            }
                        }
                    } else {
                        None
                    };
                    match crate::start(config, games, listener).await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok((server.addr, server.pool.clone())));
                            let _ = stop_rx.await;
                            server.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (addr, pool) = ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the server thread died"))??;
        Ok(Self {
            addr,
            pool,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Shuts the server down and waits for its thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What every scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The scenario's rate: what it counts is named in `unit`.
    pub throughput_per_s: f64,
    pub unit: &'static str,
    pub count: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub latency_ms: Latency,
    /// What the latency measures.
    pub latency_of: &'static str,
    pub params: Value,
}

impl Report {
    pub fn print(&self) {
        let l = &self.latency_ms;
        println!("scenario     {}", self.scenario);
        if let Value::Object(params) = &self.params {
            for (k, v) in params {
                println!("  {k:<11}{v}");
            }
        }
        println!("elapsed      {:.1} s", self.elapsed_s);
        println!("{:<13}{} ({} errors)", self.unit, self.count, self.errors);
        println!("throughput   {:.0} {}/s", self.throughput_per_s, self.unit);
        println!("latency      {}", self.latency_of);
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms   mean {:.2} ms",
            l.p50, l.p90, l.p99, l.max, l.mean
        );
    }
}

/// A new latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What a progress bar fills towards.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// A phase that runs for a duration.
    Time(Duration),
    /// A phase that ends at a count.
    Count(u64),
}

/// Prints `label: n (rate/s)` on stderr once a second until `stop`.
pub fn progress(
    label: &'static str,
    count: Arc<AtomicU64>,
    total: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    progress_to(label, count, Goal::Time(total), stop)
}

/// Prints `label: n/target (rate/s)` with a bar on stderr once a second until `stop`: for
/// phases that end at a count rather than after a duration.
pub fn progress_count(
    label: &'static str,
    count: Arc<AtomicU64>,
    target: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    progress_to(label, count, Goal::Count(target), stop)
}

fn progress_to(
    label: &'static str,
    count: Arc<AtomicU64>,
    goal: Goal,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut last = count.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let n = count.load(Ordering::Relaxed);
            let elapsed = start.elapsed().as_secs_f64();
            let (fraction, position) = match goal {
                Goal::Time(total) => (
                    elapsed / total.as_secs_f64(),
                    format!("{elapsed:>5.1}/{:.0} s  {label}: {n}", total.as_secs_f64()),
                ),
                Goal::Count(target) => (
                    n as f64 / target.max(1) as f64,
                    format!("{elapsed:>5.1} s  {label}: {n}/{target}"),
                ),
            };
            let width = 30usize;
            let done = (fraction.min(1.0) * width as f64) as usize;
            eprint!(
                "\r[{}{}] {position}  ({}/s)   ",
                "#".repeat(done),
                " ".repeat(width - done),
                n.saturating_sub(last)
            );
            let _ = std::io::stderr().flush();
            last = n;
        }
        eprintln!();
    })
}

/// The resident set size in bytes (`VmRSS` of `/proc/<pid>/status`) of process `pid`, or of
/// this process when `None`; `None` where `/proc` is not readable.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
