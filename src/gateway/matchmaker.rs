//! The matchmaker's HTTP API: open a ticket, read it, cancel it. Pairing itself runs on
//! the workers ([`crate::matchmaker`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::http::{Authed, Body};
use super::limits::client_ip;
use super::AppState;
use crate::game::Creation;
use crate::matchmaker::{
    ticket_cancel, ticket_get, ticket_open, NewTicket, OpenError, Opened, MAX_QUERY_BYTES,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    game: String,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    query: Value,
    /// The data of the `join` that seats the player (e.g. a display name).
    #[serde(default)]
    join: Value,
}

/// `POST /v1/matchmaker` `{"game", "config"?, "query"?}`: 201 with a new ticket, or 200
/// with the client's open ticket for this game when it asked for the same config and
/// query (asking twice is harmless); another config or query while one is open is a 400
/// that names the open ticket (cancel it first).
pub async fn ticket_create_handler(
    State(app): State<Arc<AppState>>,
    parts: Parts,
    Authed(me): Authed,
    Body(body): Body<TicketBody>,
) -> Result<Response, ApiError> {
    let game = app.games.get(&body.game).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown game {:?}; this server has {:?}",
            body.game,
            app.games.names()
        ))
    })?;
    // The matchmaker creates matches: only for games the caller could create.
    match app.games.creation(&body.game).unwrap_or(Creation::Nobody) {
        Creation::Anyone => {}
        Creation::Admin if me.admin => {}
        Creation::Admin | Creation::Nobody => {
            return Err(ApiError::forbidden(format!(
                "{:?} matches cannot be created by this client on this server",
                body.game
            )))
        }
    }
    if super::has_nul(&body.config) || super::has_nul(&body.query) || super::has_nul(&body.join) {
        return Err(ApiError::bad_request(
            "`config`, `query` and `join` may not contain the NUL character (\\u0000)",
        ));
    }
    let join = small_object("join", body.join, "a JSON object: the data of your `join`")?;
    let query = match body.query {
        Value::Null => Value::Object(Default::default()),
        q @ Value::Object(_) if q.to_string().len() <= MAX_QUERY_BYTES => q,
        Value::Object(_) => {
            return Err(ApiError::bad_request(format!(
                "`query` has at most {MAX_QUERY_BYTES} bytes"
            )))
        }
        _ => {
            return Err(ApiError::bad_request(
                "`query` is a JSON object (tickets pair only with equal queries)",
            ))
        }
    };
    let config = game
        .normalize_config(&body.config)
        .map_err(|m| ApiError::bad_request(format!("bad config: {m}")))?;
    if let Some(ip) = client_ip(&parts, &app.config.trusted_proxies) {
        app.limits.tickets.take(&ip).map_err(|wait| {
            ApiError::limited("too many matchmaker tickets from this address", wait)
        })?;
    }
    let opened = ticket_open(
        &app.pool,
        &app.notifier,
        NewTicket {
            client: &me.client,
            game: game.name(),
            config: &config,
            query: &query,
            join: &join,
            players: game.players_per_match(),
            ttl: app.config.matchmaker_ticket_ttl,
            per_minute: app.config.matches_per_client_per_minute,
        },
    )
    .await
    .map_err(|e| match e {
        OpenError::Conflict(t) => ApiError::bad_request(format!(
            "this client already waits for a {:?} match with another config or query \
             (ticket {}); cancel it first with DELETE /v1/matchmaker/{}",
            t.game, t.id, t.id
        )),
        OpenError::RateLimited(secs) => ApiError::Limited(
            format!(
                "at most {} matchmaker tickets per client per minute",
                app.config.matches_per_client_per_minute
            ),
            secs,
        ),
        OpenError::Db(e) => e.into(),
    })?;
    Ok(match opened {
        Opened::New(t) => {
            // Wake the workers, which pair tickets between control batches.
            app.notifier.control_ready();
            metrics::counter!("postgame_matchmaker_tickets_total").increment(1);
            (StatusCode::CREATED, Json(t)).into_response()
        }
        Opened::Existing(t) => (StatusCode::OK, Json(t)).into_response(),
    })
}

/// An optional JSON object of at most [`MAX_QUERY_BYTES`] (absent: `{}`).
fn small_object(field: &str, v: Value, what: &str) -> Result<Value, ApiError> {
    match v {
        Value::Null => Ok(Value::Object(Default::default())),
        v @ Value::Object(_) if v.to_string().len() <= MAX_QUERY_BYTES => Ok(v),
        Value::Object(_) => Err(ApiError::bad_request(format!(
            "`{field}` has at most {MAX_QUERY_BYTES} bytes"
        ))),
        _ => Err(ApiError::bad_request(format!("`{field}` is {what}"))),
    }
}

fn ticket_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::not_found("no such ticket"))
}

/// `GET /v1/matchmaker/{ticket}`: the caller's ticket as it is now (404 for anyone else's).
pub async fn ticket_get_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Path(ticket): Path<String>,
) -> Result<Response, ApiError> {
    let id = ticket_id(&ticket)?;
    match ticket_get(&app.pool, id, &me.client).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found("no such ticket")),
    }
}

/// `DELETE /v1/matchmaker/{ticket}`: cancels the caller's ticket if it still waits; 200
/// with the ticket as it is now (`status` says whether the cancel took: `cancelled`, or
/// `matched` with its `match_id` when a worker got there first).
pub async fn ticket_cancel_handler(
    State(app): State<Arc<AppState>>,
    Authed(me): Authed,
    Path(ticket): Path<String>,
) -> Result<Response, ApiError> {
    let id = ticket_id(&ticket)?;
    match ticket_cancel(&app.pool, id, &me.client).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found("no such ticket")),
    }
}
