//! The gateway's error boundary: one enum for everything a request can fail with, mapped
//! to the wire contract's codes, as an HTTP status with a JSON body or as a WebSocket
//! `error` frame. An internal error logs its cause once and never shows it to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The `code` of an error, as in PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    Client(Code, String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// `rate_limited`, with the seconds after which trying again makes sense
    /// (`Retry-After`).
    #[error("{0}")]
    Limited(String, u64),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::Client(Code::BadRequest, msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Client(Code::Forbidden, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::Client(Code::NotFound, msg.into())
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::Client(Code::Unauthorized, msg.into())
    }
    /// A 429 that says when to come back.
    pub fn limited(msg: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::Limited(msg.into(), secs.max(1))
    }

    /// The code and the client-safe message; logs the cause of an internal error.
    pub fn public(&self) -> (Code, String) {
        match self {
            ApiError::Client(code, msg) => (*code, msg.clone()),
            ApiError::Limited(msg, _) => (Code::RateLimited, msg.clone()),
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                (Code::Internal, "internal error".into())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = self.public();
        let mut r = (
            code.status(),
            Json(json!({ "code": code.as_str(), "message": message })),
        )
            .into_response();
        if let ApiError::Limited(_, secs) = self {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}
