//! The HTTP API of the wire contract: matches, channel publish and history, guest tokens,
//! health, readiness and metrics. Bodies are parsed into typed values at the edge; every
//! refusal is a JSON `{"code", "message"}` with the matching status.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{AuthError, Cap, Identity};
use super::error::{ApiError, Code};
use super::limits::client_ip;
use super::{prepare_publish, AppState};
use crate::broadcast::history_read;
use crate::game::Creation;
use crate::ids::{Channel, ChannelKind, MatchId};
use crate::matches::{
    match_create_by, match_get, match_list, prefix_range, CreateError, CreatedBy, Cursor,
    ListFilter,
};

/// Fewest hex digits `id_prefix` takes (shorter prefixes match too much to mean a match).
pub const MIN_ID_PREFIX: usize = 4;
use crate::queue::publisher::PublishError;

/// The token of a request: `Authorization: Bearer …` or `?token=…`.
pub fn request_token(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        if let Some((scheme, t)) = v.to_str().ok().and_then(|s| s.trim().split_once(' ')) {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(t.trim().to_owned());
            }
        }
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    })
}

/// An authenticated caller.
pub struct Authed(pub Identity);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = request_token(parts).ok_or(AuthError::Missing);
        token
            .and_then(|t| app.auth.verify(&t))
            .map(Authed)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

/// A JSON body, refused with a `bad_request` that says what is wrong (or `too_large`).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> Body<T> {
    /// Parses a request body (public for the fuzzers).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            bytes
        };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    }
}

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::Client(super::error::Code::TooLarge, "body too large".into())
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        Self::parse(&bytes)
    }
}

