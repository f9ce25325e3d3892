//! N × N × N: the roles as separate processes of the real `postgame` binary (2 gateways,
//! 3 workers, 2 tickers) on one database (a private cluster: the processes' connections
//! stay off the shared server), driven by `bench e2e --processes`: its players cross the
//! gateways, the fleet's clients play Tic Tac Toe (chat, stalls the turn timer ends) and
//! Pong and hop between the gateways, resuming from their last seq; then every guarantee
//! is checked (exactly-once, per-match order, gap-free seq, no lost or doubled tick).

use postgame::bench;
use postgame::config::E2eArgs;
use serde_json::Value;

use crate::cluster::Cluster;

#[tokio::test]
async fn two_gateways_three_workers_and_two_tickers_as_processes_keep_every_guarantee() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start_with(80))
        .await
        .unwrap();
    let args = E2eArgs {
        players: 4,
        rate: Some(20.0),
        duration: 12.0,
        workers: 1,
        processes: true,
        exe: Some(env!("CARGO_BIN_EXE_postgame").into()),
        fast_apply: None,
    };
    let report = bench::e2e::run(
        &cluster.url("postgame"),
        &args,
        true,
        &postgame::game::Registry::builtin(),
    )
    .await
    .expect("the N × N × N run completes");
    let checked = &report.params["checked"];
    eprintln!("{}", serde_json::to_string_pretty(&report.params).unwrap());
    assert_eq!(
        checked["violations"],
        Value::Array(vec![]),
        "every guarantee holds"
    );
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(
        report.count > 0,
        "moves crossed from one gateway to the other"
    );
    // Every check ran on real traffic: publishes through both gateways, broadcasts,
    // Pong ticks, turn timers; and clients moved between the gateways and resumed.
    let acks = checked["acks_by_gateway"].as_array().unwrap();
    assert!(
        acks.iter().all(|n| n.as_u64().unwrap() > 0),
        "both gateways acknowledged publishes: {acks:?}"
    );
    assert!(checked["moves_between_gateways"].as_u64().unwrap() > 0);
    assert!(checked["connections"].as_u64().unwrap() > checked["clients"].as_u64().unwrap());
    let counts = &checked["counts"];
    for what in [
        "publishes acknowledged",
        "chat lines checked",
        "messages received and checked",
        "pong frames checked",
        "turn timers checked",
        "presence rows checked",
    ] {
        assert!(
            counts[what].as_u64().unwrap_or(0) > 0,
            "{what}: nothing was checked ({counts})"
        );
    }
    assert_eq!(report.params["processes"]["gateways"], 2);
    assert_eq!(report.params["processes"]["workers"], 3);
    assert_eq!(report.params["processes"]["tickers"], 2);
}
