//! `GET /v1/events`: the vendor's REST API over the history, and what every
//! API request goes through first ([`admit`]). With `--stores`, one store's
//! records at `GET /v1/stores/{store}/events` (or `/v1/events?store_id=`),
//! and the stores at `GET /v1/stores`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Serialize;

use crate::history::{
    decode_cursor, encode_cursor, record_id, Page, PageQuery, Position, RecordView, DEFAULT_LIMIT,
    MAX_LIMIT,
};
use crate::sim::{Pagination, Sim, Stats};
use crate::timefmt::parse_time;

type Params = Vec<(String, String)>;

/// An API request let through [`admit`]: the quota headers its answer carries.
pub struct Admitted {
    quota: crate::quota::Headers,
}

impl Admitted {
    /// `resp` with the quota headers.
    pub fn answer(self, mut resp: Response) -> Response {
        add_headers(&mut resp, &self.quota);
        resp
    }
}

fn add_headers(resp: &mut Response, headers: &crate::quota::Headers) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(*name, v);
        }
    }
}

/// What every API request goes through before its handler, in a real API's
/// order: latency, authentication, the quota (a request past it is answered
/// 429), injected error statuses, injected 200s with an error body.
pub async fn admit(sim: &Sim, headers: &HeaderMap) -> Result<Admitted, Response> {
    Stats::bump(&sim.stats.served_requests, 1);
    let latency = sim.controls().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(refused) = authenticate(sim, headers) {
        return Err(refused);
    }
    let quota = {
        let mut q = sim.quota.lock().unwrap_or_else(|e| e.into_inner());
        q.take(crate::sim::now_ms())
    };
    let quota = match quota {
        None => Vec::new(),
        Some(Ok(h)) => {
            Stats::bump(&sim.stats.quota_admitted, 1);
            h
        }
        Some(Err((h, retry_after))) => {
            Stats::bump(&sim.stats.quota_refused, 1);
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            add_headers(&mut resp, &h);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Err(resp);
        }
    };
    let admitted = Admitted { quota };
    let faults = sim.controls().faults.clone();
    if faults.error_rate > 0.0 && !faults.statuses.is_empty() {
        let mut rng = rand::rng();
        if rng.random_bool(faults.error_rate.clamp(0.0, 1.0)) {
            Stats::bump(&sim.stats.errors_injected, 1);
            let code = faults.statuses[rng.random_range(0..faults.statuses.len())];
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = error(status, "injected fault");
            if let (Some(after), 429 | 503) = (&faults.retry_after, code) {
                if let Ok(v) = HeaderValue::from_str(after) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            return Err(admitted.answer(resp));
        }
    }
    let error_body = {
        let mut c = sim.controls();
        let left = c.faults.error_bodies;
        c.faults.error_bodies = left.saturating_sub(1);
        left > 0
    };
    if error_body {
        Stats::bump(&sim.stats.error_bodies_served, 1);
        return Err(admitted.answer(json(&serde_json::json!({
            "status": "error",
            "error": { "code": "search_timeout", "message": "the search timed out, try again" },
        }))));
    }
    Ok(admitted)
}

/// The 401 for a request without valid credentials.
fn authenticate(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    if sim.settings.oauth.is_some() {
        if !crate::oauth::valid(sim, headers) {
            Stats::bump(&sim.stats.unauthorized, 1);
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "missing, unknown or expired access token",
            ));
        }
    } else if let Some(token) = &sim.settings.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            Stats::bump(&sim.stats.unauthorized, 1);
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token",
            ));
        }
    }
    None
}

pub async fn events(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let store = param(&params, "store_id").map(str::to_owned);
    serve(&sim, &headers, &params, store, "/v1/events").await
}

/// One store's records (`--stores`).
pub async fn store_events(
    State(sim): State<Arc<Sim>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let path = format!("/v1/stores/{}/events", encode(&store));
    serve(&sim, &headers, &params, Some(store), &path).await
}

async fn serve(
    sim: &Sim,
    headers: &HeaderMap,
    params: &Params,
    store: Option<String>,
    path: &str,
) -> Response {
    // Every request, answered or not, counts for the store it names ("*": none).
    sim.stats
        .count_store_request(store.as_deref().unwrap_or("*"));
    tracing::debug!(store = store.as_deref().unwrap_or("*"), "events request");
    match admit(sim, headers).await {
        Ok(admitted) => admitted.answer(events_page(sim, headers, params, store.as_deref(), path)),
        Err(resp) => resp,
    }
}

