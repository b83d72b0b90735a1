//! `/control/*`: how tests steer the simulator and read what it did.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::error;
use crate::history::record_id;
use crate::sim::{now_ms, Silence, Sim, Stats};
use crate::timefmt::{format_millis, parse_time, TimeFormat};

/// `{"for_seconds": N}` (from now), `{"from", "to"}` (RFC 3339 or unix), or `{}` (from now until resumed);
/// with `"store": "s7"` only that store goes quiet (`--stores`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    for_seconds: Option<f64>,
    from: Option<String>,
    to: Option<String>,
    store: Option<String>,
}

pub async fn silence(State(sim): State<Arc<Sim>>, body: Option<Json<SilenceRequest>>) -> Response {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let now = now_ms();
    let store = match &req.store {
        None => None,
        Some(name) => match sim.history().store_index(name) {
            Some(k) => Some(k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("store: no store {name:?}"),
                )
            }
        },
    };
    let time = |v: &Option<String>, name: &str| {
        v.as_deref()
            .map(|s| parse_time(s, TimeFormat::Auto).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let interval = match (
        req.for_seconds,
        time(&req.from, "from"),
        time(&req.to, "to"),
    ) {
        (_, Err(e), _) | (_, _, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
        (Some(secs), Ok(None), Ok(None)) if secs.is_finite() && secs >= 0.0 => Silence {
            from: now,
            to: Some(now + (secs * 1000.0).round() as i64),
            store,
        },
        (None, Ok(from), Ok(to)) => Silence {
            from: from.unwrap_or(now),
            to,
            store,
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give for_seconds (>= 0) or from/to, not both",
            )
        }
    };
    tracing::info!(from = %format_millis(interval.from), to = ?interval.to.map(|t| format_millis(t).to_string()), store = ?req.store, "silence");
    let mut controls = sim.controls();
    controls.silences.push(interval);
    Json(json!({ "silences": controls.silences })).into_response()
}

/// Ends every silence: records created from now on are published.
pub async fn resume(State(sim): State<Arc<Sim>>) -> Response {
    tracing::info!("resume");
    sim.controls().silences.clear();
    Json(json!({ "silences": [] })).into_response()
}

/// Fields left out keep their current value; `"retry_after": null` removes the header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsRequest {
    error_rate: Option<f64>,
    statuses: Option<Vec<u16>>,
    latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    retry_after: Option<Value>,
    malformed_every: Option<u64>,
    cursor_loop: Option<bool>,
    page_size_cap: Option<usize>,
    bad_link: Option<bool>,
    endless_page: Option<bool>,
    error_bodies: Option<u64>,
}

/// Tells a missing field (`None`) from an explicit null (`Some(Value::Null)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

pub async fn get_faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(json!(sim.controls().faults)).into_response()
}

pub async fn set_faults(State(sim): State<Arc<Sim>>, Json(req): Json<FaultsRequest>) -> Response {
    if let Some(rate) = req.error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return error(StatusCode::BAD_REQUEST, "error_rate: must be within 0..=1");
        }
    }
    if let Some(bad) = req
        .statuses
        .iter()
        .flatten()
        .find(|s| !(100..=599).contains(*s))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("statuses: {bad} is not an HTTP status"),
        );
    }
    let retry_after = match req.retry_after {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(Value::Number(n)) => Some(Some(n.to_string())),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "retry_after: must be a string, a number or null",
            )
        }
    };
    let mut controls = sim.controls();
    let faults = &mut controls.faults;
    if let Some(v) = req.error_rate {
        faults.error_rate = v;
    }
    if let Some(v) = req.statuses {
        faults.statuses = v;
    }
    if let Some(v) = req.latency_ms {
        faults.latency_ms = v;
    }
    if let Some(v) = retry_after {
        faults.retry_after = v;
    }
    if let Some(v) = req.malformed_every {
        faults.malformed_every = v;
    }
    if let Some(v) = req.cursor_loop {
        faults.cursor_loop = v;
    }
    if let Some(v) = req.page_size_cap {
        faults.page_size_cap = v;
    }
    if let Some(v) = req.bad_link {
        faults.bad_link = v;
    }
    if let Some(v) = req.endless_page {
        faults.endless_page = v;
    }
    if let Some(v) = req.error_bodies {
        faults.error_bodies = v;
    }
    tracing::info!(faults = ?faults, "faults");
    Json(json!(faults)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    rate: f64,
    /// Also changes the share of live records lost on their way to SQS.
    drop_rate: Option<f64>,
}

pub async fn set_rate(State(sim): State<Arc<Sim>>, Json(req): Json<RateRequest>) -> Response {
    if !req.rate.is_finite() || req.rate < 0.0 {
        return error(StatusCode::BAD_REQUEST, "rate: must be a number >= 0");
    }
    if req.drop_rate.is_some_and(|d| !(0.0..=1.0).contains(&d)) {
        return error(StatusCode::BAD_REQUEST, "drop_rate: must be within 0..=1");
    }
    tracing::info!(rate = req.rate, drop_rate = req.drop_rate, "rate");
    if let Some(d) = req.drop_rate {
        sim.controls().drop_rate = d;
    }
    sim.set_rate(req.rate);
    Json(json!({ "rate": req.rate, "drop_rate": sim.controls().drop_rate })).into_response()
}

