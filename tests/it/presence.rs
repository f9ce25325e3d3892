//! Presence that survives the crash of a gateway (#11.2): a gateway process killed with
//! SIGKILL never sends its players' `$disconnected`; another process's sweep does, within
//! the presence timeout, and a Tic Tac Toe player who never returns forfeits. A gateway
//! that was only frozen, and declared dead meanwhile, closes its connections when it wakes,
//! so that its clients come back and are recorded again.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Client, Closed, TestApp, TestDb, SECRET, WAIT};

/// A `--role gateway` process on `app`'s database with a 2 s presence timeout, listening.
async fn gateway_process(app: &TestApp) -> (tokio::process::Child, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["serve", "--role", "gateway", "--listen", &addr.to_string()])
        .args(["--database-url", &app.db_url])
        .env("POSTGAME_SECRET", SECRET)
        .env("POSTGAME_PRESENCE_TIMEOUT_SECONDS", "2")
        .env("POSTGAME_DB_CONNECTIONS", "4")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the postgame binary starts");
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway process never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (gateway, addr)
}

/// A Tic Tac Toe match in play: Xena on `app`'s own gateway, Otto on the one at `addr`;
/// returns the match id and both clients once both connections are recorded.
async fn match_across(
    app: &TestApp,
    addr: std::net::SocketAddr,
    reconnect_seconds: u32,
) -> (String, Client, Client) {
    let (tx, to) = (app.token("xena"), app.token("otto"));
    let id = app
        .create_match(
            &tx,
            "tictactoe",
            json!({"reconnect_seconds": reconnect_seconds, "turn_seconds": 3600}),
        )
        .await;
    let channel = format!("match:{id}");
    let mut x = app.ws(&tx).await;
    x.subscribe(&channel, None).await;
    x.act(&id, "join", json!({})).await;
    let mut o = TestApp::ws_at(addr, &to).await;
    o.subscribe(&channel, None).await;
    o.act(&id, "join", json!({})).await;
    app.wait_until(&format!(
        "SELECT status = 'playing' AND (SELECT count(*) = 2 FROM postgame.presence)
         FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    (id, x, o)
}

#[tokio::test]
async fn a_killed_gateways_players_are_disconnected_and_one_who_never_returns_forfeits() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.presence_timeout_seconds = 2.0
    })
    .await;
    let (mut gateway, addr) = gateway_process(&app).await;
    // Otto plays through the gateway process.
    let (id, x, _o) = match_across(&app, addr, 1).await;

    gateway.kill().await.unwrap();
    let killed = Instant::now();
    // Otto's connection is recorded for the dead gateway until another process's sweep
    // turns it into `$disconnected`; after the 1 s reconnect grace he forfeits.
    app.wait_until(&format!(
        "SELECT status = 'won' AND state->>'winner' = 'X' FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    eprintln!(
        "the killed gateway's player forfeited {:?} after the kill (presence timeout 2 s, \
         reconnect grace 1 s)",
        killed.elapsed()
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.presence")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "only Xena's connection is still recorded");
    let gateways: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.gateways")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        gateways, 1,
        "the dead gateway was removed, the live one stays"
    );
    drop(x);
    app.shutdown().await;
}

#[tokio::test]
async fn a_gateway_declared_dead_while_frozen_closes_its_connections_and_they_are_recorded_again() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.presence_timeout_seconds = 2.0
    })
    .await;
    let (gateway, addr) = gateway_process(&app).await;
    let (id, x, mut o) = match_across(&app, addr, 3600).await;
    let pid = gateway.id().expect("the gateway process runs").to_string();
    let signal = |sig: &'static str| {
        let pid = pid.clone();
        async move {
            let ok = tokio::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .await
                .unwrap()
                .success();
            assert!(ok, "kill {sig} {pid}");
        }
    };

    // Frozen past the presence timeout: the other process declares it dead and Otto
    // disconnected, though his connection is still open.
    signal("-STOP").await;
    app.wait_until(&format!(
        "SELECT view->'connected'->>'O' = 'false' AND (SELECT count(*) = 1 FROM postgame.presence)
         FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    signal("-CONT").await;
    // Woken, it finds its registration gone and closes the connections its matches count
    // as gone (its heartbeat interval, 25 s by default, is far from closing it as silent).
    let closed = o.closed().await;
    assert!(
        matches!(closed, Closed::Code(1011)),
        "closed with {closed:?}"
    );
    // Otto comes back as any client does after a 1011: reconnect and resubscribe.
    let mut o = TestApp::ws_at(addr, &app.token("otto")).await;
    o.subscribe(&format!("match:{id}"), None).await;
    app.wait_until(&format!(
        "SELECT view->'connected'->>'O' = 'true' AND status = 'playing'
           AND (SELECT count(*) = 2 FROM postgame.presence)
         FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    drop((x, o, gateway));
    app.shutdown().await;
}

/// A client that subscribes and at once sends `join` (without waiting for `subscribed`)
/// has its `$connected` committed first: the session waits until the presence change is
/// in the publisher before it reads the next frame. Before, the presence task's own
/// write (its `postgame.presence` row) let the `join` overtake it, and the game showed the
/// new player disconnected.
#[tokio::test]
async fn a_join_sent_right_after_subscribing_is_applied_after_its_connected() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("xena"), "tictactoe", json!({}))
        .await;
    // Record the queue's arrivals in order, and make the presence row's write slow, as a
    // busy database would.
    for sql in [
        "CREATE TABLE public.arrivals (id int8, name text)",
        "CREATE FUNCTION public.arrive() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.arrivals VALUES (NEW.id, NEW.name); RETURN NULL; END $$",
        "CREATE TRIGGER arrive AFTER INSERT ON postgame.control
         FOR EACH ROW EXECUTE FUNCTION public.arrive()",
        "CREATE FUNCTION public.slow_presence() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$",
        "CREATE TRIGGER slow_presence BEFORE INSERT ON postgame.presence
         FOR EACH ROW EXECUTE FUNCTION public.slow_presence()",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    let mut xena = app.ws(&app.token("xena")).await;
    let control = format!("control:{id}");
    xena.send(json!({"op": "subscribe", "id": 1, "channel": format!("match:{id}")}))
        .await;
    xena.send(json!({"op": "publish", "id": 2, "channel": control, "name": "join", "data": {}}))
        .await;
    assert_eq!(xena.reply(1).await["op"], "subscribed");
    assert_eq!(xena.reply(2).await["op"], "ack");
    app.wait_until("SELECT count(*) = 2 FROM public.arrivals")
        .await;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM public.arrivals ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(names, ["$connected", "join"], "the queue's order");
    app.wait_until(&format!(
        "SELECT NOT EXISTS (SELECT 1 FROM postgame.control)
            AND view->'connected'->>'X' = 'true'
         FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    app.shutdown().await;
}
