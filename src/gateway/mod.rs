//! The gateway role: axum HTTP and WebSocket. It authenticates, checks capabilities,
//! hands publishes to the group-committing publisher, serves history, and fans broadcasts
//! out through the hub. It holds no game state: any gateway serves any client.

pub mod auth;
pub mod error;
pub mod frames;
pub mod http;
pub mod limits;
pub mod matchmaker;
pub mod serve;
pub mod web;
pub mod ws;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use self::auth::{Auth, AuthError, Cap, Identity};
use self::error::{ApiError, Code};
use crate::broadcast::hub::Hub;
use crate::broadcast::notify::Notifier;
use crate::game::Registry;
use crate::ids::Channel;
use crate::queue::publisher::{PublishRequest, Publisher};

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub heartbeat: Duration,
    pub max_frame_bytes: usize,
    pub outbox_frames: usize,
    /// A WebSocket connection's read buffer (`--ws-read-buffer-bytes`).
    pub read_buffer_bytes: usize,
    pub allow_guests: bool,
    pub guest_token_ttl: chrono::Duration,
    /// Longest a write to a WebSocket may take before the connection is dropped.
    pub write_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Per-connection publish bucket (rate per second, burst); `None`: no limit.
    pub conn_publish: Option<(f64, f64)>,
    /// Matches per client and minute, across gateways (0: no limit).
    pub matches_per_client_per_minute: u32,
    /// How long a matchmaker ticket waits for a match.
    pub matchmaker_ticket_ttl: Duration,
}

/// The keyed limits of a gateway.
pub struct Limits {
    pub guest_tokens: limits::Keyed<std::net::IpAddr>,
    pub matches: limits::Keyed<std::net::IpAddr>,
    /// Matchmaker tickets per source address (the match-creation setting, its own buckets).
    pub tickets: limits::Keyed<std::net::IpAddr>,
}

/// Everything a request handler needs.
pub struct AppState {
    pub pool: PgPool,
    pub auth: Auth,
    pub games: Registry,
    pub publisher: Publisher,
    /// Who is online on this gateway (`postgame.sessions`, for the matchmaker).
    pub online: crate::presence::Online,
    pub hub: Arc<Hub>,
    pub notifier: Arc<Notifier>,
    pub config: GatewayConfig,
    pub limits: Limits,
    /// Distinguishes this process's connection ids from other gateways'.
    pub instance: String,
    pub next_conn: AtomicU64,
    /// Cancelled at shutdown: sessions close with 1001.
    pub stop: CancellationToken,
    /// Cancelled first at shutdown, before anything stops: `/readyz` answers `503 draining`
    /// from then on, while the listener still accepts and in-flight work finishes, so a
    /// load balancer takes this gateway out before its connections go.
    pub draining: CancellationToken,
    pub sessions: tokio_util::task::TaskTracker,
    /// Bumped when this gateway finds it was declared dead: every session closes with 1011
    /// ([`crate::presence::Liveness`]).
    pub expired: Arc<tokio::sync::watch::Sender<u64>>,
    pub metrics: Option<PrometheusHandle>,
}

/// Longest event name.
const MAX_NAME: usize = 128;
/// Longest idempotency key.
const MAX_KEY: usize = 200;

pub(crate) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks a publish (WebSocket or HTTP alike) and turns it into a request.
pub fn prepare_publish(
    me: &Identity,
    channel: &str,
    name: String,
    data: Value,
    key: Option<String>,
) -> Result<PublishRequest, ApiError> {
    let channel = Channel::parse(channel).map_err(ApiError::bad_request)?;
    if !me.can(Cap::Publish, &channel) {
        return Err(ApiError::forbidden(
            "not allowed to publish on this channel",
        ));
    }
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`name` has 1 to {MAX_NAME} characters and no control characters"
        )));
    }
    if name.starts_with('$') {
        return Err(ApiError::bad_request(
            "names starting with `$` are reserved",
        ));
    }
    if let Some(k) = &key {
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(ApiError::bad_request(format!(
                "`key` has 1 to {MAX_KEY} bytes"
            )));
        }
    }
    if has_nul(&data) {
        return Err(ApiError::bad_request(
            "`data` may not contain the NUL character (\\u0000)",
        ));
    }
    Ok(PublishRequest {
        client: Some(me.client.clone()),
        channel,
        name,
        data,
        key,
    })
}