/// Sets (or with `null`, removes) the API's request quota.
pub async fn set_quota(
    State(sim): State<Arc<Sim>>,
    Json(req): Json<Option<crate::quota::QuotaConfig>>,
) -> Response {
    tracing::info!(quota = ?req, "quota");
    let mut q = sim.quota.lock().unwrap_or_else(|e| e.into_inner());
    q.set(req);
    Json(json!({ "quota": q.config })).into_response()
}

pub async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    let s = &sim.stats;
    let (len, first, last) = {
        let h = sim.history();
        let time = |r: Option<&crate::history::Record>| {
            r.map(|r| format_millis(r.created_at_ms).to_string())
        };
        (h.len(), time(h.records().first()), time(h.records().last()))
    };
    let controls = sim.controls();
    let now = now_ms();
    let produced = Stats::get(&s.produced);
    let published = Stats::get(&s.published);
    let silenced = Stats::get(&s.silenced);
    let dropped = Stats::get(&s.dropped);
    Json(json!({
        "seeded": Stats::get(&s.seeded),
        "produced": produced,
        "published": published,
        "silenced": silenced,
        "dropped": dropped,
        "drop_rate": controls.drop_rate,
        "pending_publish": if sim.settings.queue_url.is_some() {
            produced.saturating_sub(published + silenced + dropped)
        } else {
            0
        },
        "publish_errors": Stats::get(&s.publish_errors),
        "served_requests": Stats::get(&s.served_requests),
        "served_pages": Stats::get(&s.served_pages),
        "served_records": Stats::get(&s.served_records),
        "errors_injected": Stats::get(&s.errors_injected),
        "malformed_served": Stats::get(&s.malformed_served),
        "unauthorized": Stats::get(&s.unauthorized),
        "bad_requests": Stats::get(&s.bad_requests),
        "token_requests": Stats::get(&s.token_requests),
        "tokens_issued": Stats::get(&s.tokens_issued),
        "tokens_refused": Stats::get(&s.tokens_refused),
        "error_bodies_served": Stats::get(&s.error_bodies_served),
        "quota_admitted": Stats::get(&s.quota_admitted),
        "quota_refused": Stats::get(&s.quota_refused),
        "requests_by_store": s.store_requests(),
        "stores": sim.history().stores(),
        "history_len": len,
        "first_created_at": first,
        "last_created_at": last,
        "rate": controls.rate,
        "silent_now": controls.silences.iter().any(|i| i.contains(now)),
        "silences": controls.silences,
        "faults": controls.faults,
        "pagination": sim.settings.pagination,
        "time_format": sim.settings.time_format,
        "queue_url": sim.settings.queue_url,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct RecordsQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    /// Only the records lost on their way to SQS.
    #[serde(default)]
    dropped: bool,
    /// Only this store's records (`--stores`).
    store: Option<String>,
}

/// `{"count": total in [from, to), "offset", "ids": [...]}`; `limit` bounds `ids` (`0`: count only).
pub async fn records(State(sim): State<Arc<Sim>>, Query(q): Query<RecordsQuery>) -> Response {
    let time = |v: &Option<String>, name: &str| {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_time(s, TimeFormat::Auto).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (from, to) = match (time(&q.from, "from"), time(&q.to, "to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let history = sim.history();
    if let Some(name) = &q.store {
        let Some(stride) = history.store_index(name).and_then(|k| history.stride(k)) else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("store: no store {name:?}"),
            );
        };
        let page = history.page_in(
            &crate::history::PageQuery {
                since: from,
                until: to,
                position: crate::history::Position::Start,
                limit: None,
            },
            stride,
        );
        let ids: Vec<String> = history
            .views(&page)
            .iter()
            .filter(|v| !q.dropped || history.records()[v.seq as usize - 1].dropped)
            .map(|v| record_id(history.prefix(), v.seq))
            .collect();
        let count = ids.len();
        let ids: Vec<String> = ids
            .into_iter()
            .skip(q.offset)
            .take(q.limit.unwrap_or(usize::MAX))
            .collect();
        return Json(json!({ "count": count, "offset": q.offset, "ids": ids })).into_response();
    }
    if q.dropped {
        let ids: Vec<String> = {
            let (lo, hi) = history.range(from, to);
            (lo..hi)
                .filter(|&i| history.records()[i].dropped)
                .map(|i| record_id(history.prefix(), i as u64 + 1))
                .collect()
        };
        return Json(json!({ "count": ids.len(), "offset": 0, "ids": ids })).into_response();
    }
    let (lo, hi) = history.range(from, to);
    let start = lo.saturating_add(q.offset).min(hi);
    let end = q.limit.map_or(hi, |l| start.saturating_add(l).min(hi));
    let prefix = history.prefix();
    let mut body = String::with_capacity(64 + (end - start) * (prefix.len() + 16));
    body.push_str(&format!(
        "{{\"count\":{},\"offset\":{},\"ids\":[",
        hi - lo,
        q.offset
    ));
    for i in start..end {
        if i > start {
            body.push(',');
        }
        body.push('"');
        body.push_str(&record_id(prefix, i as u64 + 1));
        body.push('"');
    }
    body.push_str("]}");
    drop(history);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