/// Query parameters, refused with a JSON `bad_request` that says what is wrong.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// How long `/readyz` waits for the database before it answers 503: a load balancer gets
/// its answer within a second whether Postgres is up or not (a pool that cannot connect
/// would otherwise wait its 10 s acquire timeout).
pub const READYZ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// `GET /readyz`: `503 draining` as soon as a graceful shutdown began (without asking the
/// database), otherwise whether the database answers with every migration applied.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let check = crate::store::migrations_current(&app.pool);
    match tokio::time::timeout(READYZ_TIMEOUT, check).await {
        Ok(Ok(true)) => (StatusCode::OK, "ready").into_response(),
        Ok(Ok(false)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "migrations not applied").into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
        Err(_) => {
            tracing::warn!(timeout = ?READYZ_TIMEOUT, "readiness check timed out");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    match &app.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// The routes of `--metrics-listen`: `GET /metrics` and `GET /healthz`, for processes that
/// run no gateway (workers, tickers).
pub fn metrics_router(
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> axum::Router {
    let render = move || {
        let handle = handle.clone();
        async move {
            match handle {
                Some(h) => h.render().into_response(),
                None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
            }
        }
    };
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .route("/healthz", axum::routing::get(healthz))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    name: Option<String>,
}

/// The client ids guest tokens are minted for start with this.
pub const GUEST_PREFIX: &str = "guest-";

/// `POST /v1/tokens`: a new guest identity, or, called with a guest's own token, the same
/// identity (same `client_id`) with the given display name (a player picks a name once and
/// keeps it with the identity).
pub async fn token_create(
    State(app): State<Arc<AppState>>,
    parts: Parts,
    Body(body): Body<TokenBody>,
) -> Result<impl IntoResponse, ApiError> {
    if !app.config.allow_guests {
        return Err(ApiError::forbidden(
            "guest tokens are disabled on this server",
        ));
    }
    if let Some(ip) = client_ip(&parts, &app.config.trusted_proxies) {
        app.limits
            .guest_tokens
            .take(&ip)
            .map_err(|wait| ApiError::limited("too many guest tokens for this address", wait))?;
    }
    let name = match body.name {
        Some(n) if n.chars().count() > 64 || n.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(
                "`name` has at most 64 characters and no control characters",
            ))
        }
        n => n.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()),
    };
    let client_id = match request_token(&parts) {
        Some(token) => {
            let me = app
                .auth
                .verify(&token)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            if !me.client.as_str().starts_with(GUEST_PREFIX) {
                return Err(ApiError::forbidden(
                    "only guest identities get their tokens here",
                ));
            }
            me.client.as_str().to_owned()
        }
        None => format!("{GUEST_PREFIX}{}", uuid::Uuid::new_v4().simple()),
    };
    let (token, expires_at) =
        app.auth
            .issue(&client_id, name.clone(), None, app.config.guest_token_ttl);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "client_id": client_id,
            "expires_at": expires_at,
            "name": name,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMatchBody {
    game: String,
    #[serde(default)]
    config: Value,
}

pub async fn match_create_handler(
    State(app): State<Arc<AppState>>,
    parts: Parts,
    Authed(me): Authed,
    Body(body): Body<CreateMatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let game = app.games.get(&body.game).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown game {:?}; this server has {:?}",
            body.game,
            app.games.names()
        ))
    })?;
    match app.games.creation(&body.game).unwrap_or(Creation::Nobody) {
        Creation::Anyone => {}
        Creation::Admin if me.admin => {}
        Creation::Admin => {
            return Err(ApiError::forbidden(format!(
                "only an operator's token (claim `admin`) may create {:?} matches on this server",
                body.game
            )))
        }
        Creation::Nobody => {
            return Err(ApiError::forbidden(format!(
                "{:?} matches cannot be created through the API on this server",
                body.game
            )))
        }
    }
    if super::has_nul(&body.config) {
        return Err(ApiError::bad_request(
            "`config` may not contain the NUL character (\\u0000)",
        ));
    }
    if let Some(ip) = client_ip(&parts, &app.config.trusted_proxies) {
        app.limits.matches.take(&ip).map_err(|wait| {
            ApiError::limited("too many matches created from this address", wait)
        })?;
    }
    let by = CreatedBy {
        client: me.client.as_str(),
        per_minute: app.config.matches_per_client_per_minute,
    };
    let (info, written) = match_create_by(&app.pool, game.as_ref(), &body.config, Some(by))
        .await
        .map_err(|e| match e {
            CreateError::BadConfig(m) => ApiError::bad_request(format!("bad config: {m}")),
            CreateError::RateLimited(secs) => ApiError::Limited(
                format!(
                    "at most {} matches per client per minute",
                    app.config.matches_per_client_per_minute
                ),
                secs,
            ),
            CreateError::Db(e) => e.into(),
        })?;
    app.notifier.written(&written);
    // A new match may need its clock before any ticker would look again.
    app.notifier.tick_scheduled();
    metrics::counter!("postgame_matches_created_total").increment(1);
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    game: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// A JSON object the matches' labels contain (`label @> …`).
    label: Option<String>,
    /// Matches whose id starts with these hex digits (a lobby code); `game`, `status` and
    /// `label` do not apply then.
    id_prefix: Option<String>,
}

/// Matches per listing page unless `limit` says otherwise.
pub const LIST_DEFAULT_LIMIT: i64 = 100;
/// Most matches per listing page.
pub const LIST_MAX_LIMIT: i64 = 1000;
/// Longest `label` filter, in bytes (a label itself has at most
/// [`crate::game::MAX_LABEL_BYTES`]).
pub const MAX_LABEL_FILTER: usize = crate::game::MAX_LABEL_BYTES;

