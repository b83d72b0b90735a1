//! Configuration: the TOML file (with `${ENV}` interpolation and `GAPWATCH__A__B`
//! overrides) is read into [`raw::RawConfig`], then validated into [`Config`], whose
//! fields are real types. Every error names the key it is about.

mod raw;
mod request;
mod secret;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::detector::ActiveWindow;
pub(crate) use crate::envelope::Envelope;
use crate::fill::pagination::Pagination;
use crate::jq::Program;
use crate::timefmt::{Resolution, TimeFormat};

pub(crate) use raw::AuthStyle;
pub(crate) use request::{BodyTemplate, Method};
pub(crate) use secret::Secret;

/// Longest partition value accepted (in config and from live records).
pub(crate) const MAX_PARTITION_LEN: usize = 256;

/// Where the config file is looked for when `--config` is not given.
pub(crate) const DEFAULT_PATH: &str = "/etc/gapwatch/gapwatch.toml";

/// A validated configuration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Config {
    pub(crate) server: ServerConfig,
    pub(crate) state: StateConfig,
    pub(crate) aws: AwsConfig,
    pub(crate) monitor: MonitorConfig,
    pub(crate) feeds: Vec<FeedConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) admin_token: Option<Secret>,
    /// Accepted (besides the admin token) by `POST …/observations` only.
    pub(crate) report_token: Option<Secret>,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StateConfig {
    /// Where the state lives.
    pub(crate) url: StateUrl,
    /// How many record ids to keep on each side of a gap edge for dedupe.
    pub(crate) edge_ids: NonZeroUsize,
}

/// A state store location.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum StateUrl {
    /// A SQLite database file: one replica.
    Sqlite(PathBuf),
    /// A Postgres connection URL (it may carry a password): any number of replicas.
    Postgres(Secret),
}

impl StateUrl {
    /// The URL as it may be shown: a Postgres password is replaced.
    pub(crate) fn redacted(&self) -> String {
        match self {
            StateUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            StateUrl::Postgres(url) => match Url::parse(url.expose()) {
                Ok(mut u) if u.password().is_some() => {
                    // `Url` would percent-encode the brackets of a placeholder.
                    let _ = u.set_password(Some("redacted"));
                    u.to_string().replacen(":redacted@", ":<redacted>@", 1)
                }
                Ok(u) => u.to_string(),
                Err(_) => "postgres://<redacted>".to_string(),
            },
        }
    }
}

impl std::fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for StateUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AwsConfig {
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<Url>,
}

/// Queue metrics read from SQS attributes and CloudWatch (every feed; the only
/// signal in `passive` mode).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MonitorConfig {
    #[serde(with = "humantime_serde_compat")]
    pub(crate) poll_interval: Duration,
    pub(crate) cloudwatch: bool,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) cloudwatch_interval: Duration,
    /// CloudWatch values keep changing for minutes after the fact: minutes newer
    /// than now − delay are not trusted.
    #[serde(with = "humantime_serde_compat")]
    pub(crate) cloudwatch_delay: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) cloudwatch_lookback: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WatchMode {
    Relay,
    Report,
    Passive,
}

impl WatchMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WatchMode::Relay => "relay",
            WatchMode::Report => "report",
            WatchMode::Passive => "passive",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FeedConfig {
    pub(crate) name: String,
    pub(crate) queue_url: Option<String>,
    pub(crate) watch: WatchConfig,
    pub(crate) freshness: FreshnessConfig,
    pub(crate) backfill: Option<BackfillConfig>,
    pub(crate) audit: Option<AuditConfig>,
    /// The shape check (None: off, or the feed cannot have one).
    #[serde(serialize_with = "shape_or_off")]
    pub(crate) shape: Option<ShapeConfig>,
    /// Partitioned feeds: freshness, gaps and fills per partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) partitions: Option<PartitionsConfig>,
}

/// `[feeds.partitions]`, validated: which partition a live record belongs
/// to, and which partitions are watched.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartitionsConfig {
    /// JSON pointer to the partition value in a live record (inside the envelope).
    pub(crate) key: String,
    #[serde(flatten)]
    pub(crate) list: PartitionList,
    /// Most partitions watched at once: a listing or live keys beyond it are
    /// not watched (counted, logged).
    pub(crate) max: NonZeroUsize,
}

/// Where the watched partitions come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PartitionList {
    /// A fixed list; a live record with another value is counted and
    /// observed for the feed as a whole only.
    Values(Vec<String>),
    /// Listed by the vendor (through the backfill source's auth, headers and
    /// rate limit) every `every`; a live record with a value not listed yet
    /// adds it.
    From(PartitionSource),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartitionSource {
    pub(crate) url: Url,
    /// JSON pointer to the array of partitions in the answer ("" = the body).
    pub(crate) records: String,
    /// JSON pointer to the value inside each element.
    pub(crate) value: String,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) every: Duration,
    /// A listing of several pages: how each page names the next one.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) pages: Option<ListingPages>,
}

