//! The round-monitoring API: an HTTP server (axum) on its own address, next to the mTLS gRPC
//! server. It serves the job, its rounds and participants as versioned JSON (`/api/v1/...`), a
//! live stream of changes (server-sent events), Prometheus metrics (`/metrics`), the current global
//! model, the OpenAPI document, health checks and the dashboard page. Everything except the health
//! checks and the dashboard's static page needs a bearer token; the model needs an admin's. The
//! API shows aggregates only: no individual update exists in the coordinator to show. Every
//! response carries security headers; the dashboard's a strict Content-Security-Policy made from
//! the hashes of its own inline script and style.

#[cfg(feature = "api-client")]
pub mod client;
pub mod metrics;
pub mod monitor;

pub use monitor::{ApiEvent, JobState, JobView, Monitor, ParticipantView, RoundView, Sequenced};

use crate::Error;
use crate::model::{TensorShape, encode_safetensors};
use crate::store::signatures::Countersignature;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, LazyLock};
use tokio_stream::wrappers::BroadcastStream;
use utoipa::{OpenApi, ToSchema};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read the job, rounds, participants, events and metrics.
    Viewer,
    /// Also download the global model.
    Admin,
}

/// The API's bearer tokens.
#[derive(Clone, Default)]
pub struct ApiTokens {
    tokens: Vec<(Role, String)>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.tokens.len())
    }
}

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The state directory's admin token ([`ApiTokens::of_state_dir`]).
pub const ADMIN_TOKEN_FILE: &str = "api-token";
/// The state directory's viewer token, for scrapers.
pub const VIEWER_TOKEN_FILE: &str = "api-token-viewer";

/// 128 random bits as 32 hex digits.
fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token kept in `path`, made and written there (owner-only) if the file does not exist. The
/// token is the file's last word, so a file of the older form `admin <token>` is read as well.
fn kept_token(path: &FsPath) -> Result<String, Error> {
    let io = |what: &str, source| Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.split_whitespace().last().unwrap_or_default();
            if token.len() < MIN_TOKEN_LEN {
                return Err(Error::TokenFile {
                    path: path.to_path_buf(),
                    source: Box::new(Error::TokenTooShort {
                        line: 1,
                        length: token.len(),
                        minimum: MIN_TOKEN_LEN,
                    }),
                });
            }
            Ok(token.to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(|e| io("creating", e))?;
            std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io("writing", e))?;
            Ok(token)
        }
        Err(error) => Err(io("reading", error)),
    }
}

impl ApiTokens {
    /// One admin token.
    pub fn admin(token: impl Into<String>) -> ApiTokens {
        ApiTokens {
            tokens: vec![(Role::Admin, token.into())],
        }
    }

    /// A fresh random admin token (32 hex digits).
    pub fn random_admin() -> (ApiTokens, String) {
        let token = random_token();
        (ApiTokens::admin(token.clone()), token)
    }

    /// The tokens of a state directory that no token file was given for: an admin token in
    /// `api-token` and a viewer token in `api-token-viewer`, each file holding the bare token
    /// (what Prometheus' `authorization.credentials_file` and `status --token-file` read), made
    /// once, readable by the owner only, and read again on every later start, so dashboard
    /// bookmarks and scrapers keep working across restarts. Returns the tokens and the admin
    /// token.
    pub fn of_state_dir(state_dir: &FsPath) -> Result<(ApiTokens, String), Error> {
        std::fs::create_dir_all(state_dir).map_err(|source| Error::Io {
            what: format!("creating {}", state_dir.display()),
            source,
        })?;
        let admin = kept_token(&state_dir.join(ADMIN_TOKEN_FILE))?;
        let viewer = kept_token(&state_dir.join(VIEWER_TOKEN_FILE))?;
        let tokens = ApiTokens {
            tokens: vec![(Role::Admin, admin.clone()), (Role::Viewer, viewer)],
        };
        Ok((tokens, admin))
    }

