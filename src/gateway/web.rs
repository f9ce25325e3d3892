//! The browser side, compiled into the binary: the Tic Tac Toe demo at `/`, the Pong page
//! at `/pong`, and the JavaScript client `postgame.js` (with its TypeScript declarations). The files live in `web/` and
//! are embedded with `include_str!`, so `postgame serve` needs nothing on disk. Every
//! answer carries `Cache-Control: no-cache`: browsers revalidate, so a new binary's files
//! are picked up on the next load.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const PONG_HTML: &str = include_str!("../../web/pong.html");
const PONG_JS: &str = include_str!("../../web/pong.js");
const PONG_CSS: &str = include_str!("../../web/pong.css");
const POSTGAME_JS: &str = include_str!("../../web/postgame.js");
const POSTGAME_D_TS: &str = include_str!("../../web/postgame.d.ts");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TYPESCRIPT: &str = "application/typescript; charset=utf-8";

/// One embedded file with its content type.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /`: the demo page (the lobby, and a match at `/#/match/<id>`).
pub async fn index() -> impl IntoResponse {
    file(HTML, INDEX_HTML)
}

/// `GET /app.js`: the demo's script.
pub async fn app_js() -> impl IntoResponse {
    file(JAVASCRIPT, APP_JS)
}

/// `GET /style.css`: the demo's style sheet.
pub async fn style_css() -> impl IntoResponse {
    file(CSS, STYLE_CSS)
}

/// `GET /pong`: the Pong page (a match at `/pong#/match/<id>`).
pub async fn pong() -> impl IntoResponse {
    file(HTML, PONG_HTML)
}

/// `GET /pong.js`: the Pong page's script.
pub async fn pong_js() -> impl IntoResponse {
    file(JAVASCRIPT, PONG_JS)
}

/// `GET /pong.css`: the Pong page's own styles (on top of `/style.css`).
pub async fn pong_css() -> impl IntoResponse {
    file(CSS, PONG_CSS)
}

/// `GET /postgame.js`: the client library, an ES module.
pub async fn postgame_js() -> impl IntoResponse {
    file(JAVASCRIPT, POSTGAME_JS)
}

/// `GET /postgame.d.ts`: the client library's TypeScript declarations.
pub async fn postgame_d_ts() -> impl IntoResponse {
    file(TYPESCRIPT, POSTGAME_D_TS)
}
