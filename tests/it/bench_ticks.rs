//! `postgame bench ticks`: a tiny run of each workload completes and reports sane numbers,
//! with the baseline (never a timing).

use postgame::bench;
use postgame::config::TicksArgs;
use sqlx::postgres::PgConnectOptions;

use crate::helpers::{database_url, TestDb};

async fn tiny_run(opts: PgConnectOptions, game: &str, hz: f64) -> bench::Report {
    let args = TicksArgs {
        matches: 20,
        hz,
        tickers: 2,
        duration: 1.0,
        game: game.into(),
        processes: false,
        tick_batch: 10,
        sync_ticks: false,
    };
    let report = bench::ticks::run(
        &database_url(&opts),
        &args,
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap();
    assert_eq!(report.scenario, "ticks");
    assert!(report.count > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.throughput_per_s > 0.0, "{report:?}");
    let l = report.latency_ms;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    let json = serde_json::to_value(&report).unwrap();
    for field in ["scenario", "throughput_per_s", "latency_ms", "params"] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    let p = &json["params"];
    assert_eq!(p["game"], game);
    assert_eq!(p["requested_ticks_per_s"], 20.0 * hz);
    assert!(p["lateness_samples"].as_u64().unwrap() > 0, "{p}");
    assert!(p["baseline_updates_per_s"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["ratio_to_baseline"].as_f64().unwrap() > 0.0, "{p}");
    report
}

#[tokio::test]
async fn a_tiny_ticks_run_of_pong_ticks_every_match_and_measures_the_baseline() {
    let (_db, opts) = TestDb::new().await;
    let report = tiny_run(opts, "pong", 20.0).await;
    // Every match stays in play (a match to 21 with idle paddles lasts minutes).
    assert_eq!(report.params["matches_ended"], 0, "{report:?}");
}

#[tokio::test]
async fn a_tiny_ticks_run_of_noop_ticks_at_the_requested_rate() {
    let (_db, opts) = TestDb::new().await;
    tiny_run(opts, "noop", 10.0).await;
}

#[tokio::test]
async fn a_ticks_run_refuses_pong_at_another_rate() {
    let (_db, opts) = TestDb::new().await;
    let args = TicksArgs {
        matches: 1,
        hz: 30.0,
        tickers: 1,
        duration: 1.0,
        game: "pong".into(),
        processes: false,
        tick_batch: 10,
        sync_ticks: false,
    };
    let e = bench::ticks::run(
        &database_url(&opts),
        &args,
        false,
        &postgame::game::Registry::builtin(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("20 Hz"), "{e}");
}
