//! The benchmark plumbing: a tiny run of each scenario completes and reports sane numbers
//! (never a timing).

use postgame::bench;
use postgame::config::E2eArgs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::database_url;

#[sqlx::test]
async fn a_tiny_e2e_run_plays_moves_and_reports_latencies(
    _p: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let args = E2eArgs {
        players: 4,
        rate: None,
        duration: 1.0,
        workers: 2,
    };
    let report = bench::e2e::run(&database_url(&opts), &args, false)
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
