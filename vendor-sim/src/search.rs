//! The vendor's other API shapes, each a real family:
//! - `POST /v1/search`: a search API taking the window, the page and its size
//!   in a JSON body (Elasticsearch-, Algolia-, Datadog-style), answering
//!   `{"hits": [...], "next_cursor": ...}`;
//! - `GET /v1/days/{date}/events`: one UTC day per request, the date in the
//!   path (`2026-12-05`), paged with `cursor` / `limit` like `/v1/events`.
//!
//! Both are strict as real APIs are: unknown fields, a time of the wrong JSON
//! type or a malformed date are a 400 saying which.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{admit, error, json};
use crate::history::{
    decode_cursor, encode_cursor, PageQuery, Position, RecordView, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::sim::{Sim, Stats};
use crate::timefmt::{parse_time, TimeFormat};

/// The body of `POST /v1/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    window: Window,
    /// The opaque cursor of the next page (absent or null: the first).
    #[serde(default)]
    cursor: Option<String>,
    /// Page numbers instead of cursors: 1-based.
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    /// Inclusive; RFC 3339, or a number: unix seconds, or milliseconds from 10^11.
    from: Value,
    /// Exclusive.
    to: Value,
}

pub async fn search(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let admitted = match admit(&sim, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    admitted.answer(match search_page(&sim, &headers, &body) {
        Ok(v) => json(&v),
        Err(msg) => {
            Stats::bump(&sim.stats.bad_requests, 1);
            error(StatusCode::BAD_REQUEST, &msg)
        }
    })
}

fn search_page(sim: &Sim, headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err("content-type: expected application/json".into());
    }
    let req: SearchRequest = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let since = time(&req.window.from, "window.from")?;
    let until = time(&req.window.to, "window.to")?;
    let size = match req.size {
        None => DEFAULT_LIMIT,
        Some(n @ 1..) => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        Some(0) => return Err("size: must be at least 1".into()),
    };
    let position = match (&req.cursor, req.page) {
        (Some(_), Some(_)) => return Err("give cursor or page, not both".into()),
        (Some(c), None) => Position::Index(
            decode_cursor(c).ok_or_else(|| format!("cursor: invalid cursor {c:?}"))?,
        ),
        (None, Some(0)) => return Err("page: pages start at 1".into()),
        (None, Some(p)) => Position::Skip(
            usize::try_from(p - 1)
                .unwrap_or(usize::MAX)
                .saturating_mul(size),
        ),
        (None, None) => Position::Start,
    };
    let query = PageQuery {
        since: Some(since),
        until: Some(until),
        position,
        limit: Some(size),
    };
    let (hits, page) = list(sim, &query);
    Ok(if req.page.is_some() {
        json!({ "hits": hits })
    } else {
        json!({ "hits": hits, "next_cursor": page.more.then(|| encode_cursor(page.end)) })
    })
}

/// A window bound: a JSON number (unix seconds, or milliseconds from
/// 10^11) or an RFC 3339 string; a number written as a string is refused,
/// as typed search APIs do.
fn time(v: &Value, name: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => parse_time(&n.to_string(), TimeFormat::Auto),
        Value::String(s) => parse_time(s, TimeFormat::Rfc3339),
        other => Err(format!(
            "expected a number or an RFC 3339 string, got {other}"
        )),
    }
    .map_err(|e| format!("{name}: {e}"))
}

/// The records of `query` as the API lists them, and the page.
fn list(sim: &Sim, query: &PageQuery) -> (Vec<Value>, crate::history::Page) {
    let history = sim.history();
    let page = history.page(query);
    let prefix = history.prefix().to_owned();
    let views = history.views(&page);
    drop(history);
    Stats::bump(&sim.stats.served_pages, 1);
    Stats::bump(&sim.stats.served_records, views.len() as u64);
    let records = views
        .into_iter()
        .map(|v| {
            let r: RecordView<'_> = v.with_prefix(&prefix);
            serde_json::to_value(r).unwrap_or(Value::Null)
        })
        .collect();
    (records, page)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayQuery {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn day(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(date): Path<String>,
    query: Result<Query<DayQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let admitted = match admit(&sim, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let answer = query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| day_page(&sim, &date, &q));
    admitted.answer(match answer {
        Ok(v) => json(&v),
        Err(msg) => {
            Stats::bump(&sim.stats.bad_requests, 1);
            error(StatusCode::BAD_REQUEST, &msg)
        }
    })
}

fn day_page(sim: &Sim, date: &str, q: &DayQuery) -> Result<Value, String> {
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|_| date.len() == 10)
        .ok_or_else(|| format!("date: expected YYYY-MM-DD, got {date:?}"))?;
    let start = day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or("date: out of range")?;
    let position = match &q.cursor {
        Some(c) if !c.is_empty() => Position::Index(
            decode_cursor(c).ok_or_else(|| format!("cursor: invalid cursor {c:?}"))?,
        ),
        _ => Position::Start,
    };
    let limit = match q.limit {
        Some(0) => return Err("limit: must be at least 1".into()),
        Some(n) => n.min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let (data, page) = list(
        sim,
        &PageQuery {
            since: Some(start),
            until: Some(start + 86_400_000),
            position,
            limit: Some(limit),
        },
    );
    Ok(json!({ "data": data, "next_cursor": page.more.then(|| encode_cursor(page.end)) }))
}
