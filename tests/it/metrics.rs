//! `/metrics` of the real server after some traffic serves every stage histogram and gauge
//! docs/OPERATIONS.md lists, and every metric the Grafana dashboard in deploy/ queries.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb, WAIT};

/// The metric names of a Prometheus text exposition (`_bucket`, `_sum`… included).
fn served_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn repo_file(path: &str) -> String {
    let at = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()))
}

/// The series docs/OPERATIONS.md promises in "Stages and gauges": a histogram's
/// `_bucket`, `_sum` and `_count`, any other metric's own name.
fn documented_series() -> BTreeSet<String> {
    let doc = repo_file("docs/OPERATIONS.md");
    let section = doc
        .split("### Stages and gauges")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/OPERATIONS.md has a \"Stages and gauges\" section");
    let mut series = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `postgame_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        if cells[2] == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{name}{suffix}"));
            }
        } else {
            series.insert(name.to_owned());
        }
    }
    assert!(series.len() > 20, "the table was not found: {series:?}");
    series
}

/// Every `postgame_…` name in the queries of the dashboard.
fn dashboard_names() -> BTreeSet<String> {
    fn exprs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(e)) = o.get("expr") {
                    out.push(e.clone());
                }
                o.values().for_each(|x| exprs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
            _ => {}
        }
    }
    let dash: Value = serde_json::from_str(&repo_file("deploy/grafana/postgame.json")).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 10, "the dashboard has {} queries", all.len());
    let mut names = BTreeSet::new();
    for e in all {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("postgame_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test]
async fn metrics_of_every_stage_and_the_dashboards_names_are_served() {
    let documented = documented_series();
    let dashboard = dashboard_names();
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    // Traffic through every stage: a publish applied by a worker and fanned out live to a
    // subscriber, and a match on the clock for the tickers.
    let (_clock, _) =
        postgame::matches::match_create(&app.pool, &postgame::game::noop::Noop, &json!({"hz": 10}))
            .await
            .unwrap();
    let token = app.token("xavier");
    let id = app.create_match(&token, "tictactoe", json!({})).await;
    let mut x = app.ws(&token).await;
    let channel = format!("match:{id}");
    let _ = x.subscribe(&channel, None).await;
    x.act(&id, "join", json!({})).await;
    let _ = x.message(&channel).await;

    let mut missing = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut text = String::new();
    while tokio::time::Instant::now() < deadline {
        text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let served = served_names(&text);
        missing = documented
            .iter()
            .chain(&dashboard)
            .filter(|n| !served.contains(*n))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "not served: {missing:?}\n{text}");
    // Histograms are Prometheus histograms (buckets), not summaries.
    assert!(
        text.contains("postgame_queue_wait_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    app.shutdown().await;
}
