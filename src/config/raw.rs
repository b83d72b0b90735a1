//! The config file as written: plain serde structs with defaults. Nothing here is
//! validated; `super::validate` turns a `RawConfig` into a `Config` of real types.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::fill::pagination::Pagination;
use crate::timefmt::TimeFormat;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) state: RawState,
    #[serde(default)]
    pub(crate) aws: RawAws,
    #[serde(default)]
    pub(crate) monitor: RawMonitor,
    #[serde(default)]
    pub(crate) feeds: Vec<RawFeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) admin_token: Option<String>,
    #[serde(default)]
    pub(crate) report_token: Option<String>,
    #[serde(default = "default_shutdown_grace")]
    pub(crate) shutdown_grace: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_token: None,
            report_token: None,
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default = "default_state_url")]
    pub(crate) url: String,
    #[serde(default = "default_edge_ids")]
    pub(crate) edge_ids: i64,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            url: default_state_url(),
            edge_ids: default_edge_ids(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    #[serde(default)]
    pub(crate) region: Option<String>,
    #[serde(default)]
    pub(crate) endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    #[serde(default = "default_poll_interval")]
    pub(crate) poll_interval: String,
    #[serde(default = "default_true")]
    pub(crate) cloudwatch: bool,
    #[serde(default = "default_cloudwatch_interval")]
    pub(crate) cloudwatch_interval: String,
    #[serde(default = "default_cloudwatch_delay")]
    pub(crate) cloudwatch_delay: String,
    #[serde(default = "default_cloudwatch_lookback")]
    pub(crate) cloudwatch_lookback: String,
}

impl Default for RawMonitor {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            cloudwatch: true,
            cloudwatch_interval: default_cloudwatch_interval(),
            cloudwatch_delay: default_cloudwatch_delay(),
            cloudwatch_lookback: default_cloudwatch_lookback(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    pub(crate) name: String,
    pub(crate) queue_url: Option<String>,
    pub(crate) watch: RawWatch,
    #[serde(default)]
    pub(crate) freshness: RawFreshness,
    #[serde(default)]
    pub(crate) backfill: Option<RawBackfill>,
    #[serde(default)]
    pub(crate) audit: Option<RawAudit>,
    #[serde(default)]
    pub(crate) shape: Option<RawShape>,
    #[serde(default)]
    pub(crate) partitions: Option<RawPartitions>,
}

/// `[feeds.shape]`: the check that recovered messages look like live ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShape {
    #[serde(default = "default_true")]
    pub(crate) enabled: bool,
    #[serde(default = "default_shape_every")]
    pub(crate) every: String,
    /// JSON pointers into the message body that are not compared.
    #[serde(default)]
    pub(crate) ignore: Vec<String>,
    /// Message attributes that are not compared.
    #[serde(default)]
    pub(crate) ignore_attributes: Vec<String>,
    /// Live messages kept to compare.
    #[serde(default = "default_shape_sample")]
    pub(crate) sample: i64,
}

/// `[feeds.partitions]`: the vendor lists records per partition (store,
/// account, merchant); freshness, gaps and fills are kept per partition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartitions {
    /// JSON pointer to the partition value in a live record.
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) values: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) from: Option<RawPartitionSource>,
    /// Most partitions watched at once.
    #[serde(default = "default_max_partitions")]
    pub(crate) max: i64,
}

/// `partitions.from`: the partition values as the vendor lists them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartitionSource {
    pub(crate) url: String,
    #[serde(default = "default_records")]
    pub(crate) records: String,
    #[serde(default = "default_record_id")]
    pub(crate) value: String,
    #[serde(default = "default_partitions_every")]
    pub(crate) every: String,
    /// JSON pointer to the next page's URL in a listing page.
    #[serde(default)]
    pub(crate) next: Option<String>,
    /// JSON pointer to the next page's cursor, sent as query `param`.
    #[serde(default)]
    pub(crate) cursor: Option<String>,
    #[serde(default)]
    pub(crate) param: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default = "default_audit_every")]
    pub(crate) every: String,
    #[serde(default = "default_audit_lookback")]
    pub(crate) lookback: String,
    #[serde(default = "default_audit_delay")]
    pub(crate) delay: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawMode {
    Relay,
    Report,
    Passive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub(crate) mode: RawMode,
    #[serde(default)]
    pub(crate) forward_to: Option<String>,
    #[serde(default)]
    pub(crate) event_time: Option<String>,
    #[serde(default)]
    pub(crate) event_time_format: TimeFormat,
    #[serde(default)]
    pub(crate) record_id: Option<String>,
    #[serde(default)]
    pub(crate) envelope: crate::envelope::Envelope,
    /// What the vendor's live envelopes carry besides the record (`detail-type`,
    /// `source`, `TopicArn` …), copied into recovered envelopes.
    #[serde(default)]
    pub(crate) envelope_fields: serde_json::Map<String, serde_json::Value>,
    /// Relay mode: concurrent receive loops on the vendor queue.
    #[serde(default = "default_pollers")]
    pub(crate) pollers: i64,
}

