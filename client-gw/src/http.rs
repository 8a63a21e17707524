//! The gateway's HTTP contract (DESIGN.md, "Gateway HTTP"), on axum:
//!
//! - `POST /webHook` and `/webhook`: a delivery in, `202 {"id", "status_url"}`
//!   out once the job is durable; a redelivery names the job it already
//!   made; `?wait=SECONDS` answers with the job once its verdict is in (200)
//!   or when the wait runs out (202). Acknowledged deliveries that run
//!   nothing (pings, deletions, `[skip ci]`) get `200 {"skipped": reason}`.
//! - `POST /jobs/{id}/rerun` (a new run of the same commit) and
//!   `POST /jobs/{id}/cancel` (409 once the job has a verdict, or before it
//!   is ordered), both through consensus and both rate limited like webhooks.
//! - `GET /jobs` (newest first, `?limit=&before=`), `GET /jobs/{id}` (also
//!   with `?wait=`), `GET /jobs/{id}/certificate` (the certificate alone, as
//!   `pbft-node verify` reads it; `?download=1` as a file to save),
//!   `GET /jobs/{id}/logs` (each replica's step logs), `GET /healthz`,
//!   `GET /metrics` (Prometheus text, [`crate::metrics`]).
//! - For people ([`crate::ui`]): `GET /`, the recent jobs; `GET /jobs/{id}`
//!   asked for as HTML (`Accept: text/html` before any
//!   `application/json`, as browsers send it) is the job's page.
//!
//! Every error is `{"error": "…"}`: 400 invalid input, 401 bad or missing
//! signature, 404, 409, 413 over 1 MiB, 415 not JSON (or GitHub's form), 429 over
//! `--rate-limit` per source IP. Nothing refused is ever stored or relayed.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, RequestPartsExt as _, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::json;

use crate::gateway::{status_url, summary, Gateway, GatewayError};
use crate::metrics::{self, WebhookOutcome};
use crate::ui;
use crate::webhook::{self, Encoding, Intake};

/// Largest webhook body accepted.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Longest a client may take to send its body (a slow sender holds a task).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `?wait=` honoured.
pub const WAIT_MAX: Duration = Duration::from_secs(3600);
/// Jobs one page of `GET /jobs` lists by default, and at most.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 500;
/// Longest a job's page waits for the replicas' logs.
const LOGS_WAIT: Duration = Duration::from_secs(2);
/// Source addresses the rate limiter remembers before it forgets idle ones.
const LIMITER_KEYS_MAX: usize = 10_000;

struct App {
    gateway: Arc<Gateway>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// An error answer: `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> ApiError {
        match e {
            GatewayError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            GatewayError::NotFound(n) => ApiError(StatusCode::NOT_FOUND, format!("no job {n}")),
            GatewayError::Conflict(m) => ApiError(StatusCode::CONFLICT, m),
            e => {
                tracing::error!("{e}");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the gateway could not store the job".into())
            }
        }
    }
}

/// The router. `rate_limit`: webhook deliveries per second and source IP
/// (burst the same); the server must provide `ConnectInfo<SocketAddr>`.
pub fn router(gateway: Arc<Gateway>, rate_limit: Option<NonZeroU32>) -> Router {
    let limiter = rate_limit.map(|r| RateLimiter::keyed(Quota::per_second(r)));
    let app = Arc::new(App { gateway, limiter });
    Router::new()
        .route("/webHook", post(webhook))
        .route("/webhook", post(webhook))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/", get(index))
        .route("/jobs/{id}/certificate", get(get_certificate))
        .route("/jobs/{id}/logs", get(get_logs))
        .route("/jobs/{id}/rerun", post(rerun))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route".into())
        })
        .with_state(app)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    wait: Option<u64>,
}

fn wait_param(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let params: WaitParams = serde_urlencoded_query(query)?;
    Ok(params.wait.map(|s| Duration::from_secs(s).min(WAIT_MAX)))
}

fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let uri: axum::http::Uri = format!("/?{}", query.unwrap_or_default())
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "malformed query string".into()))?;
    Query::<T>::try_from_uri(&uri).map(|q| q.0).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let unsupported = || {
        ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the webhook as application/json (or GitHub's application/x-www-form-urlencoded)".into(),
        )
    };
    let value = headers.get(header::CONTENT_TYPE).ok_or_else(unsupported)?;
    let mime = value.to_str().map_err(|_| unsupported())?;
    let essence = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Encoding::Json),
        "application/x-www-form-urlencoded" => Ok(Encoding::Form),
        _ => Err(unsupported()),
    }
}

