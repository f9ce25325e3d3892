//! The test harness: a fresh database per test ([`TestDb`]), the real server on
//! port 0, real WebSocket clients, and typed helpers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use postgame::config::ServeConfig;
use postgame::game::Registry;
use postgame::gateway::auth::Auth;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const WAIT: Duration = Duration::from_secs(15);

/// The URL of the per-test database (same server as DATABASE_URL).
pub fn database_url(opts: &PgConnectOptions) -> String {
    postgame::setup::url_with_database(
        &base_url(),
        opts.get_database().expect("a test database is named"),
    )
    .expect("DATABASE_URL names a database")
}

/// `DATABASE_URL`; when that is the default (as `.cargo/config.toml` sets it) and nothing
/// answers there, the URL of a private cluster in the target folder, started as `serve`
/// would start one (`postgame cluster start --if-needed`) and left running for the next
/// run (`postgame cluster stop --data-dir target/tmp/pgdata` stops it; `scripts/test.sh`
/// does).
fn base_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let url =
            std::env::var("DATABASE_URL").expect("DATABASE_URL is set (see .cargo/config.toml)");
        if url != postgame::config::DEFAULT_DATABASE_URL {
            return url;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
            .args(["cluster", "start", "--if-needed", "--data-dir"])
            .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgdata"))
            .env("RUST_LOG", "warn")
            .output()
            .expect("postgame runs");
        assert!(
            out.status.success(),
            "no database for the tests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
    .clone()
}

/// A fresh, empty database for one test, on the server of `DATABASE_URL`, dropped when
/// this value is dropped (keep it bound for the whole test: `let (_db, opts) = …`).
///
/// The database named by `DATABASE_URL` is created first when it does not exist yet
/// (from the server's `postgres` maintenance database), so the suite runs on a server
/// where nothing was prepared. Test databases are named `<that name>_t<pid>_<n>`; the
/// first test of a run drops those left behind by earlier runs whose process is gone.
/// `POSTGAME_KEEP_TEST_DBS=1` keeps them, to look at a failed test's tables.
pub struct TestDb {
    name: String,
    base: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> (TestDb, PgConnectOptions) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base: PgConnectOptions = base_url().parse().expect("DATABASE_URL parses");
        let mut conn = master_connect(&base).await;
        sweep_once(&mut conn, &base).await;
        let name = format!(
            "{}{}_{}",
            test_db_prefix(&base),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        let _ = conn.close().await;
        let opts = base.clone().database(&name);
        (TestDb { name, base }, opts)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("POSTGAME_KEEP_TEST_DBS").is_some() {
            return;
        }
        let (name, base) = (self.name.clone(), self.base.clone());
        // Drop runs inside the test's runtime, which cannot block on its own futures:
        // the DROP runs on a runtime of its own, on a thread of its own. FORCE ends the
        // connections a test left open (a server that was not shut down).
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut conn = master_connect(&base).await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// `<DATABASE_URL's database>_t`, cut so that the test databases' names fit in
/// PostgreSQL's 63 bytes.
fn test_db_prefix(base: &PgConnectOptions) -> String {
    let db = base.get_database().unwrap_or("postgres");
    let cut: String = db.chars().take(40).collect();
    format!("{cut}_t")
}

/// A connection to the database of `DATABASE_URL`, which is created when it is missing.
async fn master_connect(base: &PgConnectOptions) -> PgConnection {
    match PgConnection::connect_with(base).await {
        Ok(c) => return c,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"),
    }
    let db = base.get_database().expect("DATABASE_URL names a database");
    let mut maint = PgConnection::connect_with(&base.clone().database("postgres"))
        .await
        .expect("the maintenance database `postgres` is reachable");
    match sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&mut maint)
        .await
    {
        Ok(_) => {}
        // Another test of this run created it meanwhile (duplicate_database, or the
        // catalog's unique index when both commit at once).
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
        }
        Err(e) => panic!("cannot create the database {db}: {e}"),
    }
    let _ = maint.close().await;
    PgConnection::connect_with(base)
        .await
        .expect("the database of DATABASE_URL was just created")
}

/// Once per test process: drops the test databases of earlier runs whose process is gone
/// (a run that was killed before its tests could drop them).
async fn sweep_once(conn: &mut PgConnection, base: &PgConnectOptions) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::Relaxed) {
        return;
    }
    let prefix = test_db_prefix(base);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(&prefix)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name[prefix.len()..].split('_').next().unwrap_or("");
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

