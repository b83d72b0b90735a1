//! The HTTP server: `/metrics`, `/healthz`, `/readyz` and the JSON API under
//! `/api/v1`. Every error is `{"error": "…"}` with a 4xx/5xx status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::config::Secret;
use crate::feed::FeedHandle;
use crate::fill::FillControl;
use crate::health::Health;
use crate::internal_events::{InputRejected, ReadinessChecked};
use crate::metrics::{InputSource, Metrics, Rejection};
use crate::observe::Observation;
use crate::shape::{Attribute, LiveMessage};
use crate::store::{GapFilter, Store};

/// Most observations one report request may carry.
pub(crate) const MAX_OBSERVATIONS: usize = 10_000;
/// Largest request body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) feeds: Arc<HashMap<String, FeedHandle>>,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin_token: Option<Secret>,
    /// Accepted by the observations endpoint besides the admin token.
    pub(crate) report_token: Option<Secret>,
    pub(crate) health: Arc<Health>,
    pub(crate) fills: FillControl,
}

pub(crate) fn router(state: AppState) -> Router {
    let api_slots = Arc::new(tokio::sync::Semaphore::new(
        crate::server::MAX_CONCURRENT_API,
    ));
    let api = Router::new()
        .route("/api/v1/feeds", get(feeds))
        .route("/api/v1/feeds/{feed}/partitions", get(partitions))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/gaps/{id}", get(gap))
        .route("/api/v1/gaps/{id}/retry", post(retry_gap))
        .route("/api/v1/gaps/{id}/ignore", post(ignore_gap))
        .route("/api/v1/backfills", post(backfill))
        .route("/api/v1/feeds/{feed}/observations", post(observations))
        .layer(axum::middleware::from_fn_with_state(api_slots, api_slot));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn(request_timeout))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Every request, reading its body included, is answered within
/// [`crate::server::REQUEST_TIMEOUT`]: a client sending a body slowly cannot
/// hold a slot for long.
async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(crate::server::REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request took too long").into_response()
        }
    }
}

/// At most [`crate::server::MAX_CONCURRENT_API`] API requests at a time; the
/// rest are turned away at once (503) rather than queued. `/metrics` and the
/// probes are outside this limit, so a flood of API calls never blinds them.
async fn api_slot(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(req).await,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many API requests at once; retry shortly",
        )
        .into_response(),
    }
}

/// An API error: status + `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        let e = crate::redact::text(&e.to_string());
        tracing::error!(error = %e, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    crate::feed::refresh_clock_gauges(&s.metrics, s.feeds.values());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Alive unless a task kept dying past its restart budget: then Kubernetes
/// should restart the container.
async fn healthz(State(s): State<AppState>) -> Response {
    let failed = s.health.failed_tasks();
    if failed.is_empty() {
        return "ok\n".into_response();
    }
    // Reasons stay in the log: this endpoint needs no token.
    let tasks: Vec<&String> = failed.keys().collect();
    let body = json!({ "alive": false, "failed_tasks": tasks });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let store = s.store.ping().await;
    // Reads (the ping) still work on a full disk; nothing can be written.
    let disk_full = s.store.disk_full();
    let problems = s.health.problems();
    let shutting_down = s.health.is_shutting_down();
    let ready = store.is_ok() && disk_full.is_none() && !shutting_down;
    s.metrics.emit(ReadinessChecked { ready });
    let store_status = match (&store, &disk_full) {
        (Err(e), _) => e.to_string(),
        (Ok(()), Some(e)) => e.clone(),
        (Ok(()), None) => "ok".to_string(),
    };
    let body = json!({
        "ready": ready,
        "config": "ok",
        "store": store_status,
        "state": match (&store, &disk_full) {
            (Err(_), _) => "unreachable",
            (Ok(()), Some(_)) => "disk full",
            (Ok(()), None) => "ok",
        },
        "shutting_down": shutting_down,
        "aws": if problems.is_empty() { json!("ok") } else { json!(problems) },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn feeds(State(s): State<AppState>) -> Json<serde_json::Value> {
    let mut list: Vec<_> = s.feeds.values().map(FeedHandle::current).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Json(json!({ "feeds": list }))
}

#[derive(Deserialize)]
struct GapQuery {
    feed: Option<String>,
    state: Option<String>,
    /// Only the gaps of this partition (`""`: those of the whole feed).
    partition: Option<String>,
    limit: Option<i64>,
}

const GAP_STATES: &[&str] = &[
    "open", "closed", "none", "pending", "running", "done", "failed", "ignored",
];

async fn gaps(
    State(s): State<AppState>,
    q: Result<Query<GapQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(st) = &q.state {
        if !GAP_STATES.contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown state {st:?}; one of {}",
                GAP_STATES.join(", ")
            )));
        }
    }
    if let Some(f) = &q.feed {
        if !s.feeds.contains_key(f) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown feed {f:?}"),
            ));
        }
    }
    let gaps = s
        .store
        .gaps(&GapFilter {
            partition: q.partition,
            feed: q.feed,
            state: q.state,
            limit: Some(q.limit.unwrap_or(100).clamp(1, 10_000)),
        })
        .await
        .map_err(ApiError::internal)?;
    let gaps: Vec<_> = gaps.into_iter().map(redacted).collect();
    Ok(Json(json!({ "gaps": gaps })))
}