/// Spends one of the source's requests; 429 when it has none left.
async fn rate_limited(app: &App, parts: &mut axum::http::request::Parts) -> Result<(), ApiError> {
    if let Some(limiter) = &app.limiter {
        // The peer's address; without one (no ConnectInfo), all share a budget.
        let ip = parts.extract::<ConnectInfo<SocketAddr>>().await.map(|c| c.0.ip());
        let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if limiter.len() > LIMITER_KEYS_MAX {
            limiter.retain_recent();
        }
        if limiter.check_key(&ip).is_err() {
            return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, "over the rate limit; retry later".into()));
        }
    }
    Ok(())
}

/// Every delivery is counted by what became of it and the status answered.
async fn webhook(State(app): State<Arc<App>>, req: Request) -> Response {
    let (outcome, response) = match intake(&app, req).await {
        Ok((outcome, response)) => (outcome, response),
        Err(e) => (WebhookOutcome::Rejected, e.into_response()),
    };
    app.gateway.metrics().webhook(outcome, response.status().as_u16());
    response
}

async fn intake(app: &App, req: Request) -> Result<(WebhookOutcome, Response), ApiError> {
    let (mut parts, body) = req.into_parts();
    rate_limited(app, &mut parts).await?;
    let wait = wait_param(parts.uri.query())?;
    let encoding = encoding(&parts.headers)?;
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_BYTES_MAX)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {BODY_BYTES_MAX} bytes (or was cut short)"),
            ))
        }
        Err(_) => return Err(ApiError(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time".into())),
    };
    let intake = webhook::intake(&app.gateway.intake, &parts.headers, &body, encoding).map_err(|e| {
        if e.status() == StatusCode::UNAUTHORIZED {
            tracing::warn!("refused a webhook: {e}");
        }
        ApiError(e.status(), e.to_string())
    })?;
    let sub = match intake {
        Intake::Skip(reason) => {
            let answer = (StatusCode::OK, Json(json!({ "skipped": reason }))).into_response();
            return Ok((WebhookOutcome::Skipped, answer));
        }
        Intake::Run(sub) => sub,
    };
    let (number, new) = app.gateway.accept(sub).await?;
    let outcome = if new { WebhookOutcome::Accepted } else { WebhookOutcome::Redelivery };
    if let Some(within) = wait {
        return Ok((outcome, job_answer(app, number, Some(within)).await?));
    }
    let mut answer = json!({ "id": number.to_string(), "status_url": status_url(number) });
    if !new {
        answer["redelivery"] = json!(true);
    }
    Ok((outcome, (StatusCode::ACCEPTED, Json(answer)).into_response()))
}

/// Job `number` in full: 200 with its verdict, 202 while pending.
async fn job_answer(app: &App, number: u64, wait: Option<Duration>) -> Result<Response, ApiError> {
    let job = match wait {
        Some(within) => app.gateway.wait(number, within).await?,
        None => app.gateway.jobs().get(number).map_err(GatewayError::from)?,
    };
    let Some(job) = job else { return Err(ApiError(StatusCode::NOT_FOUND, format!("no job {number}"))) };
    let status = if job.decision.is_some() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(app.gateway.view(&job))).into_response())
}

fn job_number(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no job {:?}", id.chars().take(40).collect::<String>())))
}

/// `POST /jobs/{id}/rerun`: a new run of the same commit (`?wait=` as for webhooks).
async fn rerun(State(app): State<Arc<App>>, Path(id): Path<String>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    rate_limited(&app, &mut parts).await?;
    let number = job_number(&id)?;
    let wait = wait_param(parts.uri.query())?;
    let new = app.gateway.rerun(number).await?;
    if wait.is_some() {
        return job_answer(&app, new, wait).await;
    }
    let answer = json!({ "id": new.to_string(), "status_url": status_url(new), "rerun_of": number.to_string() });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `POST /jobs/{id}/cancel`: orders the job's cancellation; 409 once it has
/// a verdict, or before it is ordered.
async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>, req: Request) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    rate_limited(&app, &mut parts).await?;
    let number = job_number(&id)?;
    let request = app.gateway.cancel(number).await?;
    let answer = json!({ "id": request.to_string(), "status_url": status_url(request), "cancels": number.to_string() });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Whether the client prefers HTML to JSON (a browser): `text/html` named
/// in `Accept`, before any `application/json`. curl and scripts get JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    match (accept.find("text/html"), accept.find("application/json")) {
        (Some(html), Some(json)) => html < json,
        (html, _) => html.is_some(),
    }
}

fn html(body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, ui::CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::VARY, "Accept"),
    ];
    (headers, body).into_response()
}

