//! The benchmark plumbing: a tiny run of each scenario completes and reports sane numbers
//! (never a timing).

use postgame::bench;
use postgame::config::{E2eArgs, FanoutArgs, QueueArgs, SoakArgs};

use crate::helpers::{database_url, TestDb};

#[tokio::test]
async fn a_tiny_e2e_run_plays_moves_and_reports_latencies() {
    let (_db, opts) = TestDb::new().await;
    let args = E2eArgs {
        players: 4,
        rate: None,
        duration: 1.0,
        workers: 2,
        processes: false,
        exe: None,
        fast_apply: Some(true),
    };
    let report = bench::e2e::run(
        &database_url(&opts),
        &args,
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap();
    assert_eq!(report.scenario, "e2e");
    assert!(report.count > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.throughput_per_s > 0.0);
    let l = report.latency_ms;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    let json = serde_json::to_value(&report).unwrap();
    for field in ["scenario", "throughput_per_s", "latency_ms", "params"] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["params"]["players"], 4);
}

/// Latency figures are ordered and positive.
fn assert_sane(l: &bench::Latency) {
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
}

#[tokio::test]
async fn a_tiny_queue_run_applies_every_message_once_and_reports_both_enqueue_rates() {
    let (_db, opts) = TestDb::new().await;
    let args = QueueArgs {
        messages: 300,
        matches: 7,
        workers: 3,
        batch_size: 20,
        batch_per_match: 20,
        flood: None,
        one_by_one: 40,
        producers: 4,
        latency_messages: 30,
        latency_rate: 300.0,
    };
    let report = bench::queue::run(&database_url(&opts), &args, false)
        .await
        .unwrap();
    assert_eq!(report.scenario, "queue");
    assert_eq!(report.count, 300, "{report:?}");
    // Errors include any message the matches did not count exactly once.
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.throughput_per_s > 0.0);
    assert_sane(&report.latency_ms);
    let p = &report.params;
    assert!(p["enqueue_bulk_per_s"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["enqueue_one_by_one_per_s"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(p["one_by_one"], 40);
    assert_eq!(p["bulk"], 260);
    let json = serde_json::to_value(&report).unwrap();
    for field in ["scenario", "throughput_per_s", "latency_ms", "params"] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
}

fn tiny_fanout() -> FanoutArgs {
    FanoutArgs {
        subscribers: 6,
        rate: 40.0,
        duration: 1.0,
        channels: 2,
        payload: 100,
        baseline: false,
        baseline_read_buffer: 4096,
        one_gateway: false,
        process: false,
        slow: 1,
        serve_baseline: None,
        idle: None,
        sources: 0,
        server_exe: None,
    }
}

/// Every regular subscriber got every acknowledged message of its channel, in order.
fn assert_fanout_complete(report: &bench::Report) {
    let p = &report.params;
    assert_eq!(report.scenario, "fanout");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(p["published"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["acked"], p["published"], "{p}");
    assert_eq!(p["lost"], 0, "{p}");
    assert_eq!(p["gaps"], 0, "{p}");
    assert_eq!(p["closed"], 0, "{p}");
    assert_eq!(json_u64(p, "expected_deliveries"), report.count, "{p}");
    // The slow subscriber read late but, with so few messages, missed nothing.
    assert_eq!(p["slow_complete"], 1, "{p}");
    assert!(report.throughput_per_s > 0.0);
    assert_sane(&report.latency_ms);
    assert!(p["rss_connected_mib"].as_f64().unwrap() > 0.0, "{p}");
}

fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing from {v}"))
}

#[tokio::test]
async fn a_tiny_fanout_run_delivers_every_message_through_listen_to_every_subscriber() {
    let (_db, opts) = TestDb::new().await;
    let report = bench::fanout::run(
        &database_url(&opts),
        &tiny_fanout(),
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap();
    assert_fanout_complete(&report);
    assert!(
        report.params["path"].as_str().unwrap().contains("LISTEN"),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_tiny_fanout_baseline_run_delivers_every_message_without_a_database() {
    let (_db, opts) = TestDb::new().await;
    let args = FanoutArgs {
        baseline: true,
        ..tiny_fanout()
    };
    let report = bench::fanout::run(
        &database_url(&opts),
        &args,
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap();
    assert_fanout_complete(&report);
    assert_eq!(report.params["baseline"], true);
}

#[tokio::test]
async fn an_idle_run_reaches_every_connection_from_two_source_addresses_with_one_broadcast() {
    let (_db, opts) = TestDb::new().await;
    let args = FanoutArgs {
        idle: Some(200),
        sources: 2,
        channels: 2,
        // The gateway runs as a child process, from the postgame binary (not this one).
        server_exe: Some(env!("CARGO_BIN_EXE_postgame").into()),
        ..tiny_fanout()
    };
    let report = bench::fanout::run(
        &database_url(&opts),
        &args,
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap();
    let p = &report.params;
    assert_eq!(report.unit, "connections", "{p}");
    assert_eq!(json_u64(p, "connected"), 200, "{p}");
    assert_eq!(json_u64(p, "failed"), 0, "{p}");
    // The clients' sockets really came from 127.0.0.1 and 127.0.0.2.
    assert_eq!(json_u64(p, "sources_used"), 2, "{p}");
    assert_eq!(json_u64(p, "delivered"), 200, "{p}");
    assert_eq!(json_u64(p, "closed_by_gateway"), 0, "{p}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(p["rss_connected_mib"].as_f64().unwrap() > 0.0, "{p}");
}

#[tokio::test]
async fn a_tiny_soak_holds_the_xmin_horizon_and_applies_every_message_once() {
    let (_db, opts) = TestDb::new().await;
    let args = SoakArgs {
        duration: 3.0,
        rate: 100.0,
        hold_from: Some(1.0),
        hold_for: Some(1.0),
        matches: 5,
        workers: 2,
        producers: 2,
        batch_size: 20,
        batch_per_match: 20,
        sample_every: 0.5,
        vacuum_seconds: 1.0,
    };
    let report = bench::soak::run(&database_url(&opts), &args, false)
        .await
        .unwrap();
    assert_eq!(report.scenario, "soak");
    assert_eq!(report.count, 300);
    assert_eq!(report.errors, 0, "{report:?}");
    let p = &report.params;
    assert!(
        p["hold_xid"].as_i64().is_some(),
        "the hold took an xid: {p}"
    );
    let samples = p["samples"].as_array().unwrap();
    assert!(samples.iter().any(|s| s["held"] == true), "{p}");
    assert!(
        samples.iter().any(|s| s["tables"]["control"].is_array()),
        "the control table is sampled: {p}"
    );
    let enqueued: u64 = ["before", "held", "after"]
        .iter()
        .map(|k| p[k]["enqueued"].as_u64().unwrap())
        .sum();
    assert_eq!(enqueued, 300, "every message falls in one phase: {p}");
}

/// `bench churn` runs the gateway as a process of the real binary: sessions come and go
/// (closed cleanly, dropped, cut off on a protocol error) and nothing of them stays.
#[tokio::test]
async fn a_tiny_churn_run_leaves_no_connection_and_no_presence_behind() {
    let (_db, opts) = TestDb::new().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["bench", "--in-place", "--json", "churn", "--duration", "6"])
        .args(["--clients", "6", "--matches", "2", "--channels", "2"])
        .args(["--hold-ms", "100", "--sample-every", "1"])
        .env("DATABASE_URL", database_url(&opts))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scenario"], "churn");
    assert_eq!(report["errors"], 0, "{report}");
    // Three sessions at least, so each way of leaving was taken.
    assert!(json_u64(&report, "count") >= 3, "{report}");
    let p = &report["params"];
    assert_eq!(p["connections_gauge_after"], 0.0, "{report}");
    assert_eq!(p["presence_rows_after"], 0, "{report}");
    assert!(
        p["samples"].as_array().is_some_and(|s| s.len() >= 3),
        "{report}"
    );
    assert!(
        p["rss_end_mib"].as_f64().is_some_and(|m| m > 0.0),
        "{report}"
    );
}