/// A short text parameter that reaches Postgres: 1 to 128 characters, no control
/// characters (a NUL would make Postgres refuse the whole statement: a 500 otherwise).
fn text_param(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > 128 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` has 1 to 128 characters and no control characters"
        )));
    }
    Ok(())
}

/// The `label` filter: a JSON object of at most [`MAX_LABEL_FILTER`] bytes, no NUL.
fn label_param(raw: &str) -> Result<Value, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "`label` is a JSON object of at most {MAX_LABEL_FILTER} bytes, such as \
             {{\"open_seats\":1}}"
        ))
    };
    if raw.len() > MAX_LABEL_FILTER {
        return Err(bad());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) if !super::has_nul(&v) => Ok(v),
        _ => Err(bad()),
    }
}

/// `GET /v1/matches`: one page of the matches the caller may see, newest first, and the
/// cursor of the next page (`next`, null on the last page).
pub async fn match_list_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    if !(1..=LIST_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` is between 1 and {LIST_MAX_LIMIT}"
        )));
    }
    let after = match &q.after {
        Some(raw) => Some(Cursor::parse(raw).ok_or_else(|| {
            ApiError::bad_request("`after` is the `next` of a previous page, unchanged")
        })?),
        None => None,
    };
    let visible = me.visible_matches();
    let mut filter = ListFilter {
        after,
        visible: visible.as_deref(),
        ..ListFilter::default()
    };
    let label;
    if let Some(prefix) = &q.id_prefix {
        let range = prefix_range(prefix)
            .filter(|_| prefix.chars().filter(char::is_ascii_hexdigit).count() >= MIN_ID_PREFIX)
            .ok_or_else(|| {
                ApiError::bad_request(format!("`id_prefix` has {MIN_ID_PREFIX} to 32 hex digits"))
            })?;
        filter.ids = Some(range);
    } else {
        for (field, value) in [("game", &q.game), ("status", &q.status)] {
            if let Some(v) = value {
                text_param(field, v)?;
            }
        }
        filter.game = q.game.as_deref();
        filter.status = q.status.as_deref();
        label = q.label.as_deref().map(label_param).transpose()?;
        filter.label = label.as_ref();
    }
    let matches = match_list(&app.pool, &filter, limit).await?;
    let next = (matches.len() as i64 == limit)
        .then(|| matches.last().map(|m| Cursor::after(m).encode()))
        .flatten();
    Ok(Json(json!({ "matches": matches, "next": next })))
}

pub async fn match_get_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = MatchId::parse(&id).ok_or_else(|| ApiError::not_found("no such match"))?;
    // A match the caller may not see is answered like one that does not exist.
    if !me.sees_match(&Channel::of_match(id)) {
        return Err(ApiError::not_found("no such match"));
    }
    let mut info = match_get(&app.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such match"))?;
    info.state.get_or_insert(Value::Null);
    Ok(Json(info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    name: String,
    #[serde(default)]
    data: Value,
    key: Option<String>,
}

pub async fn channel_publish_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Path(channel): Path<String>,
    Body(body): Body<PublishBody>,
) -> Result<impl IntoResponse, ApiError> {
    let req = prepare_publish(&me, &channel, body.name, body.data, body.key)?;
    // One client's HTTP publishes share a shard, so they keep their order too.
    let mut h = DefaultHasher::new();
    me.client.hash(&mut h);
    let ack = app
        .publisher
        .publish(h.finish(), req)
        .await
        .map_err(|e| match e {
            PublishError::MatchNotFound => ApiError::not_found("no such match"),
            PublishError::RateLimited(m) => ApiError::Client(Code::RateLimited, m),
            PublishError::Invalid(m) => ApiError::bad_request(m),
            e => ApiError::Internal(e.into()),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "channel": channel, "msg_id": ack.msg_id, "duplicate": ack.duplicate })),
    ))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<i64>,
    limit: Option<i64>,
}

pub async fn channel_history_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Path(channel): Path<String>,
    Params(q): Params<HistoryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = Channel::parse(&channel).map_err(ApiError::bad_request)?;
    if !me.can(Cap::History, &channel) {
        return Err(ApiError::forbidden(
            "not allowed to read this channel's history",
        ));
    }
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if since < 0 {
        return Err(ApiError::bad_request("`since` is a non-negative integer"));
    }
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` is between 1 and 1000"));
    }
    if let ChannelKind::Match(m) = channel.kind() {
        if !crate::matches::match_exists(&app.pool, *m).await? {
            return Err(ApiError::not_found("no such match"));
        }
    }
    let rows = history_read(&app.pool, channel.as_str(), since, limit).await?;
    let messages: Vec<Value> = rows
        .into_iter()
        .map(|m| {
            let data: Value = serde_json::from_str(&m.data).unwrap_or(Value::Null);
            json!({ "seq": m.seq, "name": m.name, "data": data, "ts": m.ts })
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
}
