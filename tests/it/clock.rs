//! Match clocks end to end: Tic Tac Toe's turn timer and reconnect grace fire with nobody
//! pushing them, several tickers share many matches without losing or doubling a tick,
//! ticks never interleave with control messages, and tickers killed mid-run (their
//! connections, or a whole process) lose nothing and double nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgame::broadcast::notify::Notifier;
use postgame::config::Role;
use postgame::ticker::{Ticker, TickerConfig};
use serde_json::{json, Value};

use crate::concurrency::publish_interleaved;
use crate::helpers::{kill_backends, role_process, test_config, TestApp, TestDb};
use clockgames::{InterleaveState, MetronomeState};

#[path = "clockgames.rs"]
pub mod clockgames;

/// Publishes a control message over HTTP (no connection, so no presence).
async fn http_act(app: &TestApp, token: &str, match_id: &str, name: &str, data: Value) {
    let r = app
        .http
        .post(app.url(&format!("/v1/channels/control:{match_id}/messages")))
        .bearer_auth(token)
        .json(&json!({ "name": name, "data": data }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

async fn match_view(app: &TestApp, id: &str) -> Value {
    app.http
        .get(app.url(&format!("/v1/matches/{id}")))
        .bearer_auth(app.token("reader"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// How many `match` announcements of `status` the lobby carried for match `id`.
async fn lobby_announcements(app: &TestApp, id: &str, status: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM postgame.messages
         WHERE channel = 'lobby' AND name = 'match' AND data->>'id' = $1
           AND data->>'status' = $2",
    )
    .bind(id)
    .bind(status)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_turn_timer_forfeits_a_match_with_no_client_connected() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let id = app
        .create_match(&alice, "tictactoe", json!({"turn_seconds": 1}))
        .await;
    http_act(&app, &alice, &id, "join", json!({})).await;
    http_act(&app, &bob, &id, "join", json!({})).await;
    let started = Instant::now();
    app.wait_until(&format!(
        "SELECT status <> 'waiting' FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    // Nobody is connected and nobody moves: X's turn runs out and O wins.
    app.wait_until(&format!(
        "SELECT status = 'won' FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    eprintln!("the 1 s turn timer fired after {:?}", started.elapsed());
    let m = match_view(&app, &id).await;
    assert_eq!(m["status"], "won", "{m}");
    assert_eq!(m["state"]["winner"], "O", "{m}");
    assert_eq!(m["state"]["turn_deadline"], Value::Null, "{m}");
    assert_eq!(lobby_announcements(&app, &id, "won").await, 1);
    // Two joins and one tick; the finished match is off the clock.
    let (version, next): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT version, next_tick_at FROM postgame.matches WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(version, 3);
    assert_eq!(next, None);
    app.shutdown().await;
}

/// A Tic Tac Toe match with both players connected over WebSocket and playing.
async fn connected_match(
    app: &TestApp,
    config: Value,
) -> (String, crate::helpers::Client, crate::helpers::Client) {
    let id = app
        .create_match(&app.token("alice"), "tictactoe", config)
        .await;
    let channel = format!("match:{id}");
    let mut x = app.ws(&app.token("alice")).await;
    let mut o = app.ws(&app.token("bob")).await;
    for c in [&mut x, &mut o] {
        assert_eq!(c.subscribe(&channel, None).await["op"], "subscribed");
    }
    x.act(&id, "join", json!({})).await;
    o.act(&id, "join", json!({})).await;
    let s = x
        .state_until(&id, |s| {
            s["status"] == "playing" && s["connected"] == json!({"X": true, "O": true})
        })
        .await;
    assert_eq!(s["players"], json!({"X": "alice", "O": "bob"}));
    (id, x, o)
}

#[tokio::test]
async fn a_player_who_reconnects_within_the_grace_plays_on() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let (id, mut x, mut o) =
        connected_match(&app, json!({"turn_seconds": 4, "reconnect_seconds": 2})).await;
    o.ws.close(None).await.unwrap();
    drop(o);
    x.state_until(&id, |s| s["connected"]["O"] == false).await;
    let mut back = app.ws(&app.token("bob")).await;
    back.subscribe(&format!("match:{id}"), None).await;
    let s = x.state_until(&id, |s| s["connected"]["O"] == true).await;
    assert_eq!(s["status"], "playing", "{s}");
    // Had O's grace run out (2 s after the disconnection), O would have forfeited. It is X
    // who loses, on the turn timer (4 s after the start): O came back in time.
    let end = x.state_until(&id, |s| s["status"] != "playing").await;
    assert_eq!(end["status"], "won", "{end}");
    assert_eq!(end["winner"], "O", "{end}");
    let seen = back.state_until(&id, |s| s["status"] == "won").await;
    assert_eq!(seen["winner"], "O");
    app.shutdown().await;
}

#[tokio::test]
async fn a_player_who_does_not_return_within_the_grace_forfeits() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let (id, mut x, mut o) =
        connected_match(&app, json!({"turn_seconds": 60, "reconnect_seconds": 1})).await;
    o.ws.close(None).await.unwrap();
    drop(o);
    x.state_until(&id, |s| s["connected"]["O"] == false).await;
    // Long before X's turn timer: O's grace runs out and X wins.
    let end = x.state_until(&id, |s| s["status"] != "playing").await;
    assert_eq!(end["status"], "won", "{end}");
    assert_eq!(end["winner"], "X", "{end}");
    // Coming back too late changes nothing.
    let mut back = app.ws(&app.token("bob")).await;
    back.subscribe(&format!("match:{id}"), None).await;
    let s = x.state_until(&id, |s| s["connected"]["O"] == true).await;
    assert_eq!(
        (s["status"].clone(), s["winner"].clone()),
        (json!("won"), json!("X"))
    );
    assert_eq!(lobby_announcements(&app, &id, "won").await, 1);
    app.shutdown().await;
}

/// Creates `n` metronome matches at `hz` over HTTP.
async fn metronomes(app: &TestApp, n: usize, hz: u32) -> Vec<String> {
    let token = app.token("setup");
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            app.create_match(&token, "metronome", json!({ "hz": hz }))
                .await,
        );
    }
    ids
}

/// SQL that is true once every listed metronome has at least `beats` beats.
fn all_beat(ids: &[String], beats: u64) -> String {
    let list = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "SELECT count(*) = {} AND bool_and((state->>'count')::int8 >= {beats})
         FROM postgame.matches WHERE id::text IN ({list})",
        ids.len()
    )
}

/// Checks every listed metronome from one snapshot: beats numbered 1, 2, 3… with none
/// missing and none twice, each the tick of its own slot (one period apart, starting one
/// period after creation), one engine version per beat, and the schedule right after the
/// last beat. Returns the lateness of the latest beats, the largest lateness of any beat
/// and the largest backlog (now − next_tick_at), in seconds.
async fn check_metronomes(app: &TestApp, ids: &[String]) -> (Vec<f64>, f64, f64) {
    type Row = (
        String,
        i64,
        Value,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        i32,
        f64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id::text, version, state, next_tick_at, created_at, tick_failures,
                extract(epoch FROM now() - next_tick_at)::float8
         FROM postgame.matches WHERE id::text = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), ids.len());
    let mut lateness = Vec::new();
    let (mut worst, mut backlog) = (0f64, f64::MIN);
    for (id, version, state, next_tick_at, created_at, failures, behind) in rows {
        let s: MetronomeState = serde_json::from_value(state).unwrap();
        let period = 1_000_000 / i64::from(s.hz);
        let count = s.count as i64;
        assert_eq!(version, count, "{id}: one version per beat");
        assert_eq!(failures, 0, "{id}");
        let recent: Vec<i64> = s.recent.iter().map(|b| b[0]).collect();
        let first = (count - clockgames::RECENT as i64).max(0) + 1;
        assert_eq!(recent, (first..=count).collect::<Vec<_>>(), "{id}");
        for [n, scheduled, late] in &s.recent {
            let slot = created_at.timestamp_micros() + n * period;
            assert_eq!(*scheduled, slot, "{id}: beat {n} not the tick of its slot");
            assert!(*late >= 0, "{id}: beat {n} ran early");
            lateness.push(*late as f64 / 1e6);
        }
        assert_eq!(
            s.next.timestamp_micros(),
            created_at.timestamp_micros() + (count + 1) * period,
            "{id}: the schedule is not right after beat {count}"
        );
        assert_eq!(next_tick_at, Some(s.next), "{id}");
        worst = worst.max(s.max_late_us as f64 / 1e6);
        backlog = backlog.max(behind);
    }
    (lateness, worst, backlog)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary((mut lateness, worst, backlog): (Vec<f64>, f64, f64)) -> String {
    lateness.sort_by(f64::total_cmp);
    format!(
        "latest beats' lateness p50 {:.1} ms, p99 {:.1} ms; worst beat {:.1} ms late; \
         backlog {:.1} ms",
        percentile(&lateness, 0.5) * 1e3,
        percentile(&lateness, 0.99) * 1e3,
        worst * 1e3,
        backlog * 1e3
    )
}

#[tokio::test]
async fn four_tickers_number_every_tick_of_300_matches_once_and_in_order() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, clockgames::games(), |c| {
        c.tickers = 4;
        c.tick_batch = 50;
        c.db_connections = 10;
    })
    .await;
    // One match whose tick always panics: the tickers carry on around it.
    let broken = app
        .create_match(
            &app.token("setup"),
            "metronome",
            json!({"hz": 10, "broken": true}),
        )
        .await;
    let ids = metronomes(&app, 300, 10).await;
    app.wait_until(&all_beat(&ids, 30)).await;
    let checked = check_metronomes(&app, &ids).await;
    // How far behind the tickers ran is a benchmark figure (`postgame bench ticks`), not
    // something a test on a shared machine may assert; it is printed for the reader.
    eprintln!("{}", summary(checked));
    let (failures, version, error, on_clock): (i32, i64, Option<String>, bool) = sqlx::query_as(
        "SELECT tick_failures, version, last_tick_error, next_tick_at IS NOT NULL
             FROM postgame.matches WHERE id = $1::uuid",
    )
    .bind(&broken)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(failures >= 1, "the broken match was never ticked");
    assert!(error.unwrap_or_default().contains("broken on purpose"));
    assert_eq!(version, 0, "a failed tick changes nothing");
    assert!(
        on_clock,
        "retried with backoff, not stopped after {failures} failures"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_tick_and_a_control_message_of_one_match_never_interleave() {
    let (_db, opts) = TestDb::new().await;
    const MATCHES: usize = 10;
    const PER_CLIENT: i64 = 100;
    let app = TestApp::spawn_with(opts, clockgames::games(), |c| {
        c.workers = 4;
        c.batch_size = 8;
        c.tickers = 4;
        c.tick_batch = 4;
        c.db_connections = 12;
    })
    .await;
    let token = app.token("setup");
    let mut ids = Vec::new();
    for _ in 0..MATCHES {
        ids.push(
            app.create_match(&token, "interleave", json!({"hz": 20}))
                .await,
        );
    }
    let names = ["p0", "p1"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(app.ws(&app.token(n)).await);
    }
    // Pipelined: the workers apply inputs while the tickers tick the same matches.
    publish_interleaved(&mut clients, &ids, PER_CLIENT).await;
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    app.wait_until(
        "SELECT bool_and((state->>'ticks')::int8 >= 20) FROM postgame.matches
         WHERE game = 'interleave'",
    )
    .await;
    let rows: Vec<(String, i64, Value, i32)> = sqlx::query_as(
        "SELECT id::text, version, state, tick_failures FROM postgame.matches
         WHERE game = 'interleave'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), MATCHES);
    let mut interleaved = 0;
    for (id, version, state, failures) in rows {
        let s: InterleaveState = serde_json::from_value(state).unwrap();
        // A lost update (a tick and an input applied to the same stored state) would leave
        // the engine's version ahead of the game's.
        assert_eq!(s.version, version, "{id}: applied steps ≠ matches.version");
        assert_eq!(s.ticks + s.inputs, version, "{id}");
        assert_eq!(s.inputs, 2 * PER_CLIENT, "{id}: every input exactly once");
        assert_eq!(failures, 0, "{id}");
        assert_eq!(s.trace.len() as i64, version, "{id}: one step per version");
        assert_eq!(s.trace.matches('t').count() as i64, s.ticks, "{id}");
        for name in names {
            assert_eq!(
                s.ns.get(name).cloned().unwrap_or_default(),
                (1..=PER_CLIENT).collect::<Vec<_>>(),
                "{id}: {name}'s inputs, each once and in order"
            );
        }
        // Ticks landed between inputs: the two really ran on the match side by side.
        let (first, last) = (s.trace.find('i'), s.trace.rfind('i'));
        if let (Some(a), Some(b)) = (first, last) {
            interleaved += s.trace[a..b].matches('t').count();
        }
    }
    assert!(
        interleaved > 0,
        "no tick ran while inputs were being applied; the test proved nothing"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn tickers_whose_connections_die_mid_tick_lose_and_double_nothing() {
    let (_db, opts) = TestDb::new().await;
    // A gateway and workers without tickers, and a separate ticker "process" whose
    // connections are killed again and again mid-tick.
    let app = TestApp::spawn_with(opts, clockgames::games(), |c| {
        c.roles = vec![Role::Gateway, Role::Worker]
    })
    .await;
    let mut config = test_config(&app.db_url);
    config.roles = vec![Role::Ticker];
    config.tickers = 4;
    config.tick_batch = 10;
    config.db_connections = 6;
    let tickers = postgame::start(config, clockgames::games(), None)
        .await
        .unwrap();
    let ids = metronomes(&app, 100, 10).await;
    app.wait_until(&all_beat(&ids, 5)).await;
    let killer = tokio::spawn(kill_backends(app.pool.clone(), "postgame ticker"));
    let kills = killer.await.unwrap();
    assert!(kills > 0, "the test killed no ticker transaction");
    // The tickers come back and catch up on every beat they missed.
    let beats: i64 = sqlx::query_scalar(
        "SELECT max((state->>'count')::int8) FROM postgame.matches WHERE game = 'metronome'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    app.wait_until(&all_beat(&ids, beats as u64 + 10)).await;
    let checked = check_metronomes(&app, &ids).await;
    // Every beat is numbered and slotted (checked above); how late they ran is printed.
    eprintln!("{kills} kills; {}", summary(checked));
    tickers.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_ticker_process_killed_mid_run_loses_and_doubles_nothing() {
    let (_db, opts) = TestDb::new().await;
    const MATCHES: usize = 120;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.roles = vec![Role::Gateway, Role::Worker]
    })
    .await;
    let mut procs = vec![
        role_process(&app.db_url, "ticker"),
        role_process(&app.db_url, "ticker"),
    ];
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    // Matches start one after the other, with turn timers of 1 to 3 s, so their forfeits
    // fall due over a few seconds.
    let mut ids = Vec::new();
    for i in 0..MATCHES {
        let id = app
            .create_match(&alice, "tictactoe", json!({"turn_seconds": 1 + i % 3}))
            .await;
        http_act(&app, &alice, &id, "join", json!({})).await;
        http_act(&app, &bob, &id, "join", json!({})).await;
        ids.push(id);
    }
    app.wait_until(&format!(
        "SELECT count(*) >= {} FROM postgame.matches WHERE status = 'won'",
        MATCHES / 4
    ))
    .await;
    procs[0].kill().await.unwrap();
    let playing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postgame.matches WHERE status = 'playing'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(playing > 0, "every match had ended before the kill");
    app.wait_until(&format!(
        "SELECT count(*) = {MATCHES} FROM postgame.matches WHERE status = 'won'"
    ))
    .await;
    // Every match: two joins and exactly one tick, X forfeited, announced once; and each
    // forfeit came soon after its deadline (the survivor took over at once, not after a
    // lock timeout).
    let rows: Vec<(String, i64, Value, i64, i64, f64)> = sqlx::query_as(
        "SELECT m.id::text, m.version, m.view,
                (SELECT count(*) FROM postgame.messages l WHERE l.channel = 'lobby'
                   AND l.name = 'match' AND l.data->>'id' = m.id::text
                   AND l.data->>'status' = 'won'),
                (SELECT count(*) FROM postgame.messages s WHERE s.channel = 'match:' || m.id
                   AND s.name = 'state' AND s.data->>'status' = 'won'),
                (SELECT extract(epoch FROM w.ts - (p.data->>'turn_deadline')::timestamptz)
                 FROM postgame.messages w, postgame.messages p
                 WHERE w.channel = 'match:' || m.id AND w.name = 'state'
                   AND w.data->>'status' = 'won'
                   AND p.channel = w.channel AND p.name = 'state'
                   AND p.data->>'status' = 'playing')::float8
         FROM postgame.matches m",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), MATCHES);
    let mut worst = 0f64;
    for (id, version, view, announced, broadcast, late) in rows {
        assert_eq!(version, 3, "{id}: two joins and one tick: {view}");
        assert_eq!(view["winner"], "O", "{id}: {view}");
        assert_eq!(announced, 1, "{id}");
        assert_eq!(broadcast, 1, "{id}");
        assert!(late >= 0.0, "{id}: forfeited {late} s before the deadline");
        worst = worst.max(late);
    }
    eprintln!("{playing} matches left at the kill; latest forfeit {worst:.3} s after its deadline");
    assert!(worst < 3.0, "a forfeit came {worst} s after its deadline");
    for mut p in procs {
        let _ = p.kill().await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_failing_tick_backs_off_then_stops_its_clock_and_others_tick_on() {
    let (_db, opts) = TestDb::new().await;
    // No ticker in the server: the test drives one, step by step.
    let app = TestApp::spawn_with(opts, clockgames::games(), |c| {
        c.roles = vec![Role::Gateway, Role::Worker]
    })
    .await;
    let token = app.token("setup");
    let broken = app
        .create_match(&token, "metronome", json!({"hz": 50, "broken": true}))
        .await;
    let healthy = app
        .create_match(&token, "metronome", json!({"hz": 50}))
        .await;
    let ticker = Ticker::new(
        app.pool.clone(),
        clockgames::games(),
        Arc::new(Notifier::new()),
        TickerConfig {
            max_failures: 4,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_millis(600),
            ..TickerConfig::new(10, Duration::from_secs(1))
        },
    );
    // (failures, seconds from the old schedule to the new, from now to the new), after
    // each failed tick.
    let mut pushes: Vec<(i32, Option<(f64, f64)>)> = Vec::new();
    loop {
        app.wait_until(&format!(
            "SELECT next_tick_at IS NULL OR next_tick_at <= now()
             FROM postgame.matches WHERE id = '{broken}'"
        ))
        .await;
        let (failures, due): (i32, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT tick_failures, next_tick_at FROM postgame.matches WHERE id = $1::uuid",
        )
        .bind(&broken)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let Some(due) = due else {
            break;
        };
        let o = ticker.run_once().await.unwrap();
        assert!(o.failed <= 1 && o.claimed >= 1, "{o:?}");
        let (after, from_due, from_now): (i32, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT tick_failures, extract(epoch FROM next_tick_at - $2)::float8,
                    extract(epoch FROM next_tick_at - now())::float8
             FROM postgame.matches WHERE id = $1::uuid",
        )
        .bind(&broken)
        .bind(due)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if after > failures {
            pushes.push((after, from_due.zip(from_now)));
        }
    }
    // Pushed back 0.2, 0.4, then 0.6 s (the cap) from the claim, which came at or after the
    // old schedule and before now; stopped at the fourth failure.
    assert_eq!(pushes.len(), 4, "{pushes:?}");
    for (i, (failures, push)) in pushes.iter().enumerate() {
        assert_eq!(*failures, i as i32 + 1, "{pushes:?}");
        match (push, [Some(0.2), Some(0.4), Some(0.6), None][i]) {
            (Some((from_due, from_now)), Some(b)) => {
                assert!(*from_due >= b - 1e-6 && *from_now <= b + 1e-6, "{pushes:?}")
            }
            (None, None) => {}
            _ => panic!("unexpected push-backs {pushes:?}"),
        }
    }
    let (error, version): (String, i64) =
        sqlx::query_as("SELECT last_tick_error, version FROM postgame.matches WHERE id = $1::uuid")
            .bind(&broken)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(error.contains("broken on purpose"), "{error}");
    assert_eq!(version, 0);
    // The healthy match kept ticking through all of it, and still does.
    let ids = [healthy];
    let before: i64 =
        sqlx::query_scalar("SELECT version FROM postgame.matches WHERE id = $1::uuid")
            .bind(&ids[0])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(before > 0);
    app.wait_until(&format!(
        "SELECT next_tick_at <= now() FROM postgame.matches WHERE id = '{}'",
        ids[0]
    ))
    .await;
    assert_eq!(ticker.run_once().await.unwrap().ticked, 1);
    check_metronomes(&app, &ids).await;
    app.shutdown().await;
}

/// A Pong bot on its own connection: reads every frame of `match:<id>` (the durable
/// `message`s and the `latest` states) until the match is over, steering its paddle
/// (`side`) towards the ball when `follow`, away from it otherwise, from the newest state
/// (by `tick`). Returns every frame it received.
async fn pong_bot(
    mut c: crate::helpers::Client,
    id: String,
    side: &'static str,
    follow: bool,
) -> Vec<Value> {
    let channel = format!("match:{id}");
    let mut seen = Vec::new();
    let mut dir = 0;
    let mut newest = -1;
    loop {
        let m = c.broadcast(&channel).await;
        let s = m["data"].clone();
        seen.push(m);
        assert!(seen.len() < 10_000, "the match does not end");
        let tick = s["tick"].as_i64().unwrap();
        if tick < newest {
            continue;
        }
        newest = tick;
        if s["status"] != "playing" && s["status"] != "waiting" {
            // The end comes both ways: logged and as the latest value.
            if seen.iter().filter(|f| f["data"] == s).count() == 2 {
                return seen;
            }
            continue;
        }
        if s["status"] != "playing" {
            continue;
        }
        let toward =
            (s["ball"]["y"].as_i64().unwrap() - s["paddles"][side].as_i64().unwrap()).signum();
        let want = match (follow, toward) {
            (true, t) => t,
            (false, 0) => 1,
            (false, t) => -t,
        };
        if want != dir {
            dir = want;
            c.act(&id, "input", json!({ "dir": dir })).await;
        }
    }
}

/// The frames of one kind (`message` or `latest`).
fn frames<'a>(all: &'a [Value], op: &str) -> Vec<&'a Value> {
    all.iter().filter(|f| f["op"] == op).collect()
}

#[tokio::test]
async fn a_bot_pair_plays_pong_over_websockets_and_sees_the_state_of_every_tick() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "pong", json!({"points_to_win": 2}))
        .await;
    let channel = format!("match:{id}");
    let mut left = app.ws(&app.token("alice")).await;
    let mut right = app.ws(&app.token("bob")).await;
    let mut heads = Vec::new();
    for c in [&mut left, &mut right] {
        let sub = c.subscribe(&channel, None).await;
        assert_eq!(sub["op"], "subscribed", "{sub}");
        heads.push(sub["head"].as_i64().unwrap());
    }
    left.act(&id, "join", json!({})).await;
    right.act(&id, "join", json!({})).await;
    // Alice (left) follows the ball; Bob (right) runs away from it.
    let l = tokio::spawn(pong_bot(left, id.clone(), "left", true));
    let r = tokio::spawn(pong_bot(right, id.clone(), "right", false));
    let (l, r) = (l.await.unwrap(), r.await.unwrap());

    // The durable messages: the same for both, gap-free from the subscription on: the two
    // joins, every point and the end, each a `state`.
    let (ml, mr) = (frames(&l, "message"), frames(&r, "message"));
    assert_eq!(ml, mr, "both bots see the same log");
    let seqs: Vec<i64> = ml.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let first = heads[0].max(heads[1]) + 1;
    assert_eq!(seqs, (first..first + seqs.len() as i64).collect::<Vec<_>>());
    assert!(ml.iter().all(|m| m["name"] == "state"), "only states");
    let points: Vec<i64> = ml
        .iter()
        .map(|m| {
            m["data"]["score"]["left"].as_i64().unwrap()
                + m["data"]["score"]["right"].as_i64().unwrap()
        })
        .collect();
    let last_points = *points.last().unwrap();
    assert!((2..=3).contains(&last_points), "{points:?}");
    for p in 1..=last_points {
        assert!(points.contains(&p), "point {p} was not logged: {points:?}");
    }

    // The latest values: per connection, versions and ticks strictly increase; one state
    // per tick (the game's step counter goes up by one, or by two when a late tick took
    // its one catch-up step) unless the stream was conflated under load, which skips.
    for stream in [&l, &r] {
        let latest = frames(stream, "latest");
        let versions: Vec<i64> = latest
            .iter()
            .map(|f| f["version"].as_i64().unwrap())
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        let ticks: Vec<i64> = latest
            .iter()
            .map(|f| f["data"]["tick"].as_i64().unwrap())
            .collect();
        // Tick 0: the creation and the joins, then one per step.
        assert!(
            ticks.windows(2).all(|w| w[0] < w[1] || w == [0, 0]),
            "{ticks:?}"
        );
        assert!(ticks.len() > 40, "{} ticks", ticks.len());
        assert!(latest
            .iter()
            .all(|f| f["name"] == "state" && f.get("seq").is_none()));
        let skipped = ticks.windows(2).filter(|w| w[1] - w[0] > 2).count();
        eprintln!("{} ticks seen, {skipped} gaps from conflation", ticks.len());
    }
    // The inputs steered the paddles, and the match ended on points; both converged on the
    // same final state, which is also the match's latest value in the database.
    assert!(
        l.iter().any(|m| m["data"]["paddles"]["left"] != 60),
        "the left paddle never moved"
    );
    let end = &frames(&l, "latest").last().unwrap()["data"];
    assert_eq!(end, &frames(&r, "latest").last().unwrap()["data"]);
    assert_eq!(end["status"], "finished", "{end}");
    let winner = end["winner"].as_str().unwrap();
    assert_eq!(end["score"][winner], 2, "{end}");
    let stored: Value = sqlx::query_scalar(
        "SELECT data FROM postgame.latest WHERE channel = $1 AND name = 'state'",
    )
    .bind(&channel)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(&stored, end);
    // Over: off the clock and stamped for the prune.
    let (next, ended): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT next_tick_at, ended_at FROM postgame.matches WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(next, None);
    assert!(ended.is_some());
    app.shutdown().await;
}

/// A late subscriber gets the match's current latest state right after `subscribed`, and
/// one that comes back after the match ended converges on the final state; the log holds
/// only the states worth replaying, not one per tick.
#[tokio::test]
async fn latest_values_reach_late_subscribers_and_stay_out_of_the_log() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let alice = app.token("alice");
    let id = app
        .create_match(&alice, "pong", json!({"points_to_win": 1, "bot": true}))
        .await;
    let channel = format!("match:{id}");
    let mut player = app.ws(&alice).await;
    player.subscribe(&channel, None).await;
    player.act(&id, "join", json!({})).await;
    // Against the bot the game starts at the first join.
    let playing = player
        .recv_where(|f| f["op"] == "latest" && f["data"]["tick"].as_i64().unwrap_or(0) >= 5)
        .await;
    assert_eq!(playing["data"]["status"], "playing", "{playing}");
    assert_eq!(playing["data"]["bot"], "right", "{playing}");

    let mut late = app.ws(&app.token("carol")).await;
    let sub = late.subscribe(&channel, None).await;
    assert_eq!(sub["op"], "subscribed");
    let first = late.recv().await;
    assert_eq!(
        first["op"], "latest",
        "the current value comes right away: {first}"
    );
    assert!(first["data"]["tick"].as_i64().unwrap() >= 5, "{first}");
    drop(late);

    // Alice hides in the top corner: somebody wins the one point soon and the match ends.
    player.act(&id, "input", json!({"dir": -1})).await;
    let end = player
        .recv_where(|f| f["op"] == "latest" && f["data"]["status"] == "finished")
        .await;
    assert!(end["data"]["winner"].is_string(), "{end}");
    let mut after = app.ws(&app.token("dave")).await;
    after.subscribe(&channel, None).await;
    let last = after.recv().await;
    assert_eq!(
        (last["op"].as_str(), &last["data"]),
        (Some("latest"), &end["data"])
    );

    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postgame.messages WHERE channel = $1")
            .bind(&channel)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let ticks = end["data"]["tick"].as_i64().unwrap();
    // Creation, the join, the point that ended it.
    assert_eq!(logged, 3, "{ticks} ticks");
    assert!(ticks > 20, "{ticks}");
    // The match's state over HTTP is its latest value; the row keeps no copy of it.
    let (status, got) = app.get(&format!("/v1/matches/{id}"), &alice).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["state"], end["data"]);
    let view: Option<Value> =
        sqlx::query_scalar("SELECT view FROM postgame.matches WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(view, Some(Value::Null));
    app.shutdown().await;
}

async fn ended_at(app: &TestApp, id: &str) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT ended_at FROM postgame.matches WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn exists(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM postgame.matches WHERE id = $1::uuid)")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A Tic Tac Toe match that alice joins and leaves: `abandoned`, over.
async fn abandoned_match(app: &TestApp) -> String {
    let alice = app.token("alice");
    let id = app.create_match(&alice, "tictactoe", json!({})).await;
    http_act(app, &alice, &id, "join", json!({})).await;
    http_act(app, &alice, &id, "leave", json!({})).await;
    app.wait_until(&format!(
        "SELECT status = 'abandoned' FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    id
}

#[tokio::test]
async fn ended_matches_are_pruned_after_the_retention_and_live_or_recent_ones_are_kept() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    // An old ended match (its end moved an hour back) and a recent one.
    let old = abandoned_match(&app).await;
    assert!(ended_at(&app, &old).await.is_some(), "the end is stamped");
    sqlx::query(
        "UPDATE postgame.matches SET created_at = created_at - interval '1 hour',
                ended_at = ended_at - interval '1 hour' WHERE id = $1::uuid",
    )
    .bind(&old)
    .execute(&app.pool)
    .await
    .unwrap();
    let recent = abandoned_match(&app).await;
    // A match that ended and was rematched: live again, its end cleared.
    let rematched = app.create_match(&alice, "tictactoe", json!({})).await;
    http_act(&app, &alice, &rematched, "join", json!({})).await;
    http_act(&app, &bob, &rematched, "join", json!({})).await;
    for (who, cell) in [(&alice, 0), (&bob, 3), (&alice, 1), (&bob, 4), (&alice, 2)] {
        http_act(&app, who, &rematched, "move", json!({ "cell": cell })).await;
    }
    app.wait_until(&format!(
        "SELECT status = 'won' FROM postgame.matches WHERE id = '{rematched}'"
    ))
    .await;
    assert!(ended_at(&app, &rematched).await.is_some());
    http_act(&app, &alice, &rematched, "rematch", json!({})).await;
    http_act(&app, &bob, &rematched, "rematch", json!({})).await;
    app.wait_until(&format!(
        "SELECT status = 'playing' FROM postgame.matches WHERE id = '{rematched}'"
    ))
    .await;
    assert_eq!(
        ended_at(&app, &rematched).await,
        None,
        "a rematch clears the end"
    );
    // A match still waiting.
    let live = app.create_match(&alice, "tictactoe", json!({})).await;

    let ticker = |retention: Duration| {
        Ticker::new(
            app.pool.clone(),
            postgame::game::Registry::builtin(),
            Arc::new(Notifier::new()),
            TickerConfig {
                match_retention: retention,
                ..TickerConfig::new(10, Duration::from_secs(1))
            },
        )
    };
    // A minute's retention: only the match that ended an hour ago goes.
    assert_eq!(
        ticker(Duration::from_secs(60)).prune_once().await.unwrap(),
        1
    );
    assert!(!exists(&app, &old).await);
    for id in [&recent, &rematched, &live] {
        assert!(exists(&app, id).await, "{id} was pruned");
    }
    // No retention at all: the recent ended match goes too; live ones never do.
    assert_eq!(ticker(Duration::ZERO).prune_once().await.unwrap(), 1);
    assert!(!exists(&app, &recent).await);
    for id in [&rematched, &live] {
        assert!(exists(&app, id).await, "{id} was pruned");
    }
    app.shutdown().await;
}

/// A process that runs only tickers serves `/metrics` on `--metrics-listen`, with the
/// clock's metrics: ticks, lateness, batch sizes and the matches-due gauge, which counts
/// exactly the matches whose `next_tick_at` has passed.
#[tokio::test]
async fn a_ticker_process_serves_its_metrics_and_counts_the_matches_due() {
    let (_db, opts) = TestDb::new().await;
    let db_url = crate::helpers::database_url(&opts);
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    postgame::store::migrate(&pool).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (info, _) =
            postgame::matches::match_create(&pool, &postgame::game::noop::Noop, &json!({"hz": 10}))
                .await
                .unwrap();
        ids.push(info.id);
    }
    // Two overdue, one an hour away; nothing ticks them yet.
    sqlx::query(
        "UPDATE postgame.matches SET next_tick_at = CASE WHEN id = $1 \
         THEN now() + interval '1 hour' ELSE now() - interval '1 second' END",
    )
    .bind(ids[0])
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        postgame::ticker::matches_clock_counts(&pool).await.unwrap(),
        (2, 3)
    );

    let mut config = crate::helpers::test_config(&db_url);
    config.roles = vec![postgame::config::Role::Ticker];
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = postgame::start(config, postgame::game::Registry::builtin(), None)
        .await
        .unwrap();
    assert_eq!(server.addr, None, "no gateway");
    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let mut body = String::new();
    for _ in 0..100 {
        body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if [
            "postgame_matches_due",
            "postgame_matches_scheduled",
            "postgame_ticks_total",
            "postgame_tick_lateness_seconds",
            "postgame_tick_batch_size",
        ]
        .iter()
        .all(|m| body.contains(m))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in [
        "postgame_matches_due",
        "postgame_matches_scheduled",
        "postgame_ticks_total",
        "postgame_tick_lateness_seconds",
        "postgame_tick_batch_size",
    ] {
        assert!(body.contains(m), "{m} missing from:\n{body}");
    }
    // The tickers took the two overdue matches (and only those) on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ticked: Vec<bool> = loop {
        assert!(
            Instant::now() < deadline,
            "the overdue matches were never ticked"
        );
        let rows: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT id, version FROM postgame.matches ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let v: Vec<bool> = ids
            .iter()
            .map(|id| rows.iter().any(|(r, n)| r == id && *n > 0))
            .collect();
        if v[1] && v[2] {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ticked, [false, true, true]);
    server.shutdown().await;
}