#[derive(Deserialize)]
struct PartitionQuery {
    state: Option<String>,
    /// Partitions after this one (in name order): the previous page's `next`.
    after: Option<String>,
    limit: Option<i64>,
}

/// Partitions listed per page by default, and at most.
const PARTITIONS_PAGE: i64 = 100;
const PARTITIONS_PAGE_MAX: i64 = 1000;
const PARTITION_STATES: &[&str] = &["silent", "fresh", "unseen"];

/// A partitioned feed's partitions in name order, a page at a time (`next`
/// is the `after` of the following page), with the count of each state. As
/// the store has them: newest events are saved about once a second.
async fn partitions(
    State(s): State<AppState>,
    Path(feed): Path<String>,
    q: Result<Query<PartitionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Some(handle) = s.feeds.get(&feed) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown feed {feed:?}"),
        ));
    };
    if !handle.config.is_partitioned() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("feed {feed:?} is not partitioned (no [feeds.partitions])"),
        ));
    }
    if let Some(st) = &q.state {
        if !PARTITION_STATES.contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown state {st:?}; one of {}",
                PARTITION_STATES.join(", ")
            )));
        }
    }
    let limit = q
        .limit
        .unwrap_or(PARTITIONS_PAGE)
        .clamp(1, PARTITIONS_PAGE_MAX);
    let page = s
        .store
        .partitions_page(&feed, q.state.as_deref(), q.after.as_deref(), limit)
        .await
        .map_err(ApiError::internal)?;
    let now = Utc::now();
    let age = |t: DateTime<Utc>| ((now - t).num_milliseconds().max(0) as f64) / 1000.0;
    let next = (page.partitions.len() as i64 == limit)
        .then(|| page.partitions.last().map(|p| p.partition.clone()))
        .flatten();
    let rows: Vec<_> = page
        .partitions
        .into_iter()
        .map(|p| {
            let state = match (&p.open_gap, p.last_event) {
                (Some(_), _) => "silent",
                (None, Some(_)) => "fresh",
                (None, None) => "unseen",
            };
            json!({
                "partition": p.partition,
                "state": state,
                "last_event": p.last_event,
                "freshness_seconds": p.last_event.map(age),
                "open_gap": p.open_gap.map(|(id, start)| json!({
                    "id": id, "start": start, "silent_seconds": age(start),
                })),
            })
        })
        .collect();
    Ok(Json(json!({
        "feed": feed,
        "total": page.silent + page.fresh + page.unseen,
        "silent": page.silent,
        "fresh": page.fresh,
        "unseen": page.unseen,
        "partitions": rows,
        "next": next,
    })))
}

fn gap_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("gap id must be an integer, got {raw:?}")))
}

async fn gap(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = gap_id(&id)?;
    let gap = s.store.gap(id).await.map_err(ApiError::internal)?;
    let Some(gap) = gap else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gap {id}")));
    };
    let chunks = s.store.chunks(id).await.map_err(ApiError::internal)?;
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| {
            json!({
                "idx": c.idx, "partition": c.partition, "from": c.start, "to": c.end, "state": c.state,
                "attempts": c.attempts,
                "last_error": c.last_error.as_deref().map(crate::redact::text),
            })
        })
        .collect();
    let mut v = serde_json::to_value(redacted(gap)).map_err(ApiError::internal)?;
    v["chunks"] = json!(chunks);
    Ok(Json(v))
}

/// Errors stored before redaction existed are redacted when served.
fn redacted(mut gap: crate::store::Gap) -> crate::store::Gap {
    gap.last_error = gap.last_error.as_deref().map(crate::redact::text);
    gap
}

fn require_admin(s: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &s.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: server.admin_token is not set",
        ));
    };
    check_token(token, headers)
}

