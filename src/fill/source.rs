//! The source API: one page request, with the feed's rate limit, retries with
//! backoff (honouring `Retry-After`), and the page decoded into records.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use url::Url;

use super::auth::{Auth, AuthError};
use super::body::{error_text, read_capped, BodyError};
use super::pagination::{resolve_url, PageCursor, PageRequest, PageView, PaginationError};
use super::plan::{query_window, Window};
use super::template::Vars;
use crate::config::SourceConfig;
use crate::metrics::Metrics;
use crate::retry::{parse_retry_after, RetryPolicy};

/// One record from the source, with the id and event time read from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    pub time: DateTime<Utc>,
    pub raw: Value,
    /// Message attributes of the rendered message (`backfill.attributes`).
    pub attributes: Vec<(String, String)>,
}

/// A decoded page.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Record>,
    /// Records without a usable id or time (skipped), with the first reason.
    pub rejected: usize,
    pub first_rejection: Option<String>,
    /// Where the next page starts; None: this was the last page.
    pub next: Option<PageCursor>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
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
            | SourceError::PageTooLarge { .. }
            | SourceError::Auth(AuthError::Refused { .. })
            | SourceError::FailOn { .. } => false,
        }
    }
}

/// The source API of one feed. Cheap to clone; all clones share the rate limit.
#[derive(Clone)]
pub struct Source {
    inner: Arc<Inner>,
}

struct Inner {
    feed: String,
    config: SourceConfig,
    client: reqwest::Client,
    auth: Auth,
    limiter: DefaultDirectRateLimiter,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
}

