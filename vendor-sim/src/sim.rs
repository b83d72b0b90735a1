//! Shared state of the simulator and the record generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::history::History;
use crate::timefmt::{format_millis, TimeFormat};

/// Pagination styles, each modelled on a real family of APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Pagination {
    None,
    Cursor,
    CursorLast,
    NextUrl,
    LinkHeader,
    /// `{"data": [...]}` with the next cursor in an `X-Next-Cursor` header
    /// (absent on the last page).
    HeaderCursor,
    Page,
    Offset,
    /// Stripe's list API: newest first, `created` in unix seconds,
    /// `created[gte]` / `created[lt]`, `starting_after=<id>` + `has_more`,
    /// `limit` at most 100.
    Stripe,
}

impl Pagination {
    pub fn parse(raw: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(raw, true).ok()
    }
}

/// Misbehaviour injected into `/v1/events`.
#[derive(Clone, Debug, Serialize)]
pub struct Faults {
    /// Probability that a request is answered with one of `statuses` and no records.
    pub error_rate: f64,
    pub statuses: Vec<u16>,
    /// Added to every answer.
    pub latency_ms: u64,
    /// `Retry-After` value sent with injected 429 and 503 answers.
    pub retry_after: Option<String>,
    /// Every Nth page is not JSON (0 = never).
    pub malformed_every: u64,
    /// Cursor styles hand back the same cursor forever.
    pub cursor_loop: bool,
    /// Pages are at most this many records, whatever the request asked for
    /// (0 = no cap beyond the style's own maximum).
    pub page_size_cap: usize,
    /// `link_header` answers carry an unparseable `Link` header.
    pub bad_link: bool,
    /// `/v1/events` answers 200 with a JSON body that never ends.
    pub endless_page: bool,
    /// The next this many API requests are answered 200 with an error body
    /// (`{"status": "error", …}`), as search backends do on a timeout.
    pub error_bodies: u64,
}

/// An interval of `created_at` (unix ms) whose records are not published; `to: None` = open.
/// With `store`, only that store's records (0-based; `--stores`) go quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub from: i64,
    pub to: Option<i64>,
    pub store: Option<usize>,
}

impl Silence {
    pub fn contains(&self, t: i64) -> bool {
        t >= self.from && self.to.is_none_or(|to| t < to)
    }

    /// Whether a record of `store` created at `t` is silenced.
    pub fn silences(&self, t: i64, store: Option<usize>) -> bool {
        self.contains(t) && self.store.is_none_or(|s| store == Some(s))
    }
}

impl Serialize for Silence {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "from": format_millis(self.from).to_string(),
            "to": self.to.map(|t| format_millis(t).to_string()),
            "store": self.store.map(crate::history::store_name),
        })
        .serialize(serializer)
    }
}

#[derive(Debug)]
pub struct Controls {
    pub rate: f64,
    /// Probability that a live record is lost on its way to SQS (the API
    /// still serves it): a vendor that drops records without going silent.
    pub drop_rate: f64,
    pub silences: Vec<Silence>,
    pub faults: Faults,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub seeded: AtomicU64,
    pub produced: AtomicU64,
    pub published: AtomicU64,
    pub silenced: AtomicU64,
    pub dropped: AtomicU64,
    pub publish_errors: AtomicU64,
    pub served_requests: AtomicU64,
    pub served_pages: AtomicU64,
    pub served_records: AtomicU64,
    pub errors_injected: AtomicU64,
    pub malformed_served: AtomicU64,
    pub unauthorized: AtomicU64,
    pub bad_requests: AtomicU64,
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub tokens_refused: AtomicU64,
    pub error_bodies_served: AtomicU64,
    /// Requests admitted within the quota.
    pub quota_admitted: AtomicU64,
    /// Requests made while the quota was spent (answered 429).
    pub quota_refused: AtomicU64,
    /// Requests for records, by the store they named (`*`: none).
    pub by_store: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn count_store_request(&self, store: &str) {
        let mut by = self.by_store.lock().unwrap_or_else(|e| e.into_inner());
        *by.entry(store.to_owned()).or_default() += 1;
    }