fn check_token(token: &Secret, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer …)",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The gap an admin request is about: token checked, id parsed, gap found.
async fn admin_gap(
    s: &AppState,
    headers: &HeaderMap,
    raw_id: &str,
) -> ApiResult<crate::store::Gap> {
    require_admin(s, headers)?;
    let id = gap_id(raw_id)?;
    s.store
        .gap(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no gap {id}")))
}

async fn retry_gap(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let gap = admin_gap(&s, &headers, &id).await?;
    let id = gap.id;
    if s.feeds
        .get(&gap.feed)
        .is_none_or(|h| h.config.backfill.is_none())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("feed {:?} has no backfill configured", gap.feed),
        ));
    }
    s.store
        .retry_gap(id, Utc::now())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(feed = %gap.feed, gap_id = id, "gap fill retried by hand");
    s.fills.wake(&gap.feed);
    Ok(Json(json!({ "gap_id": id, "fill": "pending" })))
}

async fn ignore_gap(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let gap = admin_gap(&s, &headers, &id).await?;
    let id = gap.id;
    s.store
        .set_fill(id, crate::store::FillState::Ignored, None, Utc::now())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(feed = %gap.feed, gap_id = id, "gap ignored by hand");
    Ok(Json(json!({ "gap_id": id, "fill": "ignored" })))
}

