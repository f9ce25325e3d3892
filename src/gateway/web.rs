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

/// Paths the gateway answers itself; a page may not take them.
const RESERVED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Browser files an application adds to the gateway beside the built-in ones (see
/// [`crate::App::page`]): each is served at its path with its content type and the same
/// headers as the built-in files. A page at a built-in web path (`/`, `/pong`, …) replaces
/// that file; the API paths (`/v1/…`, `/healthz`, `/readyz`, `/metrics`) cannot be taken.
///
/// ```
/// use postgame::Pages;
///
/// let pages = Pages::new()
///     .page("/connect4", "<!doctype html><title>Connect Four</title>")
///     .file("/connect4.css", "text/css; charset=utf-8", "body { margin: 0 }");
/// assert_eq!(pages.paths(), ["/connect4", "/connect4.css"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pages {
    files: Vec<Page>,
}

/// One file of [`Pages`].
#[derive(Debug, Clone)]
struct Page {
    path: String,
    content_type: String,
    body: axum::body::Bytes,
}

impl Pages {
    /// No pages: only the built-in files are served.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an HTML page at `path` (such as `"/connect4"`).
    ///
    /// # Panics
    /// As [`Pages::file`].
    pub fn page(self, path: &str, html: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.file(path, HTML, html)
    }

    /// Adds a file at `path` served with `content_type` (`"text/javascript;
    /// charset=utf-8"`, …). A later file at the same path replaces an earlier one.
    ///
    /// # Panics
    /// When `path` does not start with `/`, contains `{`, `}`, `*`, `?` or `#`, or is an API
    /// path (`/v1/…`, `/healthz`, `/readyz`, `/metrics`): a mistake in the program, found
    /// the first time it runs.
    pub fn file(
        mut self,
        path: &str,
        content_type: &str,
        body: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        assert!(
            path.starts_with('/') && !path.contains(['{', '}', '*', '?', '#']),
            "a page path starts with `/` and has no `{{`, `}}`, `*`, `?` or `#`: {path:?}"
        );
        assert!(
            !(path == "/v1" || path.starts_with("/v1/") || RESERVED.contains(&path)),
            "{path:?} is one of the gateway's API paths and cannot be a page"
        );
        let body = match body.into() {
            std::borrow::Cow::Borrowed(s) => axum::body::Bytes::from_static(s.as_bytes()),
            std::borrow::Cow::Owned(s) => axum::body::Bytes::from(s),
        };
        self.files.retain(|f| f.path != path);
        self.files.push(Page {
            path: path.to_owned(),
            content_type: content_type.to_owned(),
            body,
        });
        self
    }

    /// The paths served, in the order they were added.
    pub fn paths(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// Whether a page takes `path` (then the built-in file there is not routed).
    pub(crate) fn has(&self, path: &str) -> bool {
        self.files.iter().any(|f| f.path == path)
    }

    /// Adds a route per page to `router`.
    pub(crate) fn route<S: Clone + Send + Sync + 'static>(
        &self,
        mut router: axum::Router<S>,
    ) -> axum::Router<S> {
        for page in &self.files {
            let page = page.clone();
            router = router.route(
                &page.path.clone(),
                axum::routing::get(move || {
                    let page = page.clone();
                    async move {
                        (
                            [
                                (header::CONTENT_TYPE, page.content_type),
                                (header::CACHE_CONTROL, "no-cache".to_owned()),
                                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                            ],
                            page.body,
                        )
                    }
                }),
            );
        }
        router
    }
}
