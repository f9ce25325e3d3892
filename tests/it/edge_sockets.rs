//! Every socket bounded in time (#10.4), against the real binary so that its descriptors
//! and its `/metrics` are its own: slow readers' sockets are released, a slowloris batch
//! does not lock out a normal client, running out of descriptors refuses new connections
//! while old ones are served, and `postgame_tcp_connections` counts what is really open.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use postgame::gateway::auth::{Auth, Cap};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{database_url, TestDb, SECRET, WAIT};

/// A `postgame serve` process on a fresh port, killed when dropped.
struct Proc {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts the binary with `args`, under `ulimit -n fds` when given.
    async fn start(db_url: &str, args: &[&str], fds: Option<u32>) -> Proc {
        let bin = env!("CARGO_BIN_EXE_postgame");
        let mut cmd = tokio::process::Command::new("sh");
        let limit = fds
            .map(|n| format!("ulimit -n {n} && "))
            .unwrap_or_default();
        cmd.arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db_url])
            .args([
                "--db-connections",
                "4",
                "--workers",
                "1",
                "--poll-seconds",
                "0.5",
            ])
            .args(args)
            .env("POSTGAME_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the postgame binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines = Arc::clone(&log);
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Some(at) = line.split("listening on http://").nth(1) {
                    let addr: SocketAddr = at.trim_end_matches('/').parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = tokio::time::timeout(WAIT * 2, rx)
            .await
            .expect("the server starts listening")
            .expect("the server logs its address");
        Proc { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// The server's own sockets on its gateway port (connections, not the listener).
    fn open_sockets(&self) -> usize {
        let mine: HashSet<u64> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect();
        let port = format!("{:04X}", self.addr.port());
        let mut n = 0;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = f[1].rsplit(':').next().unwrap();
                let (state, inode) = (f[3], f[9].parse::<u64>().unwrap_or(0));
                if local_port == port && state != "0A" && mine.contains(&inode) {
                    n += 1;
                }
            }
        }
        n
    }

    async fn metric(&self, name: &str) -> f64 {
        // `Connection: close`: the scrape leaves no connection behind to be counted.
        let text = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.addr))
            .header("connection", "close")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn healthy(&self) -> bool {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
            .get(format!("http://{}/healthz", self.addr))
            .send()
            .await;
        matches!(r, Ok(r) if r.status().is_success())
    }
}

/// Waits until `check` holds, for at most `within`.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token_with_everything() -> String {
    let caps = std::collections::BTreeMap::from([(
        "*".to_owned(),
        vec![Cap::Publish, Cap::Subscribe, Cap::History],
    )]);
    Auth::new(SECRET)
        .issue("reader", None, Some(caps), chrono::Duration::hours(1))
        .0
}

#[tokio::test]
async fn slow_readers_sockets_are_closed_and_released() {
    let (_db, opts) = TestDb::new().await;
    let server = Proc::start(
        &database_url(&opts),
        &[
            "--write-timeout-seconds",
            "1",
            "--outbox-frames",
            "8",
            "--heartbeat-seconds",
            "300",
        ],
        None,
    )
    .await;
    let token = token_with_everything();
    // Readers with a tiny receive window, so the server's writes block soon.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(server.addr).await.unwrap();
        let url = format!("ws://{}/v1/ws?token={token}", server.addr);
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        ws.send(Message::text(
            json!({"op": "subscribe", "channel": "news"}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("no reply to subscribe")
            };
            if t.contains("subscribed") {
                break;
            }
        }
        readers.push(ws); // ...and never read again.
    }
    assert!(server.open_sockets() >= 4);
    let http = reqwest::Client::new();
    let big = "x".repeat(50_000);
    for i in 0..60 {
        let r = http
            .post(format!("http://{}/v1/channels/news/messages", server.addr))
            .bearer_auth(&token)
            .json(&json!({ "name": "blob", "data": { "i": i, "blob": big } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    // The readers were cut off (4008 on a full outbox), and their sockets released within
    // the write timeout although they never read a byte: only the /metrics connection
    // below is left.
    let released = eventually(WAIT, || async { server.open_sockets() == 0 }).await;
    assert!(released, "{} sockets still open", server.open_sockets());
    assert_eq!(server.metric("postgame_connections").await, 0.0);
    // The gauge counts what is open: the scrape's own connection.
    let counted = eventually(WAIT, || async {
        server.metric("postgame_tcp_connections").await == 1.0
    })
    .await;
    assert!(
        counted,
        "{}",
        server.metric("postgame_tcp_connections").await
    );
    drop(readers);
}

#[tokio::test]
async fn a_slowloris_batch_does_not_lock_out_a_normal_client() {
    let (_db, opts) = TestDb::new().await;
    // Fewer descriptors than silent sockets: without a header timeout they would starve
    // the server for good.
    let server = Proc::start(
        &database_url(&opts),
        &[
            "--http-header-timeout-seconds",
            "1",
            "--max-connections-per-ip",
            "0",
        ],
        Some(256),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        silent.push(s);
    }
    // A normal client gets through.
    assert!(eventually(WAIT, || server.healthy()).await);
    // Every silent socket was closed by the server (EOF or reset), none left hanging.
    for mut s in silent {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "a silent socket was never closed");
    }
    let log = server.log.lock().unwrap().clone();
    let starved = log
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(starved <= 1, "logged more than once a minute: {log:?}");
}

#[tokio::test]
async fn out_of_descriptors_new_connections_are_refused_and_old_ones_served() {
    let (_db, opts) = TestDb::new().await;
    let server = Proc::start(
        &database_url(&opts),
        &[
            "--http-header-timeout-seconds",
            "60",
            "--max-connections-per-ip",
            "0",
        ],
        Some(128),
    )
    .await;
    let url = format!(
        "ws://{}/v1/ws?token={}",
        server.addr,
        token_with_everything()
    );
    let (mut old, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = old.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("connected"));
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // New connections are closed at once rather than left waiting.
    let mut probe = TcpStream::connect(server.addr).await.unwrap();
    let _ = probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, probe.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "a connection beyond the descriptors was left hanging"
    );
    assert!(buf.is_empty() || !String::from_utf8_lossy(&buf).contains("200 OK"));
    // The old connection is still served.
    old.send(Message::text(json!({"op": "ping", "id": 1}).to_string()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, old.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pong.to_text().unwrap().contains("pong"), "{pong:?}");
    // Logged once, not per refused connection.
    let log = server.log.lock().unwrap().clone();
    let starved = log
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert_eq!(starved, 1, "{log:?}");
    // Once the flood is gone, new clients are served again.
    drop(flood);
    assert!(eventually(WAIT, || server.healthy()).await);
}