    /// Parses a token file: one `<role> <token>` per line (`admin` or `viewer`); blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<ApiTokens, Error> {
        let mut tokens = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [role, token] = fields[..] else {
                return Err(Error::TokenFields {
                    line: number + 1,
                    fields: fields.len(),
                });
            };
            let role = match role {
                "admin" => Role::Admin,
                "viewer" => Role::Viewer,
                other => {
                    return Err(Error::TokenRole {
                        line: number + 1,
                        role: other.to_string(),
                    });
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(Error::TokenTooShort {
                    line: number + 1,
                    length: token.len(),
                    minimum: MIN_TOKEN_LEN,
                });
            }
            tokens.push((role, token.to_string()));
        }
        if tokens.is_empty() {
            return Err(Error::NoTokens);
        }
        Ok(ApiTokens { tokens })
    }

    /// Reads a token file.
    pub fn load(path: &FsPath) -> Result<ApiTokens, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading API token file {}", path.display()),
            source,
        })?;
        ApiTokens::parse(&text).map_err(|source| Error::TokenFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// The role of `token`, compared in constant time against every known token.
    fn role_of(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (role, known) in &self.tokens {
            let equal = known.len() == token.len()
                && known
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if equal {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

/// How to serve the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Who may call it.
    pub tokens: ApiTokens,
    /// How long it keeps serving after the job ended, for a last scrape or look
    /// (`Duration::MAX`: as long as the process runs).
    pub linger: std::time::Duration,
}

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
    tokens: Arc<ApiTokens>,
    layout: Arc<Vec<TensorShape>>,
}

/// An error body: what was wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What was wrong and what was expected.
    pub error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cairn\""),
        );
    }
    response
}

/// Checks the bearer token; the handler learns the caller's role from the request extensions.
async fn authenticate(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION);
    let Some(header) = header else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization header; expected `Authorization: Bearer <token>`",
        );
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "Authorization header is not `Bearer <token>`",
        );
    };
    let Some(role) = app.tokens.role_of(token) else {
        return error(StatusCode::UNAUTHORIZED, "unknown bearer token");
    };
    request.extensions_mut().insert(role);
    next.run(request).await
}

/// Pagination of the round history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Rounds to skip, 0..=1000000 (default 0).
    #[serde(default)]
    #[param(minimum = 0, maximum = 1_000_000, default = 0)]
    pub offset: usize,
    /// Rounds to return, 1..=1000 (default 100).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

/// A page of committed rounds, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoundPage {
    /// Committed rounds in all.
    pub total: usize,
    /// Offset of the first round returned.
    pub offset: usize,
    /// Page size asked for.
    pub limit: usize,
    /// The rounds.
    pub rounds: Vec<RoundView>,
}

/// Liveness and readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or why not.
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Accepting participants", body = Health),
        (status = 503, description = "The job is over", body = Health)))]
async fn readyz(State(app): State<AppState>) -> Response {
    if app.monitor.is_ready() {
        Json(Health {
            status: "ok".into(),
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "the job is over; no participants are accepted".into(),
            }),
        )
            .into_response()
    }
}

#[utoipa::path(get, path = "/api/v1/job", tag = "job", security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn job(State(app): State<AppState>) -> Json<JobView> {
    Json(app.monitor.job())
}

#[utoipa::path(get, path = "/api/v1/rounds", tag = "job", security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, description = "Committed rounds, oldest first", body = RoundPage),
        (status = 400, description = "Malformed query", body = ApiError),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn rounds(
    State(app): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Response {
    let Query(page) = match page {
        Ok(page) => page,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; expected offset (0..=1000000) and limit (1..=1000)",
                    rejection.body_text()
                ),
            );
        }
    };
    if page.offset > 1_000_000 {
        return error(
            StatusCode::BAD_REQUEST,
            format!("offset is {}; expected 0..=1000000", page.offset),
        );
    }
    if !(1..=1000).contains(&page.limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit is {}; expected 1..=1000", page.limit),
        );
    }
    let (rounds, total) = app.monitor.rounds(page.offset, page.limit);
    Json(RoundPage {
        total,
        offset: page.offset,
        limit: page.limit,
        rounds,
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/v1/rounds/{round}", tag = "job", security(("bearer" = [])),
    params(("round" = u64, Path, description = "Round number, from 1")),
    responses(
        (status = 200, description = "The committed round", body = RoundView),
        (status = 400, description = "Not a round number", body = ApiError),
        (status = 401, description = "No or unknown token", body = ApiError),
        (status = 404, description = "No such committed round", body = ApiError)))]
async fn round(State(app): State<AppState>, round: Result<Path<u64>, PathRejection>) -> Response {
    with_round(round, |round| match app.monitor.round(round) {
        Some(record) => Json(record).into_response(),
        None => not_committed(&app, round),
    })
}