impl Source {
    pub fn new(
        feed: &str,
        config: &SourceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| SourceError::Request(format!("invalid header name {k:?}")))?;
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
        let auth = Auth::new(feed, config.auth.as_ref(), client.clone(), metrics.clone())
            .map_err(SourceError::Request)?;
        Ok(Self {
            inner: Arc::new(Inner {
                feed: feed.to_string(),
                config: config.clone(),
                client,
                auth,
                limiter: RateLimiter::direct(quota),
                metrics,
                policy: RetryPolicy {
                    base: Duration::from_millis(500),
                    cap: Duration::from_secs(60),
                    max_retries: config.max_retries,
                },
            }),
        })
    }

    pub fn config(&self) -> &SourceConfig {
        &self.inner.config
    }

    /// The URL of the page at `at` for the window `[start, end)` of
    /// `partition` (`""`: an unpartitioned feed).
    pub fn url(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        partition: &str,
        at: &PageCursor,
    ) -> Result<Url, SourceError> {
        let c = &self.inner.config;
        match c.pagination.request(at) {
            PageRequest::Url(u) => Ok(resolve_url(&c.url, &u)?),
            PageRequest::Params(extra) => {
                let fmt = c.time_format;
                let q = query_window(Window { start, end }, c.time_resolution);
                let (s, e) = (fmt.format(q.start), fmt.format(q.end));
                let vars = Vars {
                    start: &s,
                    end: &e,
                    partition,
                };
                let mut url = c.url.clone();
                vars.fill_path(&mut url);
                // The URL's own query pairs come first, filled like `query`.
                let own: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), vars.fill(&v)))
                    .collect();
                url.set_query(None);
                let pairs = own
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .chain(
                        c.query
                            .iter()
                            .map(|(k, v)| (k.as_str(), vars.fill(v.expose()))),
                    )
                    .chain(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
                let mut any = false;
                for (k, v) in pairs {
                    url.query_pairs_mut().append_pair(k, &v);
                    any = true;
                }
                if !any {
                    url.set_query(None);
                }
                Ok(url)
            }
        }
    }

    /// Fetches and decodes one page, retrying what can be retried.
    pub async fn page(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        partition: &str,
        at: &PageCursor,
    ) -> Result<Page, SourceError> {
        let url = self.url(start, end, partition, at)?;
        match self.fetch(url).await? {
            Some((body, link)) => self.decode(&body, link.as_deref(), at),
            // An `empty_on` status: the window has no records.
            None => Ok(Page {
                records: Vec::new(),
                rejected: 0,
                first_rejection: None,
                next: None,
            }),
        }
    }

    /// A GET of another endpoint of the vendor (the partition listing),
    /// with the pages' auth, headers, rate limit, retries and size cap.
    /// None: an `empty_on` status.
    pub(crate) async fn get(&self, url: Url) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.fetch(url).await?.map(|(body, _)| body))
    }

    /// The page body and its `Link` header; None for an `empty_on` status.
    async fn fetch(&self, url: Url) -> Result<Option<(Vec<u8>, Option<String>)>, SourceError> {
        let i = &self.inner;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            // The rate limiter first: a token taken before a long wait for
            // the limiter may expire before the request leaves.
            i.limiter.until_ready().await;
            let credential = match i.auth.credential().await {
                Ok(c) => Some(c),
                Err(e @ AuthError::Refused { .. }) => return Err(e.into()),
                Err(e) => {
                    self.retry_or_give_up(attempt, None, e.to_string()).await?;
                    continue;
                }
            };
            let started = Instant::now();
            let mut req = i.client.get(url.clone());
            if let Some(h) = credential.as_ref().and_then(|c| c.header.clone()) {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let result = req.send().await;
            let (retryable, retry_after, last) = match result {
                Ok(resp) => {
                    let status = resp.status();
                    i.metrics
                        .backfill_requests
                        .with_label_values(&[&i.feed, status.as_str()])
                        .inc();
                    if status == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                        if let Some(c) = &credential {
                            // An expired or revoked token: one new token and
                            // the request again, not counted as a retry; a
                            // second 401 is the answer.
                            if i.auth.rejected(c).await {
                                self.observe_duration(started);
                                refreshed = true;
                                attempt -= 1;
                                continue;
                            }
                        }
                    }
                    if status.is_success() {
                        let link = resp
                            .headers()
                            .get(reqwest::header::LINK)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match read_capped(resp, i.config.max_page_bytes).await {
                            Ok(b) => {
                                self.observe_duration(started);
                                return Ok(Some((b, link)));
                            }
                            Err(BodyError::TooLarge { max }) => {
                                self.observe_duration(started);
                                return Err(SourceError::PageTooLarge { max });
                            }
                            Err(e @ BodyError::Read(_)) => (true, None, e.to_string()),
                        }
                    } else {
                        self.observe_duration(started);
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
                            (true, retry_after, format!("status {code}: {body}"))
                        } else {
                            return Err(SourceError::Status { status: code, body });
                        }
                    }
                }
                Err(e) => {
                    self.observe_duration(started);
                    i.metrics
                        .backfill_requests
                        .with_label_values(&[&i.feed, "error"])
                        .inc();
                    // Without the URL: its query may carry a secret.
                    (true, None, e.without_url().to_string())
                }
            };
            debug_assert!(retryable);
            self.retry_or_give_up(attempt, retry_after, last).await?;
        }
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
                tracing::debug!(feed = %i.feed, attempt, delay_ms = d.as_millis() as u64, error = %last, "source request failed; retrying");
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(SourceError::Exhausted {
                attempts: attempt,
                last,
            }),
        }
    }

    fn observe_duration(&self, started: Instant) {
        self.inner
            .metrics
            .backfill_request_duration
            .with_label_values(&[&self.inner.feed])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Decodes a page body: records, their ids and times, and the next cursor.
    pub fn decode(
        &self,
        body: &[u8],
        link: Option<&str>,
        at: &PageCursor,
    ) -> Result<Page, SourceError> {
        let c = &self.inner.config;
        let json: Value =
            serde_json::from_slice(body).map_err(|e| SourceError::NotJson(e.to_string()))?;
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
                body: &json,
                link_header: link,
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
query = {query}
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
}