/// `GET /v1/stores` paged: `limit` stores after the store `after`.
#[derive(Debug, serde::Deserialize)]
pub struct StoresQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `{"stores": [{"id": "s1", "name": "Store 1"}, …]}` (`--stores`); with
/// `?limit=N` a page of N, after `?after=<id>`, with `next_cursor` (the last
/// id, null on the last page) and `links.next` (that page's path).
pub async fn stores(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<StoresQuery>,
) -> Response {
    sim.stats.count_store_request("(listing)");
    let admitted = match admit(&sim, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let n = sim.history().stores();
    if n == 0 {
        return admitted.answer(error(
            StatusCode::NOT_FOUND,
            "this vendor has no stores (--stores)",
        ));
    }
    let first = match &q.after {
        None => 0,
        Some(after) => match (0..n).find(|&k| crate::history::store_name(k) == *after) {
            Some(k) => k + 1,
            None => {
                return admitted.answer(error(
                    StatusCode::BAD_REQUEST,
                    &format!("no store {after:?} to list after"),
                ))
            }
        },
    };
    let end = q.limit.map_or(n, |l| (first + l.max(1)).min(n));
    let stores: Vec<serde_json::Value> = (first..end)
        .map(|k| {
            serde_json::json!({
                "id": crate::history::store_name(k),
                "name": format!("Store {}", k + 1),
            })
        })
        .collect();
    let Some(limit) = q.limit else {
        return admitted.answer(json(&serde_json::json!({ "stores": stores })));
    };
    let next = (end < n).then(|| crate::history::store_name(end - 1));
    let link = next
        .as_ref()
        .map(|after| format!("/v1/stores?limit={limit}&after={after}"));
    admitted.answer(json(&serde_json::json!({
        "stores": stores,
        "next_cursor": next,
        "links": { "next": link },
    })))
}

fn events_page(
    sim: &Sim,
    headers: &HeaderMap,
    params: &Params,
    store: Option<&str>,
    path: &str,
) -> Response {
    let faults = sim.controls().faults.clone();
    if faults.endless_page {
        Stats::bump(&sim.stats.malformed_served, 1);
        let head = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"data\": [\""))
        });
        let filler = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 64 * 1024]))
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(futures_util::StreamExt::chain(head, filler)),
        )
            .into_response();
    }

    let request = match parse_request(sim, params, faults.page_size_cap) {
        Ok(r) => r,
        Err(msg) => {
            Stats::bump(&sim.stats.bad_requests, 1);
            return error(StatusCode::BAD_REQUEST, &msg);
        }
    };

    let page_no = sim.stats.served_pages.fetch_add(1, Ordering::Relaxed) + 1;
    if faults.malformed_every > 0 && page_no.is_multiple_of(faults.malformed_every) {
        Stats::bump(&sim.stats.malformed_served, 1);
        return (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"data\": [{\"id\": \"trunc",
        )
            .into_response();
    }

    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let (prefix, views, page) = {
        let history = sim.history();
        let stride = match store {
            None => None,
            Some(name) => match history.store_index(name).and_then(|k| history.stride(k)) {
                Some(stride) => Some(stride),
                None => return error(StatusCode::NOT_FOUND, &format!("no store {name:?}")),
            },
        };
        let newest_first = request.style == Pagination::Stripe;
        let page = match (newest_first, stride) {
            (true, None) => history.page_newest_first(&request.query),
            (true, Some(st)) => history.page_newest_first_in(&request.query, st),
            (false, None) => history.page(&request.query),
            (false, Some(st)) => history.page_in(&request.query, st),
        };
        (history.prefix().to_owned(), history.views(&page), page)
    };
    Stats::bump(&sim.stats.served_records, views.len() as u64);
    let records: Vec<RecordView<'_>> = views.iter().map(|v| v.with_prefix(&prefix)).collect();

    let next_cursor = next_cursor(&request, &page, faults.cursor_loop);
    match request.style {
        Pagination::None | Pagination::Page | Pagination::Offset => json(&Body {
            data: &records,
            rest: serde_json::json!({}),
        }),
        Pagination::Cursor => json(&Body {
            data: &records,
            rest: serde_json::json!({ "next_cursor": next_cursor.unwrap_or_default() }),
        }),
        Pagination::HeaderCursor => {
            let mut resp = json(&Body {
                data: &records,
                rest: serde_json::json!({}),
            });
            if let Some(c) = next_cursor.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert("x-next-cursor", c);
            }
            resp
        }
        Pagination::CursorLast => json(&Body {
            data: &records,
            rest: serde_json::json!({ "has_more": page.more }),
        }),
        Pagination::NextUrl => {
            let next = next_cursor.map(|c| next_url(&host, path, params, &c));
            json(&Body {
                data: &records,
                rest: serde_json::json!({ "links": { "next": next } }),
            })
        }
        Pagination::Stripe => {
            let data: Vec<serde_json::Value> = views
                .iter()
                .rev()
                .map(|v| {
                    let r = v.with_prefix(&prefix);
                    serde_json::json!({
                        "id": record_id(&prefix, r.seq),
                        "object": "event",
                        "created": r.created_at_ms.div_euclid(1000),
                        "seq": r.seq,
                    })
                })
                .collect();
            json(&serde_json::json!({
                "object": "list",
                "data": data,
                "has_more": page.more,
                "url": "/v1/events",
            }))
        }
        Pagination::LinkHeader => {
            let mut resp = json(&records);
            if let Some(c) = next_cursor {
                let link = if faults.bad_link {
                    // An unterminated target: no reader can tell where the URL ends.
                    format!("<{}; rel=\"next\"", next_url(&host, path, params, &c))
                } else {
                    format!("<{}>; rel=\"next\"", next_url(&host, path, params, &c))
                };
                if let Ok(v) = HeaderValue::from_str(&link) {
                    resp.headers_mut().insert(header::LINK, v);
                }
            }
            resp
        }
    }
}

