//! The source API: one page request (its method, URL, headers and body
//! filled from the request template), with the feed's rate limit and the
//! vendor's quota headers, retries with backoff (honouring `Retry-After`),
//! and the page decoded into records.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use url::Url;

use super::auth::{Auth, AuthConfigError, AuthError};
use super::body::{error_text, read_capped, BodyError};
use super::pagination::{resolve_url, PageCursor, PageRequest, PageView, PaginationError};
use super::plan::{query_window, Window};
use super::quota::{self, QuotaHint};
use super::template::{Var, Vars};
use crate::config::{Method, SourceConfig};
use crate::envelope::{Message, Wrapped};
use crate::internal_events::SourceRequestCompleted;
use crate::metrics::{Metrics, RequestStatus};
use crate::retry::{parse_retry_after, RetryPolicy};

/// One record from the source, with the id and event time read from it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) time: DateTime<Utc>,
    /// The record as listed; once rendered, the message body (inside
    /// `envelope`, if the feed has one).
    pub(crate) raw: Value,
    /// Message attributes of the rendered message (`backfill.attributes`).
    pub(crate) attributes: Vec<(String, String)>,
    /// The envelope the message goes out in (`watch.envelope`), once rendered.
    pub(crate) envelope: Option<Wrapped>,
}

impl Record {
    /// The message a sink sends for this record.
    pub(crate) fn message(&self) -> Message<'_> {
        Message {
            body: &self.raw,
            envelope: self.envelope.as_ref(),
        }
    }
}

/// A decoded page.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) records: Vec<Record>,
    /// Records without a usable id or time (skipped), with the first reason.
    pub(crate) rejected: usize,
    pub(crate) first_rejection: Option<String>,
    /// Where the next page starts; None: this was the last page.
    pub(crate) next: Option<PageCursor>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("source answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("source request failed after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("page is not JSON: {0}")]
    NotJson(String),
    #[error("page has no records array at {pointer:?}")]
    NoRecords { pointer: String },
    #[error("{0}")]
    Pagination(#[from] PaginationError),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("cannot build the request: {0}")]
    AuthConfig(#[from] AuthConfigError),
    /// Raise `source.max_page_bytes` or ask for smaller pages (`limit`).
    #[error("page is larger than source.max_page_bytes ({max} bytes)")]
    PageTooLarge { max: u64 },
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A status listed in `source.fail_on`.
    #[error("source answered {status} (in source.fail_on): {body}")]
    FailOn { status: u16, body: String },
}

impl crate::retry::Retryable for SourceError {
    /// Whether the chunk is worth another try later. Transient answers were
    /// already retried within the request; what is left retryable is what
    /// may heal with time (retries ran out, a body cut short). An answer the
    /// vendor would give again (4xx, a cursor loop, an oversized page) is not.
    fn is_retryable(&self) -> bool {
        match self {
            SourceError::Exhausted { .. }
            | SourceError::NotJson(_)
            | SourceError::Auth(AuthError::Transient(_)) => true,
            SourceError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            SourceError::NoRecords { .. }
            | SourceError::Pagination(_)
            | SourceError::Request(_)
            | SourceError::AuthConfig(_)
            | SourceError::PageTooLarge { .. }
            | SourceError::Auth(AuthError::Refused { .. })
            | SourceError::FailOn { .. } => false,
        }
    }
}

/// The source API of one feed. Cheap to clone; all clones share the rate limit.
#[derive(Clone)]
pub(crate) struct Source {
    inner: Arc<Inner>,
}

struct Inner {
    feed: String,
    config: SourceConfig,
    client: reqwest::Client,
    auth: Auth,
    limiter: DefaultDirectRateLimiter,
    /// What the vendor's rate-limit headers allow (see `quota`).
    quota: std::sync::Mutex<quota::Quota>,
    /// Headers whose value has a placeholder, filled per request; the
    /// others are the client's default headers.
    templated_headers: Vec<(HeaderName, String)>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
}

/// One page request, filled in.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) method: Method,
    pub(crate) url: Url,
    /// Headers filled from templates (the static ones are the client's).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Option<Value>,
}