/// A server configuration suited to tests: small pools, fast polls.
pub fn test_config(db_url: &str) -> ServeConfig {
    // Every test client comes from 127.0.0.1, and some publish or create matches as fast as
    // they can: the per-client limits are off unless a test turns them on.
    let mut c = ServeConfig::defaults(db_url).without_client_limits();
    c.secret = SECRET.into();
    c.db_connections = 6;
    c.workers = 2;
    c.poll_seconds = 0.5;
    // Floods of the concurrency tests go far beyond a client's limits; tests/it/limits.rs
    // turns them on.
    c.client_publish_burst = 0.0;
    c.client_publish_rate = 0.0;
    c.client_pending_max = 0;
    c
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub db_url: String,
    pub pool: PgPool,
    pub http: reqwest::Client,
    server: Option<postgame::Server>,
}

impl TestApp {
    pub async fn spawn(opts: PgConnectOptions) -> Self {
        Self::spawn_with(opts, Registry::builtin(), |_| {}).await
    }

    pub async fn spawn_with(
        opts: PgConnectOptions,
        games: Registry,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let db_url = database_url(&opts);
        let mut config = test_config(&db_url);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = postgame::start(config, games, Some(listener))
            .await
            .expect("server starts");
        let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
        Self {
            addr: server.addr.expect("gateway runs"),
            db_url,
            pool,
            http: reqwest::Client::new(),
            server: Some(server),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A token for `sub` with default capabilities.
    pub fn token(&self, sub: &str) -> String {
        Auth::new(SECRET)
            .issue(sub, None, None, chrono::Duration::hours(1))
            .0
    }

    /// A token with every capability on every channel.
    pub fn admin_token(&self) -> String {
        use postgame::gateway::auth::Cap;
        let caps = std::collections::BTreeMap::from([(
            "*".to_owned(),
            vec![Cap::Publish, Cap::Subscribe, Cap::History],
        )]);
        Auth::new(SECRET)
            .issue("admin", None, Some(caps), chrono::Duration::hours(1))
            .0
    }

    /// GET `path` with `token`: the status and the JSON body (Null when not JSON).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST `body` as JSON to `path` with `token`: the status and the JSON body.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_match(&self, token: &str, game: &str, config: Value) -> String {
        let (status, body) = self
            .post(
                "/v1/matches",
                token,
                &json!({ "game": game, "config": config }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn ws(&self, token: &str) -> Client {
        let mut c = self.ws_raw(&format!("/v1/ws?token={token}")).await;
        let hello = c.recv().await;
        assert_eq!(hello["op"], "connected", "{hello}");
        c.client_id = hello["client_id"].as_str().unwrap().to_owned();
        c
    }

    /// A WebSocket client of another gateway (e.g. a gateway process) at `addr`.
    pub async fn ws_at(addr: SocketAddr, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={token}"))
            .await
            .expect("websocket connects");
        let mut c = Client {
            ws,
            client_id: String::new(),
            buffered: VecDeque::new(),
            next_id: 0,
        };
        let hello = c.recv().await;
        assert_eq!(hello["op"], "connected", "{hello}");
        c.client_id = hello["client_id"].as_str().unwrap().to_owned();
        c
    }

    pub async fn ws_raw(&self, path_and_query: &str) -> Client {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}{path_and_query}", self.addr))
                .await
                .expect("websocket connects");
        Client {
            ws,
            client_id: String::new(),
            buffered: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Waits until `sql` (a scalar bool query) is true.
    pub async fn wait_until(&self, sql: &str) {
        let deadline = tokio::time::Instant::now() + WAIT * 4;
        loop {
            let ok: bool = sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap();
            if ok {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {sql}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub client_id: String,
    buffered: VecDeque<Value>,
    next_id: u64,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Closed {
    Code(u16),
    Abrupt,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_owned())).await.unwrap();
    }

    async fn read_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame, whatever it is.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.buffered.pop_front() {
            return v;
        }
        self.read_frame().await.expect("connection is open")
    }

    /// The next frame matching `pred`; others are kept for later `recv`s.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.buffered.iter().position(&pred) {
            return self.buffered.remove(i).unwrap();
        }
        loop {
            let v = self.read_frame().await.expect("connection is open");
            if pred(&v) {
                return v;
            }
            self.buffered.push_back(v);
        }
    }

    /// The reply to request `id`.
    pub async fn reply(&mut self, id: u64) -> Value {
        self.recv_where(|v| v["id"] == json!(id)).await
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn subscribe(&mut self, channel: &str, since: Option<i64>) -> Value {
        let id = self.id();
        let mut f = json!({ "op": "subscribe", "id": id, "channel": channel });
        if let Some(s) = since {
            f["since"] = json!(s);
        }
        self.send(f).await;
        self.reply(id).await
    }

    pub async fn publish(&mut self, channel: &str, name: &str, data: Value) -> Value {
        let id = self.id();
        self.send(
            json!({ "op": "publish", "id": id, "channel": channel, "name": name, "data": data }),
        )
        .await;
        self.reply(id).await
    }

    pub async fn publish_keyed(
        &mut self,
        channel: &str,
        name: &str,
        data: Value,
        key: &str,
    ) -> Value {
        let id = self.id();
        self.send(json!({ "op": "publish", "id": id, "channel": channel, "name": name, "data": data, "key": key }))
            .await;
        self.reply(id).await
    }

    /// Sends a control message and waits for its ack.
    pub async fn act(&mut self, match_id: &str, name: &str, data: Value) -> i64 {
        let ack = self
            .publish(&format!("control:{match_id}"), name, data)
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        ack["msg_id"].as_i64().unwrap()
    }

    /// The next `message` frame on `channel`.
    pub async fn message(&mut self, channel: &str) -> Value {
        let channel = channel.to_owned();
        self.recv_where(move |v| v["op"] == "message" && v["channel"] == channel)
            .await
    }

    /// The next `message` or `latest` frame on `channel`.
    pub async fn broadcast(&mut self, channel: &str) -> Value {
        let channel = channel.to_owned();
        self.recv_where(move |v| {
            (v["op"] == "message" || v["op"] == "latest") && v["channel"] == channel
        })
        .await
    }

    /// The next `message` on `channel`, or how the connection closed.
    pub async fn try_message(&mut self, channel: &str) -> Result<Value, Closed> {
        if let Some(i) = self
            .buffered
            .iter()
            .position(|v| v["op"] == "message" && v["channel"] == channel)
        {
            return Ok(self.buffered.remove(i).unwrap());
        }
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("nothing within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Err(Closed::Abrupt),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(Closed::Code(f.map_or(1005, |f| u16::from(f.code))))
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["op"] == "message" && v["channel"] == channel {
                        return Ok(v);
                    }
                    self.buffered.push_back(v);
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next message named `name` on `channel`.
    pub async fn named(&mut self, channel: &str, name: &str) -> Value {
        let (channel, name) = (channel.to_owned(), name.to_owned());
        self.recv_where(move |v| {
            v["op"] == "message" && v["channel"] == channel && v["name"] == name
        })
        .await
    }

    /// Reads state broadcasts on match:<id> until one satisfies `pred`; returns its data.
    pub async fn state_until(&mut self, match_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let channel = format!("match:{match_id}");
        loop {
            let m = self.named(&channel, "state").await;
            if pred(&m["data"]) {
                return m["data"].clone();
            }
        }
    }

    /// Waits for the connection to end and returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("connection did not close within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::Abrupt,
                Ok(Some(Ok(Message::Close(Some(f))))) => return Closed::Code(u16::from(f.code)),
                Ok(Some(Ok(Message::Close(None)))) => {
                    return Closed::Code(u16::from(CloseCode::Status))
                }
                Ok(Some(Ok(Message::Text(t)))) => self
                    .buffered
                    .push_back(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// Plays Tic Tac Toe moves `(player, cell)` (player 0 is `x`, 1 is `o`), each waiting for
/// the mover to see its move in a state broadcast.
pub async fn play(x: &mut Client, o: &mut Client, match_id: &str, moves: &[(usize, usize)]) {
    for &(player, cell) in moves {
        let c = if player == 0 { &mut *x } else { &mut *o };
        c.act(match_id, "move", json!({ "cell": cell })).await;
        c.state_until(match_id, |s| s["board"][cell] != Value::Null)
            .await;
    }
}

/// Terminates, 40 times 25 ms apart, every busy connection of this database whose
/// `application_name` is `app_name` (a role's pool: "postgame worker", "postgame ticker"),
/// killing its transactions mid-way. Returns how many connections it terminated.
pub async fn kill_backends(pool: PgPool, app_name: &'static str) -> i64 {
    let mut kills = 0i64;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1
               AND state IN ('active', 'idle in transaction')",
        )
        .bind(app_name)
        .fetch_one(&pool)
        .await
        .unwrap();
        kills += n;
    }
    kills
}

/// A `postgame serve --role <role>` process of this build on `db_url`: two tasks of the
/// role, batches of 10, a 0.5 s poll, killed when dropped.
pub fn role_process(db_url: &str, role: &str) -> tokio::process::Child {
    role_process_with(db_url, role, &[])
}

/// [`role_process`] with extra environment variables (e.g. `POSTGAME_LEASE_SECONDS`).
pub fn role_process_with(db_url: &str, role: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    let (tasks, batch) = match role {
        "worker" => ("POSTGAME_WORKERS", "POSTGAME_BATCH_SIZE"),
        "ticker" => ("POSTGAME_TICKERS", "POSTGAME_TICK_BATCH"),
        other => panic!("no role process for {other}"),
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["serve", "--role", role, "--database-url", db_url])
        .env(tasks, "2")
        .env(batch, "10")
        .env("POSTGAME_DB_CONNECTIONS", "4")
        .env("POSTGAME_POLL_SECONDS", "0.5")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the postgame binary starts")
}

/// A Tic Tac Toe game in seven control messages that X wins with the top row, as
/// (player: 0 for X, 1 for O; name; data), for tests that queue the same game in many
/// matches and check it was applied exactly once ([`assert_every_match_won_by_x_once`]).
pub fn x_wins_script() -> [(usize, &'static str, Value); 7] {
    [
        (0, "join", json!({})),
        (1, "join", json!({})),
        (0, "move", json!({"cell": 0})),
        (1, "move", json!({"cell": 3})),
        (0, "move", json!({"cell": 1})),
        (1, "move", json!({"cell": 4})),
        (0, "move", json!({"cell": 2})),
    ]
}

/// Every one of the `n` matches played [`x_wins_script`] to the end, each message applied
/// exactly once and in order (version 7, X won, nothing rejected).
pub async fn assert_every_match_won_by_x_once(pool: &PgPool, n: usize) {
    let rows: Vec<(String, i64, Value)> =
        sqlx::query_as("SELECT status, version, state FROM postgame.matches")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), n);
    for (status, version, state) in rows {
        assert_eq!(
            version, 7,
            "every control message applied exactly once: {state}"
        );
        assert_eq!(status, "won", "{state}");
        assert_eq!(state["winner"], "X", "{state}");
    }
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postgame.messages WHERE name = 'rejected'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(rejected, 0, "moves were applied in order, none twice");
}

/// Field `field` of match `id`'s stored state, as `T` (the test games keep what they saw
/// there).
pub async fn state_field<T: serde::de::DeserializeOwned>(
    app: &TestApp,
    id: &str,
    field: &str,
) -> T {
    let state: Value = sqlx::query_scalar("SELECT state FROM postgame.matches WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    serde_json::from_value(state[field].clone()).unwrap()
}

/// A pool of `connections` on the test database `opts`, with postgame's migrations
/// applied: for tests that drive the tables themselves, without a server.
pub async fn migrated_pool(opts: &PgConnectOptions, connections: u32) -> PgPool {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(opts.clone())
        .await
        .unwrap();
    postgame::store::migrate(&pool).await.unwrap();
    pool
}

/// A new guest from the server at `base` (`http://host:port`): the JSON of
/// `POST /v1/tokens` (`token`, `client_id`, …).
pub async fn guest(http: &reqwest::Client, base: &str) -> Value {
    http.post(format!("{base}/v1/tokens"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Makes the COMMIT of a transaction that inserted a control message named `slow` sleep
/// for 60 s (a deferred trigger runs inside COMMIT, after the rows were written), so a
/// test can cut that COMMIT: terminate its backend, crash Postgres.
pub async fn slow_commits(pool: &PgPool) {
    for sql in [
        "CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.name = 'slow' THEN PERFORM pg_sleep(60); END IF; RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON postgame.control
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit()",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

/// The backend pid and xid of the COMMIT sleeping in [`slow_commits`]' trigger, once
/// there is one.
pub async fn sleeping_commit(pool: &PgPool) -> (i32, i64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found: Option<(i32, i64)> = sqlx::query_as(
            "SELECT pid, backend_xid::text::int8 FROM pg_stat_activity
             WHERE query = 'COMMIT' AND wait_event = 'PgSleep' AND datname = current_database()",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(found) = found {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no COMMIT sleeping in the slow_commit trigger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publisher of the test's own on `pool` (one shard, no limits), its task tracker and
/// its stop token.
pub fn publisher_on(
    pool: &PgPool,
) -> (
    postgame::queue::publisher::Publisher,
    tokio_util::task::TaskTracker,
    tokio_util::sync::CancellationToken,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = postgame::queue::publisher::Publisher::start(
        pool.clone(),
        std::sync::Arc::new(postgame::broadcast::notify::Notifier::new()),
        1,
        postgame::queue::publisher::Limits::NONE,
        &tracker,
        stop.clone(),
    );
    (publisher, tracker, stop)
}