#[derive(Serialize)]
struct Body<'a, 'b> {
    data: &'a [RecordView<'b>],
    #[serde(flatten)]
    rest: serde_json::Value,
}

#[derive(Debug, PartialEq)]
struct Request {
    style: Pagination,
    query: PageQuery,
    /// The `cursor` the request came with, if any.
    cursor: Option<String>,
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn number(params: &Params, name: &str) -> Result<Option<usize>, String> {
    param(params, name)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: not a non-negative integer: {v:?}"))
        })
        .transpose()
}

/// The page size a request gets: what it asked for, clamped to the
/// server's maximum (`cap`, when set, below `MAX_LIMIT`: like servers that
/// clamp `limit` / `per_page` to their own maximum without saying so).
fn page_size(params: &Params, name: &str, cap: usize) -> Result<usize, String> {
    let max = if cap > 0 {
        cap.min(MAX_LIMIT)
    } else {
        MAX_LIMIT
    };
    match number(params, name)? {
        Some(0) => Err(format!("{name}: must be at least 1")),
        Some(n) => Ok(n.min(max)),
        None => Ok(DEFAULT_LIMIT.min(max)),
    }
}

fn parse_request(sim: &Sim, params: &Params, cap: usize) -> Result<Request, String> {
    let style = match param(params, "style") {
        Some(s) => Pagination::parse(s).ok_or_else(|| format!("style: unknown style {s:?}"))?,
        None => sim.settings.pagination,
    };
    let time = |name: &str| {
        param(params, name)
            .map(|v| parse_time(v, sim.settings.time_format).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    let cursor = param(params, "cursor").map(str::to_owned);
    let (position, limit) = match style {
        Pagination::None => (Position::Start, None),
        Pagination::Cursor
        | Pagination::HeaderCursor
        | Pagination::NextUrl
        | Pagination::LinkHeader => {
            let position = match &cursor {
                Some(c) => Position::Index(
                    decode_cursor(c).ok_or_else(|| format!("cursor: invalid cursor {c:?}"))?,
                ),
                None => Position::Start,
            };
            (position, Some(page_size(params, "limit", cap)?))
        }
        Pagination::CursorLast => {
            let position = match param(params, "starting_after") {
                Some(id) => Position::AfterSeq(
                    sim.history()
                        .seq_of_id(id)
                        .ok_or_else(|| format!("starting_after: no such record {id:?}"))?,
                ),
                None => Position::Start,
            };
            (position, Some(page_size(params, "limit", cap)?))
        }
        Pagination::Stripe => {
            let position = match param(params, "starting_after") {
                Some(id) => Position::BeforeSeq(
                    sim.history()
                        .seq_of_id(id)
                        .ok_or_else(|| format!("starting_after: no such object {id:?}"))?,
                ),
                None => Position::Start,
            };
            let limit = match number(params, "limit")? {
                Some(n @ 1..=STRIPE_MAX_LIMIT) if cap > 0 => n.min(cap),
                Some(n @ 1..=STRIPE_MAX_LIMIT) => n,
                Some(n) => {
                    return Err(format!(
                        "limit: must be between 1 and {STRIPE_MAX_LIMIT}, got {n}"
                    ))
                }
                None => 10,
            };
            let gte = unix_seconds(params, "created[gte]")?;
            let lt = unix_seconds(params, "created[lt]")?;
            return Ok(Request {
                style,
                query: PageQuery {
                    since: gte.or(since),
                    until: lt.or(until),
                    position,
                    limit: Some(limit),
                },
                cursor,
            });
        }
        Pagination::Page => {
            let per_page = page_size(params, "per_page", cap)?;
            let page = number(params, "page")?.unwrap_or(1);
            if page == 0 {
                return Err("page: pages start at 1".to_owned());
            }
            (
                Position::Skip((page - 1).saturating_mul(per_page)),
                Some(per_page),
            )
        }
        Pagination::Offset => {
            let offset = number(params, "offset")?.unwrap_or(0);
            (
                Position::Skip(offset),
                Some(page_size(params, "limit", cap)?),
            )
        }
    };
    Ok(Request {
        style,
        query: PageQuery {
            since,
            until,
            position,
            limit,
        },
        cursor,
    })
}

/// Stripe's list API takes at most 100 objects per page.
const STRIPE_MAX_LIMIT: usize = 100;

/// A Stripe-style range bound: whole unix seconds, as milliseconds. A
/// fraction is refused, as Stripe does ("invalid integer").
fn unix_seconds(params: &Params, name: &str) -> Result<Option<i64>, String> {
    param(params, name)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| format!("{name}: invalid integer {v:?}"))
        })
        .transpose()
}