/// How a manual fill's refusal is answered.
fn fill_status(e: &crate::fill::FillError) -> StatusCode {
    use crate::fill::FillError as E;
    match e {
        E::UnknownFeed(_) => StatusCode::NOT_FOUND,
        E::NoBackfill(_) => StatusCode::CONFLICT,
        E::BadInterval(_) | E::BadPartition(_) => StatusCode::BAD_REQUEST,
        E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    feed: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    #[serde(default)]
    dry_run: bool,
    /// Partitioned feeds: only this partition (absent: every one).
    #[serde(default)]
    partition: Option<String>,
}

async fn backfill(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BackfillRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<crate::fill::FillPlan>)> {
    require_admin(&s, &headers)?;
    let Json(req) = body.inspect_err(|_| {
        s.metrics.emit(InputRejected {
            feed: "",
            source: InputSource::Api,
            reason: Rejection::BadRequest,
        })
    })?;
    let outcome = s
        .fills
        .manual(
            &req.feed,
            req.partition.as_deref(),
            req.from,
            req.to,
            req.dry_run,
        )
        .await
        .map_err(|e| ApiError::new(fill_status(&e), e.to_string()))?;
    let status = if req.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(outcome)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedObservation {
    id: serde_json::Value,
    event_time: serde_json::Value,
    /// Optional, for the shape check: the message body as the app received
    /// it (its JSON text as a string, or the JSON value itself).
    #[serde(default)]
    body: Option<serde_json::Value>,
    /// Optional, with `body`: its String message attributes.
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// Partitioned feeds: the record's partition value.
    #[serde(default)]
    partition: Option<serde_json::Value>,
}

/// Why one reported observation is refused (listed in the answer's `errors`).
#[derive(Debug, thiserror::Error)]
enum ObservationError {
    /// Not an object of the expected fields.
    #[error("{0}")]
    Shape(serde_json::Error),
    #[error("id must be a non-empty string or a number")]
    Id,
    #[error("event_time: {0}")]
    EventTime(crate::timefmt::TimeParseError),
}

/// A reported body larger than this is not sampled (SQS's own limit).
const MAX_SAMPLED_BODY: usize = 1024 * 1024;

/// A reported body as the shape sample keeps it: JSON text, or None when
/// it is not JSON or too large.
fn reported_body(body: serde_json::Value) -> Option<String> {
    let text = match body {
        serde_json::Value::String(text) => {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).ok()?;
            text
        }
        other => other.to_string(),
    };
    (text.len() <= MAX_SAMPLED_BODY).then_some(text)
}

async fn observations(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(feed): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Json<serde_json::Value>> {
    // The token first: neither the body is read nor is it told whether a feed
    // exists before the caller is known. Config guarantees a token exists.
    let known = s.feeds.contains_key(&feed);
    let label = if known { feed.as_str() } else { "" };
    let tokens = [s.report_token.as_ref(), s.admin_token.as_ref()];
    if !tokens
        .iter()
        .flatten()
        .any(|t| check_token(t, &headers).is_ok())
    {
        s.metrics.emit(InputRejected {
            feed: label,
            source: InputSource::Report,
            reason: Rejection::BadRequest,
        });
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token (Authorization: Bearer <server.report_token or server.admin_token>)",
        ));
    }
    let Some(handle) = s.feeds.get(&feed) else {
        s.metrics.emit(InputRejected {
            feed: "",
            source: InputSource::Report,
            reason: Rejection::BadRequest,
        });
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown feed {feed:?}"),
        ));
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        s.metrics.emit(InputRejected {
            feed: &feed,
            source: InputSource::Report,
            reason: Rejection::BadRequest,
        });
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes, or cut short"),
        )
    })?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        s.metrics.emit(InputRejected {
            feed: &feed,
            source: InputSource::Report,
            reason: Rejection::BadRequest,
        });
        ApiError::bad_request(format!("body is not JSON: {e}"))
    })?;
    // Either a bare array or {"observations": [...]}.
    let items = match body {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut o) => match o.remove("observations") {
            Some(serde_json::Value::Array(items)) => items,
            _ => {
                s.metrics.emit(InputRejected {
                    feed: &feed,
                    source: InputSource::Report,
                    reason: Rejection::BadRequest,
                });
                return Err(ApiError::bad_request(
                    "expected a JSON array of {id, event_time} or {\"observations\": [...]}",
                ));
            }
        },
        _ => {
            s.metrics.emit(InputRejected {
                feed: &feed,
                source: InputSource::Report,
                reason: Rejection::BadRequest,
            });
            return Err(ApiError::bad_request(
                "expected a JSON array of {id, event_time} or {\"observations\": [...]}",
            ));
        }
    };
    if items.len() > MAX_OBSERVATIONS {
        s.metrics.emit(InputRejected {
            feed: &feed,
            source: InputSource::Report,
            reason: Rejection::BadRequest,
        });
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_OBSERVATIONS} observations per request"),
        ));
    }
    let format = handle.config.watch.event_time_format;
    let partitioned = handle.config.is_partitioned();
    let now = Utc::now();
    // At most one reported body a request is sampled (one per spacing).
    let mut sample = handle.shape_sample.as_ref().filter(|s| s.wants(now));
    let mut accepted = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let parsed = serde_json::from_value::<ReportedObservation>(item)
            .map_err(ObservationError::Shape)
            .and_then(|o| {
                let id = crate::observe::id_string(&o.id).ok_or(ObservationError::Id)?;
                let event_time = match &o.event_time {
                    // RFC 3339 strings are always understood; numbers follow the feed's format.
                    serde_json::Value::String(_) => crate::timefmt::TimeFormat::Rfc3339
                        .parse_json(&o.event_time)
                        .or_else(|_| format.parse_json(&o.event_time)),
                    _ => format.parse_json(&o.event_time),
                }
                .map_err(ObservationError::EventTime)?;
                // Without a usable partition value it is observed for the
                // feed as a whole only (counted below).
                let partition = o
                    .partition
                    .as_ref()
                    .filter(|_| partitioned)
                    .and_then(crate::observe::partition_value);
                let observation = Observation {
                    id,
                    event_time,
                    partition,
                };
                Ok((observation, o.body, o.attributes))
            });
        match parsed {
            Ok((o, body, attributes)) => {
                if partitioned && o.partition.is_none() {
                    s.metrics.emit(InputRejected {
                        feed: &feed,
                        source: InputSource::Report,
                        reason: Rejection::NoPartitionKey,
                    });
                }
                if let Some(body) = body.filter(|_| sample.is_some()).and_then(reported_body) {
                    if let Some(sampler) = sample.take() {
                        sampler.offer(LiveMessage {
                            id: o.id.clone(),
                            event_time: o.event_time,
                            received_at: now,
                            body,
                            attributes: attributes
                                .into_iter()
                                .map(|(k, v)| (k, Attribute::string(v)))
                                .collect(),
                        });
                    }
                }
                accepted.push(o)
            }
            Err(e) => {
                s.metrics.emit(InputRejected {
                    feed: &feed,
                    source: InputSource::Report,
                    reason: Rejection::BadObservation,
                });
                if errors.len() < 10 {
                    errors.push(format!("[{i}]: {e}"));
                }
            }
        }
    }
    if accepted.is_empty() && !errors.is_empty() {
        return Err(ApiError::bad_request(format!(
            "no valid observation: {}",
            errors.join("; ")
        )));
    }
    let n = accepted.len();
    if n > 0 && handle.observations.send(accepted).await.is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the feed is shutting down",
        ));
    }
    Ok(Json(
        json!({ "accepted": n, "rejected": errors.len(), "errors": errors }),
    ))
}