/// `GET /jobs/{id}`: the JSON contract, or the job's page for a browser.
async fn get_job(State(app): State<Arc<App>>, Path(id): Path<String>, req: Request) -> Result<Response, ApiError> {
    let number = job_number(&id)?;
    let wait = wait_param(req.uri().query())?;
    if !wants_html(req.headers()) {
        let mut answer = job_answer(&app, number, wait).await?;
        answer.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Accept"));
        return Ok(answer);
    }
    let job = app.gateway.jobs().get(number).map_err(GatewayError::from)?;
    let Some(job) = job else { return Err(ApiError(StatusCode::NOT_FOUND, format!("no job {number}"))) };
    let view = app.gateway.view(&job);
    let logs = match job.ordered {
        Some(ordered) => {
            let answers = app.gateway.logs(ordered, LOGS_WAIT).await;
            let replicas = app.gateway.membership().replicas.iter();
            Some(
                replicas
                    .zip(answers)
                    .map(|(m, logs)| ui::ReplicaLogs { replica: m.peer_id.to_string(), logs })
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    Ok(html(ui::job(&view, logs.as_deref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateParams {
    /// Any value: answer as a file to save.
    download: Option<String>,
}

async fn get_certificate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let number = job_number(&id)?;
    let params: CertificateParams = serde_urlencoded_query(req.uri().query())?;
    let job = app.gateway.jobs().get(number).map_err(GatewayError::from)?;
    let Some(job) = job else { return Err(ApiError(StatusCode::NOT_FOUND, format!("no job {number}"))) };
    let Some(cert) = app.gateway.view(&job).certificate else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("job {number} has no certificate (yet)")));
    };
    let mut answer = Json(cert).into_response();
    if params.download.is_some() {
        let disposition = format!("attachment; filename=\"job-{number}-certificate.json\"");
        let value = header::HeaderValue::from_str(&disposition).expect("digits and ASCII");
        answer.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(answer)
}

/// `GET /jobs/{id}/logs`: each replica's step logs of the job (the end of
/// each, with the digest its replica recorded), as many as answer in time.
async fn get_logs(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let number = job_number(&id)?;
    let job = app.gateway.jobs().get(number).map_err(GatewayError::from)?;
    let Some(job) = job else { return Err(ApiError(StatusCode::NOT_FOUND, format!("no job {number}"))) };
    let Some(ordered) = job.ordered else {
        return Err(ApiError(StatusCode::CONFLICT, format!("job {number} is not ordered yet: it has no logs")));
    };
    let answers = app.gateway.logs(ordered, LOGS_WAIT).await;
    let replicas: Vec<_> = app
        .gateway
        .membership()
        .replicas
        .iter()
        .zip(answers)
        .map(|(m, logs)| {
            let steps = logs.map(|l| {
                l.steps
                    .iter()
                    .map(|s| {
                        json!({
                            "file": s.file,
                            "bytes": s.bytes,
                            "tail": String::from_utf8_lossy(&s.tail),
                            "sha256": s.sha256,
                            "verified": ui::log_verified(s),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            json!({ "replica": m.peer_id.to_string(), "steps": steps })
        })
        .collect();
    Ok(Json(json!({ "id": number.to_string(), "job": ordered.to_string(), "replicas": replicas })).into_response())
}

/// `GET /`: the page for people, newest jobs first (`?before=&limit=`).
async fn index(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let page: Page = serde_urlencoded_query(req.uri().query())?;
    let limit = page.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let jobs = app.gateway.jobs().list(page.before, limit).map_err(GatewayError::from)?;
    let older = match jobs.last() {
        Some(last) if jobs.len() == limit && last.number > 1 => Some(format!("/?before={}&limit={limit}", last.number)),
        _ => None,
    };
    let views: Vec<_> = jobs.iter().map(|j| app.gateway.view(j)).collect();
    let q = app.gateway.membership().quorum();
    let health = ui::Health { connected: app.gateway.connected_replicas(), replicas: q.n, quorum: q.quorum() };
    Ok(html(ui::index(&views, &health, older.as_deref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    before: Option<u64>,
}

async fn list_jobs(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let page: Page = serde_urlencoded_query(req.uri().query())?;
    let limit = page.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let jobs = app.gateway.jobs().list(page.before, limit).map_err(GatewayError::from)?;
    let next = match jobs.last() {
        Some(last) if jobs.len() == limit && last.number > 1 => {
            Some(format!("/jobs?before={}&limit={limit}", last.number))
        }
        _ => None,
    };
    let jobs: Vec<_> = jobs.iter().map(summary).collect();
    Ok(Json(json!({ "jobs": jobs, "next": next })).into_response())
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let q = app.gateway.membership().quorum();
    let connected = app.gateway.connected_replicas();
    let healthy = connected >= q.quorum();
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "replicas_connected": connected,
        "replicas": q.n,
        "quorum": q.quorum(),
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text (see [`crate::metrics`]).
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = app.gateway.metrics();
    // The relay refreshes it every tick; a scrape reads the latest count.
    m.set_connected(app.gateway.connected_replicas());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], m.encode()).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