/// The cursor of the next page, `None` at the end.
fn next_cursor(request: &Request, page: &Page, cursor_loop: bool) -> Option<String> {
    if cursor_loop {
        return Some(
            request
                .cursor
                .clone()
                .unwrap_or_else(|| encode_cursor(page.end)),
        );
    }
    page.more.then(|| encode_cursor(page.end))
}

/// The request's own URL with `cursor` replaced.
fn next_url(host: &str, path: &str, params: &Params, cursor: &str) -> String {
    let mut query: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    query.push(format!("cursor={}", encode(cursor)));
    format!("http://{host}{path}?{}", query.join("&"))
}

fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn json<T: Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

pub fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_url_keeps_params_and_replaces_cursor() {
        let params = vec![
            ("since".to_owned(), "2024-01-01T00:00:00+01:00".to_owned()),
            ("cursor".to_owned(), "old".to_owned()),
            ("limit".to_owned(), "5".to_owned()),
        ];
        assert_eq!(
            next_url("127.0.0.1:9", "/v1/events", &params, "abc"),
            "http://127.0.0.1:9/v1/events?since=2024-01-01T00%3A00%3A00%2B01%3A00&limit=5&cursor=abc"
        );
    }

    #[test]
    fn cursor_loop_repeats_the_given_cursor() {
        let request = Request {
            style: Pagination::Cursor,
            query: PageQuery {
                since: None,
                until: None,
                position: Position::Index(3),
                limit: Some(3),
            },
            cursor: Some(encode_cursor(3)),
        };
        let end = Page {
            start: 3,
            end: 5,
            more: false,
            step: 1,
        };
        assert_eq!(next_cursor(&request, &end, false), None);
        assert_eq!(next_cursor(&request, &end, true), Some(encode_cursor(3)));
    }
}