/// Enough for 1,000 messages/s at 20 ms per SQS call (see the README's
/// performance table).
const fn default_pollers() -> i64 {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFreshness {
    #[serde(default = "default_max_silence")]
    pub(crate) max_silence: String,
    #[serde(default)]
    pub(crate) active: Vec<String>,
    #[serde(default = "default_timezone")]
    pub(crate) timezone: String,
    #[serde(default = "default_max_future_skew")]
    pub(crate) max_future_skew: String,
}

impl Default for RawFreshness {
    fn default() -> Self {
        Self {
            max_silence: default_max_silence(),
            active: Vec::new(),
            timezone: default_timezone(),
            max_future_skew: default_max_future_skew(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackfill {
    #[serde(default = "default_true")]
    pub(crate) auto: bool,
    #[serde(default = "default_chunk")]
    pub(crate) chunk: String,
    #[serde(default = "default_overlap")]
    pub(crate) overlap: String,
    #[serde(default = "default_settle")]
    pub(crate) settle: String,
    #[serde(default = "default_follow_step")]
    pub(crate) follow_step: String,
    #[serde(default = "default_concurrency")]
    pub(crate) concurrency: i64,
    #[serde(default = "default_chunk_attempts")]
    pub(crate) max_chunk_attempts: i64,
    pub(crate) source: RawSource,
    #[serde(default)]
    pub(crate) sink: Option<RawSink>,
    /// jq: source record → message body.
    #[serde(default)]
    pub(crate) render: Option<String>,
    /// jq per message attribute (String type).
    #[serde(default)]
    pub(crate) attributes: BTreeMap<String, String>,
    /// jq: records for which it is false or null are not sent.
    #[serde(default)]
    pub(crate) filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) time_format: TimeFormat,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default = "default_records")]
    pub(crate) records: String,
    #[serde(default = "default_record_id")]
    pub(crate) record_id: String,
    pub(crate) record_time: String,
    #[serde(default)]
    pub(crate) record_time_format: Option<TimeFormat>,
    #[serde(default = "default_rate_limit")]
    pub(crate) rate_limit: String,
    #[serde(default = "default_timeout")]
    pub(crate) timeout: String,
    #[serde(default = "default_max_retries")]
    pub(crate) max_retries: i64,
    #[serde(default = "default_pagination")]
    pub(crate) pagination: Pagination,
    #[serde(default = "default_max_pages")]
    pub(crate) max_pages_per_chunk: i64,
    /// The finest step `{start}`/`{end}` can be given in; default: what
    /// `time_format` writes (unix_s: 1s, unix_ms and rfc3339: 1ms).
    #[serde(default)]
    pub(crate) time_resolution: Option<String>,
    #[serde(default = "default_max_page_bytes")]
    pub(crate) max_page_bytes: String,
    #[serde(default)]
    pub(crate) auth: Option<RawAuth>,
    #[serde(default)]
    pub(crate) empty_on: Vec<i64>,
    #[serde(default)]
    pub(crate) retry_on: Vec<i64>,
    #[serde(default)]
    pub(crate) fail_on: Vec<i64>,
    #[serde(default)]
    pub(crate) method: super::request::Method,
    /// A JSON template: a table, or a string of JSON text.
    #[serde(default)]
    pub(crate) body: Option<serde_json::Value>,
    /// jq: true for a 2xx page whose body is an error.
    #[serde(default)]
    pub(crate) error_when: Option<String>,
}

/// `source.auth`: how requests to the source prove who they are.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawAuth {
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scopes: Vec<String>,
        #[serde(default)]
        auth_style: AuthStyle,
    },
}

/// Where an OAuth2 client sends its credentials: form fields in the token
/// request's body, or HTTP Basic (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthStyle {
    #[default]
    Body,
    Basic,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawSink {
    Sqs {
        #[serde(default)]
        queue_url: Option<String>,
        #[serde(default)]
        message_group_id: Option<String>,
        #[serde(default = "default_in_flight")]
        in_flight: i64,
    },
    Http {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default = "default_timeout")]
        timeout: String,
        #[serde(default = "default_max_retries")]
        max_retries: i64,
        /// Records per POST; 1 posts each record as the body itself.
        #[serde(default = "default_http_batch")]
        batch: i64,
    },
    File {
        path: String,
    },
}

const fn default_max_partitions() -> i64 {
    10_000
}
fn default_partitions_every() -> String {
    "1h".into()
}
fn default_shape_every() -> String {
    "1h".into()
}
const fn default_shape_sample() -> i64 {
    20
}
fn default_audit_every() -> String {
    "15m".into()
}
fn default_audit_lookback() -> String {
    "24h".into()
}
fn default_audit_delay() -> String {
    "10m".into()
}
fn default_listen() -> String {
    "0.0.0.0:9464".into()
}
fn default_shutdown_grace() -> String {
    "25s".into()
}
fn default_state_url() -> String {
    "sqlite:///var/lib/gapwatch/state.db".into()
}
const fn default_edge_ids() -> i64 {
    1000
}
fn default_poll_interval() -> String {
    "60s".into()
}
fn default_cloudwatch_interval() -> String {
    "5m".into()
}
fn default_cloudwatch_delay() -> String {
    "5m".into()
}
fn default_cloudwatch_lookback() -> String {
    "30m".into()
}
const fn default_true() -> bool {
    true
}
fn default_max_silence() -> String {
    "5m".into()
}
fn default_max_future_skew() -> String {
    "5m".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_chunk() -> String {
    "1h".into()
}
fn default_overlap() -> String {
    "2m".into()
}
fn default_settle() -> String {
    "1m".into()
}
fn default_follow_step() -> String {
    "5m".into()
}
const fn default_concurrency() -> i64 {
    2
}
const fn default_chunk_attempts() -> i64 {
    10
}
fn default_records() -> String {
    "/data".into()
}
fn default_record_id() -> String {
    "/id".into()
}
fn default_rate_limit() -> String {
    "10/s".into()
}
fn default_timeout() -> String {
    "30s".into()
}
const fn default_max_retries() -> i64 {
    8
}
const fn default_http_batch() -> i64 {
    500
}
const fn default_in_flight() -> i64 {
    1
}
fn default_max_page_bytes() -> String {
    "16MiB".into()
}
const fn default_max_pages() -> i64 {
    100_000
}
fn default_pagination() -> Pagination {
    Pagination::None
}