/// How a page of a partition listing leads to the next (absent, null or ""
/// at the pointer: it was the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum ListingPages {
    /// `next`: JSON pointer to the next page's URL (absolute, or relative to
    /// the page's own).
    Next { next: String },
    /// `cursor`: JSON pointer to a cursor, sent as the query parameter `param`
    /// of the listing's URL.
    Cursor { cursor: String, param: String },
}

/// A feed without a shape check is written `enabled = false`, so that the
/// resolved config loads again the same (absent, the check would be on).
fn shape_or_off<S: serde::Serializer>(v: &Option<ShapeConfig>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Off {
        enabled: bool,
    }
    match v {
        Some(c) => c.serialize(s),
        None => Off { enabled: false }.serialize(s),
    }
}

/// The shape check of a feed: a sample of live messages, compared every
/// `every` with what a fill would send for the same records.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ShapeConfig {
    #[serde(with = "humantime_serde_compat")]
    pub(crate) every: Duration,
    /// Body pointers not compared (each with what is under it): the
    /// envelope's fresh fields first, then `shape.ignore`.
    pub(crate) ignore: Vec<String>,
    /// Message attributes not compared (`gapwatch-*` never are).
    pub(crate) ignore_attributes: Vec<String>,
    /// Live messages kept (in memory and in the store).
    pub(crate) sample: NonZeroUsize,
}

/// The most live messages a feed's shape sample keeps.
pub(crate) const MAX_SHAPE_SAMPLE: usize = 100;

/// The completeness audit of a relay or report feed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditConfig {
    /// How often settled windows are audited.
    #[serde(with = "humantime_serde_compat")]
    pub(crate) every: Duration,
    /// How far back the audit looks, and how long the ledger keeps ids
    /// (plus [`LEDGER_MARGIN`]).
    #[serde(with = "humantime_serde_compat")]
    pub(crate) lookback: Duration,
    /// Only windows older than this are audited (the vendor has settled).
    #[serde(with = "humantime_serde_compat")]
    pub(crate) delay: Duration,
}

/// The ledger keeps ids this much longer than the audit's lookback, so an
/// audit run that started just inside the lookback still finds them.
pub(crate) const LEDGER_MARGIN: Duration = Duration::from_secs(3600);
/// How long a feed without `[feeds.audit]` keeps its ids (delivered by fills,
/// seen near gap edges): the default lookback.
pub(crate) const DEFAULT_LEDGER_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

impl FeedConfig {
    /// Whether freshness, gaps and fills are kept per partition.
    pub(crate) fn is_partitioned(&self) -> bool {
        self.partitions.is_some()
    }