/// The response headers a page is decoded with.
#[derive(Debug, Default)]
pub(crate) struct PageHeaders {
    /// `Link` (the link_header style), as sent: a value that is not
    /// visible ASCII (a UTF-8 URL) is still a next link, never "no next page".
    pub(crate) link: Option<Vec<u8>>,
    /// The cursor style's `cursor_header`, as sent.
    pub(crate) cursor: Option<Vec<u8>>,
}

impl Source {
    pub(crate) fn new(
        feed: &str,
        config: &SourceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let mut headers = HeaderMap::new();
        let mut templated_headers = Vec::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| SourceError::Request(format!("invalid header name {k:?}")))?;
            if !super::template::names(v.expose()).is_empty() {
                templated_headers.push((name, v.expose().to_owned()));
                continue;
            }
            let mut value = HeaderValue::from_str(v.expose())
                .map_err(|_| SourceError::Request(format!("invalid value for header {k:?}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("gapwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Request(e.to_string()))?;
        let limit = config.rate_limit;
        let period = limit.per / limit.count.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            // Start without a burst: the vendor's limit is usually a sliding window.
            .allow_burst(NonZeroU32::MIN);
        let auth = Auth::new(feed, config.auth.as_ref(), client.clone(), metrics.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                feed: feed.to_string(),
                config: config.clone(),
                client,
                auth,
                limiter: RateLimiter::direct(quota),
                quota: std::sync::Mutex::new(quota::Quota::default()),
                templated_headers,
                metrics,
                policy: RetryPolicy {
                    base: Duration::from_millis(500),
                    cap: Duration::from_secs(60),
                    max_retries: config.max_retries,
                },
            }),
        })
    }

    pub(crate) fn config(&self) -> &SourceConfig {
        &self.inner.config
    }

    /// The request for the page at `at` of the window `[start, end)` of
    /// `partition` (`""`: an unpartitioned feed): the template's
    /// placeholders filled, the pagination's parameters added.
    pub(crate) fn prepare(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        partition: &str,
        at: &PageCursor,
    ) -> Result<Prepared, SourceError> {
        let i = &self.inner;
        let c = &i.config;
        let fmt = c.time_format;
        let q = query_window(Window { start, end }, c.time_resolution);
        let (s, e) = (fmt.format(q.start), fmt.format(q.end));
        let cursor = c.pagination.cursor_text(at);
        let vars = Vars {
            start: Var {
                text: &s,
                number: fmt.is_numeric(),
            },
            end: Var {
                text: &e,
                number: fmt.is_numeric(),
            },
            cursor: cursor.as_ref().map(|c| Var {
                text: &c.text,
                number: c.number,
            }),
            partition: (!partition.is_empty()).then_some(Var {
                text: partition,
                number: false,
            }),
        };
        let url =
            match c.pagination.request(at) {
                PageRequest::Url(u) => resolve_url(&c.url, &u)?,
                PageRequest::Params(extra) => {
                    let mut url = c.url.clone();
                    vars.fill_path(&mut url);
                    // The URL's own query pairs come first, filled like `query`.
                    let own: Vec<(String, String)> = url
                        .query_pairs()
                        .filter_map(|(k, v)| Some((k.into_owned(), vars.fill_value(&v)?)))
                        .collect();
                    url.set_query(None);
                    let pairs =
                        own.into_iter()
                            .chain(c.query.iter().filter_map(|(k, v)| {
                                Some((k.clone(), vars.fill_value(v.expose())?))
                            }))
                            .chain(extra);
                    let mut any = false;
                    for (k, v) in pairs {
                        url.query_pairs_mut().append_pair(&k, &v);
                        any = true;
                    }
                    if !any {
                        url.set_query(None);
                    }
                    url
                }
            };
        let mut headers = Vec::with_capacity(i.templated_headers.len());
        for (name, template) in &i.templated_headers {
            let Some(v) = vars.fill_value(template) else {
                continue;
            };
            // The value may be a secret: the message names the header only.
            let mut value = HeaderValue::from_str(&v).map_err(|_| {
                SourceError::Request(format!(
                    "header {name}: the filled value is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.push((name.clone(), value));
        }
        Ok(Prepared {
            method: c.method,
            url,
            headers,
            body: c.body.as_ref().map(|b| vars.fill_json(b.template())),
        })
    }

    /// The URL of the page at `at` for the window `[start, end)`.
    #[cfg(test)]
    pub(crate) fn url(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        partition: &str,
        at: &PageCursor,
    ) -> Result<Url, SourceError> {
        Ok(self.prepare(start, end, partition, at)?.url)
    }

    /// Fetches and decodes one page, retrying what can be retried.
    pub(crate) async fn page(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        partition: &str,
        at: &PageCursor,
    ) -> Result<Page, SourceError> {
        let request = self.prepare(start, end, partition, at)?;
        match self.fetch(&request).await? {
            Some((body, headers)) => self.decode(&body, &headers, at),
            // An `empty_on` status: the window has no records.
            None => Ok(Page {
                records: Vec::new(),
                rejected: 0,
                first_rejection: None,
                next: None,
            }),
        }
    }

    /// Waits until the vendor's quota (its rate-limit headers) allows one
    /// more request, and counts it in flight until the answer.
    async fn take_quota(&self) -> InFlight<'_> {
        let quota = &self.inner.quota;
        loop {
            let until = {
                let mut q = quota.lock().unwrap_or_else(|e| e.into_inner());
                match q.acquire(tokio::time::Instant::now()) {
                    Ok(()) => {
                        return InFlight {
                            source: self,
                            answered: false,
                        }
                    }
                    Err(wait) => wait,
                }
            };
            if until.first {
                let wait = until
                    .until
                    .saturating_duration_since(tokio::time::Instant::now());
                tracing::info!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "the vendor's rate-limit headers say its quota is spent; requests wait for the reset"
                );
            }
            tokio::time::sleep_until(until.until).await;
        }
    }

    /// A GET of another endpoint of the vendor (the partition listing),
    /// with the pages' auth, headers, rate limit, retries and size cap.
    /// None: an `empty_on` status.
    pub(crate) async fn get(&self, url: Url) -> Result<Option<Value>, SourceError> {
        let request = Prepared {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: None,
        };
        Ok(self.fetch(&request).await?.map(|(body, _)| body))
    }

    /// The decoded page and its headers; None for an `empty_on` status.
    async fn fetch(&self, request: &Prepared) -> Result<Option<(Value, PageHeaders)>, SourceError> {
        let i = &self.inner;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            // The rate limiter first: a token taken before a long wait for
            // the limiter may expire before the request leaves.
            i.limiter.until_ready().await;
            let in_flight = self.take_quota().await;
            let credential = match i.auth.credential().await {
                Ok(c) => Some(c),
                Err(e @ AuthError::Refused { .. }) => return Err(e.into()),
                Err(e) => {
                    drop(in_flight);
                    self.retry_or_give_up(attempt, None, e.to_string()).await?;
                    continue;
                }
            };
            let started = Instant::now();
            let method = match request.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
            };
            let mut req = i.client.request(method, request.url.clone());
            for (name, value) in &request.headers {
                req = req.header(name, value);
            }
            if let Some(body) = &request.body {
                req = req.json(body);
            }
            if let Some(h) = credential.as_ref().and_then(|c| c.header.clone()) {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let result = req.send().await;
            let (retry_after, last) = match result {
                Ok(resp) => {
                    in_flight.answered(quota::read_headers(
                        |name| resp.headers().get(name).map(HeaderValue::as_bytes),
                        SystemTime::now(),
                    ));
                    let status = resp.status();
                    if status == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                        if let Some(c) = &credential {
                            // An expired or revoked token: one new token and
                            // the request again, not counted as a retry; a
                            // second 401 is the answer.
                            if i.auth.rejected(c).await {
                                self.completed(RequestStatus::Http(status), started.elapsed());
                                refreshed = true;
                                attempt -= 1;
                                continue;
                            }
                        }
                    }
                    if status.is_success() {
                        let headers = PageHeaders {
                            link: resp
                                .headers()
                                .get(reqwest::header::LINK)
                                .map(|v| v.as_bytes().to_vec()),
                            cursor: i
                                .config
                                .pagination
                                .cursor_header()
                                .and_then(|h| resp.headers().get(h))
                                .map(|v| v.as_bytes().to_vec()),
                        };
                        let body = read_capped(resp, i.config.max_page_bytes).await;
                        let elapsed = started.elapsed();
                        match body {
                            Ok(b) => {
                                let json: Value = match serde_json::from_slice(&b) {
                                    Ok(v) => v,
                                    Err(e) => {
                                        self.completed(RequestStatus::Http(status), elapsed);
                                        return Err(SourceError::NotJson(e.to_string()));
                                    }
                                };
                                if !self.is_error_body(&json) {
                                    self.completed(RequestStatus::Http(status), elapsed);
                                    return Ok(Some((json, headers)));
                                }
                                self.completed(RequestStatus::ErrorBody, elapsed);
                                // The body is the vendor's: it may echo what
                                // the request carried, so it is not quoted.
                                (
                                    None,
                                    format!(
                                        "status {status} with an error body (source.error_when)"
                                    ),
                                )
                            }
                            Err(BodyError::TooLarge { max }) => {
                                self.completed(RequestStatus::Http(status), elapsed);
                                return Err(SourceError::PageTooLarge { max });
                            }
                            Err(e @ BodyError::Read(_)) => {
                                self.completed(RequestStatus::Http(status), elapsed);
                                (None, e.to_string())
                            }
                        }
                    } else {
                        self.completed(RequestStatus::Http(status), started.elapsed());
                        let retry_after = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, SystemTime::now()));
                        let body = snippet(&error_text(resp, 4096).await);
                        let code = status.as_u16();
                        let c = &i.config;
                        if c.empty_on.contains(&code) {
                            return Ok(None);
                        }
                        if c.fail_on.contains(&code) {
                            return Err(SourceError::FailOn { status: code, body });
                        }
                        let retry = {
                            c.retry_on.contains(&code)
                                || code == 429
                                || status.is_server_error()
                                || code == 408
                        };
                        if retry {
                            // Worded like `Status` so `redact::text` withholds the
                            // body wherever the message is shown.
                            (retry_after, format!("source answered {code}: {body}"))
                        } else {
                            return Err(SourceError::Status { status: code, body });
                        }
                    }
                }
                Err(e) => {
                    drop(in_flight);
                    self.completed(RequestStatus::Error, started.elapsed());
                    // Without the URL: its query may carry a secret.
                    (None, e.without_url().to_string())
                }
            };
            self.retry_or_give_up(attempt, retry_after, last).await?;
        }
    }

    /// Whether `source.error_when` says this 2xx body is an error. A program
    /// that fails on the body (it has another shape than the program
    /// expects) does not: the page is decoded, and fails there if it is no
    /// page either.
    fn is_error_body(&self, body: &Value) -> bool {
        let Some(p) = &self.inner.config.error_when else {
            return false;
        };
        match p.test(body) {
            Ok(hit) => hit,
            // jq's message quotes the vendor's body, which may echo what the
            // request carried: not logged.
            Err(_) => {
                tracing::debug!("source.error_when failed on a page; taken as not an error");
                false
            }
        }
    }

    /// One request ended: counted by how, and timed.
    fn completed(&self, status: RequestStatus, elapsed: Duration) {
        self.inner.metrics.emit(SourceRequestCompleted {
            feed: &self.inner.feed,
            status,
            elapsed,
        });
    }

    /// Sleeps before the next attempt, or gives up once retries ran out.
    async fn retry_or_give_up(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        last: String,
    ) -> Result<(), SourceError> {
        let i = &self.inner;
        let delay = i.policy.delay(attempt, retry_after, &mut rand::rng());
        match delay {
            Some(d) => {
                tracing::debug!(attempt, delay_ms = d.as_millis() as u64, error = %crate::redact::text(&last), "source request failed; retrying");
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(SourceError::Exhausted {
                attempts: attempt,
                last,
            }),
        }
    }

    /// Decodes a page body: records, their ids and times, and the next cursor.
    pub(crate) fn decode(
        &self,
        json: &Value,
        headers: &PageHeaders,
        at: &PageCursor,
    ) -> Result<Page, SourceError> {
        let c = &self.inner.config;
        let cursor_header = match &headers.cursor {
            Some(v) => Some(
                std::str::from_utf8(v).map_err(|_| PaginationError::BadHeader {
                    name: c.pagination.cursor_header().unwrap_or_default().to_owned(),
                })?,
            ),
            None => None,
        };
        let link_header = match &headers.link {
            Some(v) => Some(
                std::str::from_utf8(v).map_err(|_| PaginationError::BadHeader {
                    name: "Link".into(),
                })?,
            ),
            None => None,
        };
        let records = match json.pointer(&c.records) {
            Some(Value::Array(a)) => a.as_slice(),
            _ => {
                return Err(SourceError::NoRecords {
                    pointer: c.records.clone(),
                })
            }
        };
        let next = c.pagination.next(
            at,
            &PageView {
                body: json,
                link_header,
                cursor_header,
                records,
            },
        )?;
        let mut out = Vec::with_capacity(records.len());
        let mut rejected = 0;
        let mut first_rejection = None;
        for (n, r) in records.iter().enumerate() {
            let id = r.pointer(&c.record_id).and_then(crate::observe::id_string);
            let time = r
                .pointer(&c.record_time)
                .map(|t| c.record_time_format.parse_json(t));
            match (id, time) {
                (Some(id), Some(Ok(time))) => out.push(Record {
                    id,
                    time,
                    raw: r.clone(),
                    attributes: Vec::new(),
                    envelope: None,
                }),
                (id, time) => {
                    rejected += 1;
                    if first_rejection.is_none() {
                        first_rejection = Some(match (id, time) {
                            (None, _) => format!("record {n}: no usable id at {:?}", c.record_id),
                            (_, None) => format!("record {n}: no time at {:?}", c.record_time),
                            (_, Some(Err(e))) => format!("record {n}: {e}"),
                            _ => format!("record {n}: unusable"),
                        });
                    }
                }
            }
        }
        Ok(Page {
            records: out,
            rejected,
            first_rejection,
            next,
        })
    }
}