#[utoipa::path(get, path = "/api/v1/rounds/{round}/countersignatures", tag = "job", security(("bearer" = [])),
    params(("round" = u64, Path, description = "Round number, from 1")),
    responses(
        (status = 200, description = "The participants' countersignatures of the round's record, each with the certificate it verifies with (what `cairn-coordinator audit --ca` checks)", body = [Countersignature]),
        (status = 400, description = "Not a round number", body = ApiError),
        (status = 401, description = "No or unknown token", body = ApiError),
        (status = 404, description = "No such committed round", body = ApiError)))]
async fn countersignatures(
    State(app): State<AppState>,
    round: Result<Path<u64>, PathRejection>,
) -> Response {
    with_round(round, |round| match app.monitor.countersignatures(round) {
        Some(signatures) => Json(signatures).into_response(),
        None => not_committed(&app, round),
    })
}

/// `answer` for the round number of a path, or the 400 that says what was expected.
fn with_round(
    round: Result<Path<u64>, PathRejection>,
    answer: impl FnOnce(u64) -> Response,
) -> Response {
    match round {
        Ok(Path(round)) => answer(round),
        Err(rejection) => error(
            StatusCode::BAD_REQUEST,
            format!("{}; expected a round number >= 1", rejection.body_text()),
        ),
    }
}

/// The 404 for a round that is not committed.
fn not_committed(app: &AppState, round: u64) -> Response {
    let job = app.monitor.job();
    error(
        StatusCode::NOT_FOUND,
        format!(
            "round {round} is not committed; committed rounds are 1..={} of {}",
            job.rounds_completed, job.spec.rounds
        ),
    )
}

#[utoipa::path(get, path = "/api/v1/participants", tag = "job", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every participant the job lists", body = [ParticipantView]),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn participants(State(app): State<AppState>) -> Json<Vec<ParticipantView>> {
    Json(app.monitor.participants())
}

#[utoipa::path(get, path = "/api/v1/model", tag = "job", security(("bearer" = [])),
    responses(
        (status = 200, description = "The current global model (safetensors)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No or unknown token", body = ApiError),
        (status = 403, description = "The token is not an admin's", body = ApiError),
        (status = 404, description = "No model yet", body = ApiError)))]