    /// Ids older than this (event time before now − retention) are pruned.
    pub(crate) fn ledger_retention(&self) -> Duration {
        self.audit
            .as_ref()
            .map_or(DEFAULT_LEDGER_LOOKBACK, |a| a.lookback)
            + LEDGER_MARGIN
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchConfig {
    pub(crate) mode: WatchMode,
    pub(crate) forward_to: Option<String>,
    /// JSON pointer to the event time in a message body; None: `SentTimestamp`.
    pub(crate) event_time: Option<String>,
    pub(crate) event_time_format: TimeFormat,
    /// JSON pointer to the record id in a message body; None: the SQS MessageId.
    pub(crate) record_id: Option<String>,
    /// The envelope live records arrive in; the pointers address the record in it.
    pub(crate) envelope: Envelope,
    /// Fields of the live envelopes, copied into recovered ones.
    pub(crate) envelope_fields: serde_json::Map<String, serde_json::Value>,
    /// Relay mode: concurrent receive → forward → delete loops.
    pub(crate) pollers: std::num::NonZeroUsize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FreshnessConfig {
    #[serde(with = "humantime_serde_compat")]
    pub(crate) max_silence: Duration,
    pub(crate) active: Vec<String>,
    pub(crate) timezone: String,
    /// An event time later than now + this is not trusted: it does not move
    /// freshness (a vendor sentinel such as 2099-01-01, or milliseconds read
    /// as seconds, would otherwise silence detection for good).
    #[serde(with = "humantime_serde_compat")]
    pub(crate) max_future_skew: Duration,
    #[serde(skip)]
    pub(crate) window: ActiveWindow,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackfillConfig {
    pub(crate) auto: bool,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) chunk: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) overlap: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) settle: Duration,
    /// While a gap is still open, new chunks are planned once this much more
    /// time is fetchable (at most `chunk`).
    #[serde(with = "humantime_serde_compat")]
    pub(crate) follow_step: Duration,
    pub(crate) concurrency: NonZeroUsize,
    /// A chunk that failed this many times in a row marks its gap `failed`.
    pub(crate) max_chunk_attempts: NonZeroU32,
    pub(crate) source: SourceConfig,
    pub(crate) sink: SinkConfig,
    /// Source record → message body (before the envelope, if any).
    pub(crate) render: Option<Program>,
    /// Message attributes of a recovered record, by name.
    pub(crate) attributes: BTreeMap<String, Program>,
    /// Which source records the live feed carries.
    pub(crate) filter: Option<Program>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SourceConfig {
    pub(crate) url: Url,
    pub(crate) query: BTreeMap<String, Secret>,
    pub(crate) time_format: TimeFormat,
    pub(crate) headers: BTreeMap<String, Secret>,
    pub(crate) records: String,
    pub(crate) record_id: String,
    pub(crate) record_time: String,
    pub(crate) record_time_format: TimeFormat,
    pub(crate) rate_limit: RateLimit,
    #[serde(with = "humantime_serde_compat")]
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) pagination: Pagination,
    pub(crate) max_pages_per_chunk: u64,
    /// Query windows start and end on multiples of this.
    pub(crate) time_resolution: Resolution,
    /// A page body larger than this fails its chunk (read while streaming,
    /// so memory per in-flight page is bounded by it).
    #[serde(serialize_with = "size_string")]
    pub(crate) max_page_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth: Option<SourceAuth>,
    /// Statuses that mean "no records in this window" (e.g. 404).
    pub(crate) empty_on: Vec<u16>,
    /// Statuses retried like a 5xx.
    pub(crate) retry_on: Vec<u16>,
    /// Statuses that fail the chunk at once (e.g. a 503 that means "gone").
    pub(crate) fail_on: Vec<u16>,
    pub(crate) method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<BodyTemplate>,
    /// True for a 2xx page whose body is an error (retried like a 5xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_when: Option<Program>,
}

/// `source.auth`, validated. Every credential is a [`Secret`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum SourceAuth {
    Bearer {
        token: Secret,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    Oauth2ClientCredentials {
        token_url: Url,
        client_id: Secret,
        client_secret: Secret,
        scopes: Vec<String>,
        auth_style: AuthStyle,
    },
}

/// `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub(crate) count: NonZeroU32,
    pub(crate) per: Duration,
}

impl RateLimit {
    pub(crate) fn per_second(&self) -> f64 {
        f64::from(self.count.get()) / self.per.as_secs_f64()
    }
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        s.serialize_str(&format!("{}/{unit}", self.count))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum SinkConfig {
    Sqs {
        queue_url: String,
        message_group_id: Option<String>,
        /// `SendMessageBatch` calls a chunk has in flight at once (1 for FIFO).
        in_flight: NonZeroUsize,
    },
    Http {
        url: Url,
        headers: BTreeMap<String, Secret>,
        #[serde(with = "humantime_serde_compat")]
        timeout: Duration,
        max_retries: u32,
        /// Records per POST (a JSON array); 1: one record per POST, the body
        /// being the rendered record itself (webhook-style receivers).
        batch: NonZeroUsize,
    },
    File {
        path: PathBuf,
    },
}

/// A config that could not be loaded; one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and validates the file at `path`. `env` is the process environment
    /// (passed in so tests never touch the real one): it feeds `${VAR}`
    /// interpolation and `GAPWATCH__A__B` overrides.
    pub(crate) fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, env)
    }

    pub(crate) fn from_toml(
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let overrides: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("GAPWATCH__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .add_source(
                ::config::Environment::with_prefix("GAPWATCH")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let value: toml::Value = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let raw: raw::RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." {
                ConfigError::Parse(inner)
            } else {
                ConfigError::Parse(format!("{path}: {inner}"))
            }
        })?;
        validate::validate(raw, env).map_err(ConfigError::Invalid)
    }

    pub(crate) fn feed(&self, name: &str) -> Option<&FeedConfig> {
        self.feeds.iter().find(|f| f.name == name)
    }

    /// The resolved configuration as TOML, secrets redacted.
    pub(crate) fn to_redacted_toml(&self) -> String {
        match toml::to_string_pretty(self) {
            Ok(s) => s,
            Err(e) => format!("# cannot render config: {e}\n"),
        }
    }
}

/// Sizes written back the way the config reads them (`"16MiB"`), so a
/// resolved config loads again.
fn size_string<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    let text = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .iter()
        .find(|(unit, _)| *n > 0 && n.is_multiple_of(*unit))
        .map_or_else(
            || n.to_string(),
            |(unit, name)| format!("{}{name}", n / unit),
        );
    s.serialize_str(&text)
}

/// Durations written back the way users write them (`5m`, `1h 30m`).
mod humantime_serde_compat {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests;