/// A request counted in the source's quota until answered; dropped without
/// an answer (a transport error, a cancelled chunk) it is no longer in flight.
struct InFlight<'a> {
    source: &'a Source,
    answered: bool,
}

impl InFlight<'_> {
    fn answered(mut self, hint: Option<QuotaHint>) {
        self.answered = true;
        self.settle(hint);
    }

    fn settle(&self, hint: Option<QuotaHint>) {
        self.source
            .inner
            .quota
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answered(hint, tokio::time::Instant::now());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.settle(None);
        }
    }
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn source(url: &str, time_format: &str, query: &str) -> Source {
        source_with(url, time_format, &format!("query = {query}"))
    }

    /// A source at `url` whose `[feeds.backfill.source]` also has `lines`.
    fn source_with(url: &str, time_format: &str, lines: &str) -> Source {
        let text = format!(
            r#"
[state]
url = "sqlite:///tmp/gapwatch-source-test/state.db"
[[feeds]]
name = "f"
[feeds.watch]
mode = "report"
[server]
report_token = "t"
[feeds.backfill.source]
url = "{url}"
{lines}
time_format = "{time_format}"
record_time = "/t"
[feeds.backfill.sink]
type = "file"
path = "/tmp/gapwatch-source-test/out.ndjson"
"#
        );
        let c = Config::from_toml(&text, &HashMap::new()).unwrap();
        let s = c.feeds[0].backfill.as_ref().unwrap().source.clone();
        Source::new("f", &s, Arc::new(Metrics::new())).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A loopback server answering every request with `status` and `body`.
    async fn answering(status: u16, body: &'static str) -> String {
        answering_with(status, "", body).await
    }

    /// [`answering`] with header lines of its own (each ending in CRLF).
    async fn answering_with(status: u16, headers: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/v1/events")
    }

    #[tokio::test]
    async fn a_link_header_with_utf8_in_its_url_still_leads_to_the_next_page() {
        // Not visible ASCII, so `HeaderValue::to_str` refuses it: read as
        // absent, paging ended there and the rest of the window was lost.
        let url = answering_with(
            200,
            "link: <http://127.0.0.1:9/v1/events?after=caf\u{e9}-17>; rel=\"next\"\r\n",
            r#"{"data":[{"id":"a","t":"2026-12-05T12:30:00Z"}]}"#,
        )
        .await;
        let s = source_with(
            &url,
            "rfc3339",
            "query = { since = \"{start}\" }\npagination = { type = \"link_header\" }",
        );
        let page = s
            .page(
                at("2026-12-05T12:00:00Z"),
                at("2026-12-05T13:00:00Z"),
                "",
                &PageCursor::First,
            )
            .await
            .unwrap();
        assert_eq!(page.records.len(), 1);
        match page.next {
            Some(PageCursor::Url { url }) => {
                assert!(url.ends_with("?after=caf\u{e9}-17"), "{url}")
            }
            other => panic!("the next page was lost: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_5xx_body_is_withheld_from_the_error_once_retries_run_out() {
        let url = answering(503, r#"{"error":"token s3cr3t-tok3n is over quota"}"#).await;
        let s = source_with(
            &url,
            "rfc3339",
            "query = { since = \"{start}\" }\nmax_retries = 1\nrate_limit = \"1000/s\"",
        );
        let e = s
            .page(
                at("2026-12-05T12:00:00Z"),
                at("2026-12-05T13:00:00Z"),
                "",
                &PageCursor::First,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::Exhausted { .. }), "{e}");
        let shown = crate::redact::text(&e.to_string());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("503"), "the status stays: {shown}");
    }

    #[test]
    fn placeholders_in_the_url_path_are_written_as_path_segments() {
        let s = source(
            "http://v.example/v1/from/{start}/to/{end}/events",
            "rfc3339",
            "{}",
        );
        let u = s
            .url(
                at("2026-12-05T12:00:00Z"),
                at("2026-12-05T13:00:00.5Z"),
                "",
                &PageCursor::First,
            )
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://v.example/v1/from/2026-12-05T12:00:00Z/to/2026-12-05T13:00:00.500Z/events"
        );
        let s = source(
            "http://v.example/v1/{start}-{end}",
            "unix_s",
            "{ limit = \"5\" }",
        );
        let u = s
            .url(
                at("2026-12-05T12:00:00Z"),
                at("2026-12-05T12:00:10Z"),
                "",
                &PageCursor::First,
            )
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://v.example/v1/1796472000-1796472010?limit=5"
        );
    }

    #[test]
    fn placeholders_in_the_url_query_are_substituted_too() {
        let s = source(
            "http://v.example/v1/events?since={start}",
            "unix_s",
            "{ until = \"{end}\" }",
        );
        let u = s
            .url(
                at("2026-12-05T12:00:00Z"),
                at("2026-12-05T12:00:10Z"),
                "",
                &PageCursor::First,
            )
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://v.example/v1/events?since=1796472000&until=1796472010"
        );
    }

    #[test]
    fn a_post_request_carries_the_window_and_cursor_in_its_body() {
        let s = source_with(
            "http://v.example/v1/search",
            "unix_ms",
            r#"method = "POST"
pagination = { type = "cursor", cursor = "/next" }
headers = { X-Window = "{start}..{end}", X-Cursor = "{cursor}", Accept = "application/json" }
body = { filter = { created = { gte = "{start}", lt = "{end}" }, label = "w {start}" }, after = "{cursor}", size = 100 }"#,
        );
        let (from, to) = (at("2026-12-05T12:00:00Z"), at("2026-12-05T13:00:00Z"));
        let first = s.prepare(from, to, "", &PageCursor::First).unwrap();
        assert_eq!(first.method, Method::Post);
        assert_eq!(first.url.as_str(), "http://v.example/v1/search");
        assert_eq!(
            first.body.unwrap(),
            serde_json::json!({
                "filter": { "created": { "gte": 1796472000000_i64, "lt": 1796475600000_i64 }, "label": "w 1796472000000" },
                "size": 100,
            })
        );
        // Static headers are the client's; templated ones are per request,
        // and a header that is only an absent cursor is left out.
        let names: Vec<_> = first.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-window"]);
        assert_eq!(first.headers[0].1, "1796472000000..1796475600000");
        assert!(first.headers[0].1.is_sensitive());
        let next = s
            .prepare(
                from,
                to,
                "",
                &PageCursor::Cursor {
                    token: "c/2".into(),
                },
            )
            .unwrap();
        assert_eq!(next.body.unwrap()["after"], "c/2");
        assert_eq!(next.headers[0].0, "x-cursor");
        assert_eq!(next.headers[0].1, "c/2");
        // No query parameter for the cursor: the template placed it.
        assert_eq!(next.url.query(), None);
    }

    #[test]
    fn page_numbers_in_the_body_are_numbers_and_dates_fill_the_path() {
        let s = source_with(
            "http://v.example/v1/days/{start}/events",
            "%Y-%m-%d",
            r#"method = "POST"
pagination = { type = "page", size = 50, size_param = "per_page" }
body = { page = "{cursor}", until = "{end}" }"#,
        );
        // A window inside a day asks for the whole day.
        let (from, to) = (at("2026-12-05T10:00:00Z"), at("2026-12-05T11:00:00Z"));
        let p = s
            .prepare(from, to, "", &PageCursor::Page { page: 3 })
            .unwrap();
        assert_eq!(
            p.url.as_str(),
            "http://v.example/v1/days/2026-12-05/events?per_page=50"
        );
        assert_eq!(
            p.body.unwrap(),
            serde_json::json!({ "page": 3, "until": "2026-12-06" })
        );
        // A GET source sends no body.
        let s = source(
            "http://v.example/v1/e",
            "%Y%m%dT%H%M%S",
            "{ from = \"{start}\" }",
        );
        let p = s.prepare(from, to, "", &PageCursor::First).unwrap();
        assert_eq!(p.method, Method::Get);
        assert!(p.body.is_none());
        assert_eq!(p.url.as_str(), "http://v.example/v1/e?from=20261205T100000");
    }

    #[test]
    fn a_cursor_header_is_decoded_and_bad_bodies_never_panic() {
        let s = source_with(
            "http://v.example/v1/e",
            "rfc3339",
            r#"query = { from = "{start}" }
records = ""
record_id = "/id"
pagination = { type = "cursor", cursor_header = "X-Next-Cursor", param = "cursor" }"#,
        );
        let body = serde_json::json!([{ "id": "a", "t": "2026-12-05T10:00:00Z" }]);
        let headers = PageHeaders {
            link: None,
            cursor: Some(b"next-1".to_vec()),
        };
        let page = s.decode(&body, &headers, &PageCursor::First).unwrap();
        assert_eq!(
            page.next,
            Some(PageCursor::Cursor {
                token: "next-1".into()
            })
        );
        assert_eq!(page.records.len(), 1);
        let bad = PageHeaders {
            link: None,
            cursor: Some(vec![0xff, 0xfe]),
        };
        let err = s.decode(&body, &bad, &PageCursor::First).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cursor header X-Next-Cursor is not UTF-8 text"
        );
        for body in [
            serde_json::json!({}),
            serde_json::json!("text"),
            serde_json::json!(null),
            serde_json::json!([1, "x", null, {"id": {}}]),
        ] {
            let _ = s.decode(&body, &PageHeaders::default(), &PageCursor::First);
        }
    }
}