/// The smallest WebSocket read buffer: room for a frame header (14 bytes) and a small
/// control message in one read.
const MIN_READ_BUFFER: usize = 64;

async fn ws_handler(
    State(app): State<Arc<AppState>>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    let identity: Result<Identity, AuthError> = http::request_token(&parts)
        .ok_or(AuthError::Missing)
        .and_then(|t| app.auth.verify(&t));
    // The transport limit is twice the contract's, so a frame just over it is answered
    // with `too_large` and a clean 1009 by the session rather than a torn connection.
    let limit = app.config.max_frame_bytes.saturating_mul(2).max(1024);
    let sessions = app.sessions.clone();
    // The read buffer is zero-filled to its size on the first read, so it is resident for
    // the connection's life: it is what an idle connection costs beyond its socket. The
    // write buffer only holds frames queued before a flush, and grows as they need.
    ws.read_buffer_size(app.config.read_buffer_bytes.max(MIN_READ_BUFFER))
        .write_buffer_size(4096)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            sessions.track_future(async move {
                use futures_util::StreamExt;
                let (sink, stream) = socket.split();
                ws::run(app, identity, sink, stream).await;
            })
        })
}

/// Unknown paths: a 404 in the contract's JSON format.
async fn not_found() -> ApiError {
    ApiError::Client(Code::NotFound, "no such endpoint".into())
}

/// A known path with the wrong method: 405, still as JSON.
async fn method_not_allowed() -> Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "code": "bad_request", "message": "method not allowed" });
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// The OpenAPI 3.1 document of the HTTP API, served at `/v1/openapi.json`. Written by hand
/// and checked against `api_routes` by the tests (every route documented, every
/// documented route served).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
        .into_response()
}

/// Every route of the HTTP API (path, handlers), the one list the router is built from and
/// the OpenAPI test reads ([`api_paths`]). Browser files are not in it.
fn api_routes() -> Vec<(&'static str, axum::routing::MethodRouter<Arc<AppState>>)> {
    vec![
        ("/v1/ws", get(ws_handler)),
        ("/v1/tokens", post(http::token_create)),
        (
            "/v1/matches",
            post(http::match_create_handler).get(http::match_list_handler),
        ),
        ("/v1/matches/{id}", get(http::match_get_handler)),
        ("/v1/matchmaker", post(matchmaker::ticket_create_handler)),
        (
            "/v1/matchmaker/{ticket}",
            get(matchmaker::ticket_get_handler).delete(matchmaker::ticket_cancel_handler),
        ),
        (
            "/v1/channels/{channel}/messages",
            post(http::channel_publish_handler),
        ),
        (
            "/v1/channels/{channel}/history",
            get(http::channel_history_handler),
        ),
        ("/v1/openapi.json", get(openapi)),
        ("/healthz", get(http::healthz)),
        ("/readyz", get(http::readyz)),
        ("/metrics", get(http::metrics)),
    ]
}

/// The paths of the API routes (`api_routes`), in the router's `{param}` syntax (which
/// is OpenAPI's).
pub fn api_paths() -> Vec<&'static str> {
    api_routes().into_iter().map(|(path, _)| path).collect()
}

/// The gateway's routes: the API, the built-in browser files, and the application's
/// `pages` (which replace a built-in file at the same path).
pub fn router(app: Arc<AppState>, pages: &web::Pages) -> Router {
    let body_limit = app.config.max_frame_bytes;
    let mut router = Router::new();
    for (path, handler) in api_routes() {
        router = router.route(path, handler);
    }
    let builtin: [(&str, axum::routing::MethodRouter<Arc<AppState>>); 8] = [
        ("/", get(web::index)),
        ("/postgame.js", get(web::postgame_js)),
        ("/postgame.d.ts", get(web::postgame_d_ts)),
        ("/app.js", get(web::app_js)),
        ("/style.css", get(web::style_css)),
        ("/pong", get(web::pong)),
        ("/pong.js", get(web::pong_js)),
        ("/pong.css", get(web::pong_css)),
    ];
    for (path, handler) in builtin {
        if !pages.has(path) {
            router = router.route(path, handler);
        }
    }
    pages
        .route(router)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}