    pub fn store_requests(&self) -> std::collections::BTreeMap<String, u64> {
        self.by_store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Fixed at start.
#[derive(Debug)]
pub struct Settings {
    pub pagination: Pagination,
    pub time_format: TimeFormat,
    pub token: Option<String>,
    pub queue_url: Option<String>,
    pub oauth: Option<crate::oauth::OAuth>,
}

#[derive(Debug)]
pub struct Sim {
    pub settings: Settings,
    pub history: RwLock<History>,
    pub controls: Mutex<Controls>,
    pub quota: Mutex<crate::quota::Quota>,
    pub stats: Stats,
    /// OAuth2 access tokens issued, with their expiry (unix ms).
    pub tokens: Mutex<Vec<(String, i64)>>,
    /// Woken when records were appended (the publisher waits on it).
    pub appended: Notify,
    /// Woken when the rate changed (the generator waits on it).
    pub rate_changed: Notify,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// === impl Sim ===

impl Sim {
    pub fn new(settings: Settings, history: History, controls: Controls) -> Self {
        let stats = Stats::default();
        Stats::bump(&stats.seeded, history.len() as u64);
        Self {
            settings,
            history: RwLock::new(history),
            controls: Mutex::new(controls),
            quota: Mutex::new(crate::quota::Quota::default()),
            stats,
            tokens: Mutex::new(Vec::new()),
            appended: Notify::new(),
            rate_changed: Notify::new(),
        }
    }

    pub fn history(&self) -> std::sync::RwLockReadGuard<'_, History> {
        self.history.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn controls(&self) -> std::sync::MutexGuard<'_, Controls> {
        self.controls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_rate(&self, rate: f64) {
        self.controls().rate = rate;
        self.rate_changed.notify_one();
    }

    /// Creates records with the given times, deciding silence at creation.
    fn append(&self, times: &[i64]) {
        if times.is_empty() {
            return;
        }
        let (silences, drop_rate) = {
            let c = self.controls();
            (c.silences.clone(), c.drop_rate.clamp(0.0, 1.0))
        };
        let (mut silenced, mut dropped) = (0, 0);
        {
            let mut rng = rand::rng();
            let mut history = self.history.write().unwrap_or_else(|e| e.into_inner());
            for &t in times {
                let store = history.store_of(history.len());
                let quiet = silences.iter().any(|s| s.silences(t, store));
                let lost = !quiet && drop_rate > 0.0 && rng.random_bool(drop_rate);
                silenced += u64::from(quiet);
                dropped += u64::from(lost);
                history.push_lossy(t, quiet, lost);
            }
        }
        Stats::bump(&self.stats.produced, times.len() as u64);
        Stats::bump(&self.stats.silenced, silenced);
        Stats::bump(&self.stats.dropped, dropped);
        self.appended.notify_one();
    }
}

/// Produces records at the current rate until `shutdown` flips.
///
/// Record k after a (re)start is due at `start + k / rate`; its `created_at` is
/// that due time, so records are evenly spaced whatever the wake-up jitter.
pub async fn generate(sim: &Sim, mut shutdown: watch::Receiver<bool>) {
    loop {
        let rate = sim.controls().rate;
        if rate <= 0.0 || !rate.is_finite() {
            tokio::select! {
                () = sim.rate_changed.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let (start, start_ms) = (Instant::now(), now_ms());
        let mut next: u64 = 0;
        loop {
            let due = start + Duration::from_secs_f64(next as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = sim.rate_changed.notified() => break,
                _ = shutdown.changed() => return,
            }
            let upto = (start.elapsed().as_secs_f64() * rate).floor() as u64;
            let times: Vec<i64> = (next..=upto.max(next))
                .map(|k| start_ms + (k as f64 * 1000.0 / rate).round() as i64)
                .collect();
            next = upto.max(next) + 1;
            sim.append(&times);
        }
    }
}