async fn model(State(app): State<AppState>, role: axum::Extension<Role>) -> Response {
    if *role != Role::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "downloading the model needs an admin token; this one is a viewer's",
        );
    }
    let Some(model) = app.monitor.model() else {
        return error(StatusCode::NOT_FOUND, "no global model yet");
    };
    match encode_safetensors(&app.layout, &model) {
        Ok(bytes) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let name = format!(
                "attachment; filename=\"{}.safetensors\"",
                app.monitor.job().spec.name
            );
            if let Ok(value) = HeaderValue::from_str(&name) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            (headers, bytes).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[utoipa::path(get, path = "/api/v1/events", tag = "job", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header,
        description = "The `id` of the last change a stream that broke off received: the changes after it that the coordinator still holds (the last 1024) come first. An id of another coordinator process, or none it can read, gets every change it holds.")),
    responses(
        (status = 200, description = "Server-sent events, one per change, each with an `id` (`<epoch>-<number>`); each `data` is an ApiEvent; the stream ends with the job's end", content_type = "text/event-stream", body = ApiEvent),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn events(State(app): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    // A client that lost the stream says the last change it got, and gets what it missed.
    let (missed, live) = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(last) => app.monitor.subscribe_after(last),
        None => (Vec::new(), app.monitor.subscribe()),
    };
    let changes = Box::pin(
        futures_util::stream::iter(missed.into_iter().map(Ok)).chain(BroadcastStream::new(live)),
    );
    // The stream ends with the job's end, so that a finished coordinator can stop serving and a
    // client reading to the end returns.
    let stream = futures_util::stream::unfold((changes, false), |(mut changes, over)| async move {
        if over {
            return None;
        }
        let change = changes.next().await?;
        let finished = matches!(
            change,
            Ok(Sequenced {
                event: ApiEvent::JobFinished { .. },
                ..
            })
        );
        Some((change, (changes, finished)))
    })
    .filter_map(|change| async move {
        // A client too slow for the stream loses events, not the connection.
        let Sequenced { id, event, .. } = change.ok()?;
        let name = match &event {
            ApiEvent::RoundStarted { .. } => "round_started",
            ApiEvent::PhaseStarted { .. } => "phase_started",
            ApiEvent::RoundCommitted { .. } => "round_committed",
            ApiEvent::RoundFailed { .. } => "round_failed",
            ApiEvent::Countersigned { .. } => "countersigned",
            ApiEvent::ParticipantConnected { .. } => "participant_connected",
            ApiEvent::ParticipantDisconnected { .. } => "participant_disconnected",
            ApiEvent::JobFinished { .. } => "job_finished",
        };
        Some(Event::default().id(id).event(name).json_data(&event))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[utoipa::path(get, path = "/metrics", tag = "metrics", security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.monitor.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "job", security(("bearer" = [])),
    responses(
        (status = 200, description = "This document", content_type = "application/json", body = Object),
        (status = 401, description = "No or unknown token", body = ApiError)))]
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// The dashboard's page: static HTML, style and script with no data in it; the script asks for a
/// token and reads everything through the authenticated API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy, made once from the page itself.
static DASHBOARD_POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    // The policy holds keywords and base64 hashes only, always a valid header value; were it not,
    // the page would be refused everything rather than allowed anything.
    HeaderValue::from_str(&dashboard_policy(DASHBOARD))
        .unwrap_or_else(|_| HeaderValue::from_static(RESTRICTIVE_POLICY))
});

/// The policy of every response but the dashboard's: nothing may load or run, nobody may frame it.
const RESTRICTIVE_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// The strict Content-Security-Policy of a page whose script and style are inline: exactly the
/// page's own `<script>` and `<style>` blocks may run, by their SHA-256 hashes (CSP Level 3,
/// "hash-source"; computed here from the page, so an edit of the page cannot leave the policy
/// behind), no other script, no `eval`, no style attribute; the script may only call this origin
/// (the API); DOM sinks that parse markup need Trusted Types, which the page does not use; the
/// page cannot be framed, change its base URL or post a form.
fn dashboard_policy(page: &str) -> String {
    let hashes = |tag: &str| {
        let sources: Vec<String> = inline_blocks(page, tag)
            .into_iter()
            .map(|block| {
                let digest = ring::digest::digest(&ring::digest::SHA256, block.as_bytes());
                format!("'sha256-{}'", base64(digest.as_ref()))
            })
            .collect();
        if sources.is_empty() {
            "'none'".to_string()
        } else {
            sources.join(" ")
        }
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'",
        hashes("script"),
        hashes("style")
    )
}

/// The contents of every `<tag>...</tag>` block of `page`, exactly as a browser hashes them. Only
/// bare opening tags count: the page gives its inline blocks no attributes.
fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut blocks = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        blocks.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    blocks
}

/// Standard base64 with padding (RFC 4648, section 4), the encoding of a CSP hash-source.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The dashboard's page with its policy.
async fn dashboard() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, DASHBOARD_POLICY.clone())],
        Html(DASHBOARD),
    )
        .into_response()
}

/// Headers every response carries: the body is what its type says (no sniffing), no page may
/// frame it (clickjacking), and the dashboard's requests and links name no `Referer`. A response
/// without its own policy gets one that lets nothing load or run, so that a JSON body opened in a
/// browser stays inert.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(RESTRICTIVE_POLICY));
    response
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Cairn coordinator API", description = "Round monitoring of a Cairn federated-learning job."),
    paths(healthz, readyz, job, rounds, round, countersignatures, participants, model, events, metrics, openapi_document),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// The OpenAPI document as served and as checked in (`coordinator/openapi.json`).
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The API's routes.
fn router(app: AppState) -> Router {
    let authenticated = Router::new()
        .route("/api/v1/job", get(job))
        .route("/api/v1/rounds", get(rounds))
        .route("/api/v1/rounds/{round}", get(round))
        .route(
            "/api/v1/rounds/{round}/countersignatures",
            get(countersignatures),
        )
        .route("/api/v1/participants", get(participants))
        .route("/api/v1/model", get(model))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(openapi_document))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard))
        .merge(authenticated)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed; every endpoint takes GET"),
            )
        })
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

/// Binds `options.listen` and serves the API until `shutdown` resolves; returns the bound
/// address.
pub async fn serve(
    options: &ApiOptions,
    monitor: Arc<Monitor>,
    layout: Vec<TensorShape>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, Error> {
    let (listener, address) = crate::bind(options.listen, "the monitoring API").await?;
    let app = router(AppState {
        monitor,
        tokens: Arc::new(options.tokens.clone()),
        layout: Arc::new(layout),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("monitoring API stopped: {e}");
        }
    });
    Ok(address)
}

#[cfg(test)]
mod tests;
