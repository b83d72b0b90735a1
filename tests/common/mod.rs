//! Real peers for integration tests: moto's server (SQS, CloudWatch), the vendor
//! simulator, Postgres, and the gapwatch binary itself, each on a free loopback
//! port and stopped when the test ends.
#![allow(dead_code)]

pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on port {port} within {timeout:?}");
}

/// Environment for anything talking to moto.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

// === Moto ===

pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (pip install 'moto[server]')");
        wait_for_port(port, "moto_server", Duration::from_secs(30));
        Moto {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    pub async fn create_queue(&self, name: &str) -> String {
        self.create_queue_with(name, &[]).await
    }

    pub async fn create_queue_with(&self, name: &str, attributes: &[(&str, &str)]) -> String {
        let mut req = self.sqs().create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*k), *v);
        }
        req.send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receives and deletes everything that arrives until `idle` passes without a message.
pub async fn drain(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    idle: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    drain_until(sqs, queue, idle, Duration::from_secs(120)).await
}

/// Receives and deletes for `span` at most, whatever keeps arriving.
pub async fn drain_for(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    span: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    drain_until(sqs, queue, span, span).await
}

/// Receives and deletes until `want` messages arrived (or `max` passed), then
/// goes on until `idle` passes without one, so a repeat is still counted.
///
/// For queues a killed relay was long-polling: each of its orphaned receives
/// (one per poller) can take a message sent after the kill and hide it for the
/// queue's visibility timeout, so the message's delay depends on how many
/// pollers died, not on a fixed idle span.
pub async fn drain_expecting(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    want: usize,
    max: Duration,
    idle: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < max {
        out.extend(drain_until(sqs, queue, Duration::from_secs(1), Duration::from_secs(1)).await);
    }
    out.extend(drain(sqs, queue, idle).await);
    out
}

async fn drain_until(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    idle: Duration,
    max: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    while last.elapsed() < idle && started.elapsed() < max {
        let r = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            continue;
        }
        last = Instant::now();
        let mut del = sqs.delete_message_batch().queue_url(queue);
        for (i, m) in msgs.iter().enumerate() {
            del = del.entries(
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .unwrap(),
            );
        }
        del.send().await.expect("delete");
        out.extend(msgs);
    }
    out
}

pub async fn queue_count(sqs: &aws_sdk_sqs::Client, queue: &str) -> (i64, i64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let r = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs = r.attributes.unwrap_or_default();
    let get = |k: A| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(-1);
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// A relay feed whose gaps are filled from the vendor simulator's API into the
/// relay's destination queue (`max_silence` 3 s, small chunks, cursor pages).
pub fn relay_feed_with_backfill(
    name: &str,
    vendor_q: &str,
    app_q: &str,
    vendor_url: &str,
    max_retries: u32,
) -> String {
    relay_feed_with_source(
        name,
        vendor_q,
        app_q,
        &VendorShape::Cursor.source(vendor_url, max_retries),
    )
}

/// A relay feed (`max_silence` 3 s, 20 s chunks, follow step 2 s, overlap
/// 2 s, settle 1 s) whose gaps are filled from `source` (a
/// `[feeds.backfill.source]` block) into the relay's destination queue.
pub fn relay_feed_with_source(name: &str, vendor_q: &str, app_q: &str, source: &str) -> String {
    format!(
        r#"
[[feeds]]
name = "{name}"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.freshness]
  max_silence = "3s"
  [feeds.backfill]
  auto = true
  chunk = "20s"
  follow_step = "2s"
  overlap = "2s"
  settle = "1s"
  concurrency = 2
{source}"#
    )
}

/// A daemon relaying feed `orders` from `vendor_q` to `app_q` with the
/// simulator's cursor API as its source and its state at `state_url` (a
/// Postgres database shared by replicas); `extra` follows the feed.
pub fn relay_config_with_state(
    moto: &Moto,
    state_url: &str,
    vendor_url: &str,
    vendor_q: &str,
    app_q: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "{state_url}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false
poll_interval = "2s"

{feed}{extra}"#,
        endpoint = moto.endpoint,
        feed = relay_feed_with_source(
            "orders",
            vendor_q,
            app_q,
            &VendorShape::Cursor.source(vendor_url, 10)
        ),
    )
}

/// A daemon config: loopback server (`{port}`), admin token `adm1n`, state at
/// `state_url`, AWS at `aws_endpoint` (moto's), no CloudWatch; then `feeds`.
pub fn daemon_config(aws_endpoint: &str, state_url: &str, feeds: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "{state_url}"

[aws]
region = "us-east-1"
endpoint_url = "{aws_endpoint}"

[monitor]
cloudwatch = false
poll_interval = "2s"
{feeds}"#,
    )
}

/// A `[feeds.audit]` block to append to a feed.
pub fn audit_block(every: &str, lookback: &str, delay: &str) -> String {
    format!(
        r#"  [feeds.audit]
  every = "{every}"
  lookback = "{lookback}"
  delay = "{delay}"
"#
    )
}

/// The API shapes the vendor simulator serves, as gapwatch configures them.
#[derive(Clone, Copy, Debug)]
pub enum VendorShape {
    /// A cursor in the body, RFC 3339 times with milliseconds.
    Cursor,
    /// Stripe's list API: newest first, `created` in unix seconds,
    /// `created[gte]` / `created[lt]`, `starting_after` + `has_more`, limit 100.
    Stripe,
}

impl VendorShape {
    /// The simulator's `--pagination` value.
    pub fn sim_style(self) -> &'static str {
        match self {
            VendorShape::Cursor => "cursor",
            VendorShape::Stripe => "stripe",
        }
    }

    /// The `[feeds.backfill.source]` block for this shape (bearer token from
    /// `VENDOR_TOKEN`, 50 requests/s).
    pub fn source(self, vendor_url: &str, max_retries: u32) -> String {
        let (query, time, record_time, pagination) = match self {
            VendorShape::Cursor => (
                r#"{ since = "{start}", until = "{end}", limit = "50" }"#,
                "rfc3339",
                "/created_at",
                r#"{ type = "cursor", cursor = "/next_cursor", param = "cursor" }"#,
            ),
            VendorShape::Stripe => (
                r#"{ "created[gte]" = "{start}", "created[lt]" = "{end}", limit = "100" }"#,
                "unix_s",
                "/created",
                r#"{ type = "cursor", cursor_from_last_record = "/id", param = "starting_after", has_more = "/has_more" }"#,
            ),
        };
        format!(
            r#"    [feeds.backfill.source]
    url = "{vendor_url}/v1/events"
    query = {query}
    time_format = "{time}"
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "{record_time}"
    rate_limit = "50/s"
    timeout = "10s"
    max_retries = {max_retries}
    pagination = {pagination}
"#
        )
    }
}

// === live message shapes ===

/// How the vendor's live messages look, and how gapwatch is told.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Live {
    EventBridge,
    /// An SNS subscription without raw delivery: the record is JSON text.
    Sns,
    /// The vendor's own envelope and attribute, recovered with render + attributes.
    Custom,
    /// The queue carries odd `seq` records only; the API lists all.
    OddOnly,
}

impl Live {
    /// The simulator's flags for this shape.
    pub fn sim_args(self) -> &'static [&'static str] {
        match self {
            Live::EventBridge => &["--live-envelope", "eventbridge"],
            Live::Sns => &["--live-envelope", "sns"],
            Live::Custom => &["--live-envelope", "custom"],
            Live::OddOnly => &["--live-odd-only"],
        }
    }

    /// `(lines for [feeds.watch], lines for [feeds.backfill])`.
    pub fn config(self) -> (&'static str, &'static str) {
        match self {
            Live::EventBridge => (
                r#"  envelope = "eventbridge"
  envelope_fields = { "detail-type" = "order.created", source = "partner.vendor-sim", account = "123456789012", region = "us-east-1" }
"#,
                "",
            ),
            Live::Sns => (
                r#"  envelope = "sns"
  envelope_fields = { TopicArn = "arn:aws:sns:us-east-1:123456789012:vendor-orders" }
"#,
                "",
            ),
            Live::Custom => (
                "",
                r#"  render = '{event: "order.created", data: .}'
  attributes = { event-type = '"order.created"' }
"#,
            ),
            Live::OddOnly => ("", "  filter = '.seq % 2 == 1'\n"),
        }
    }

    /// The record inside a message, as the app reads it.
    pub fn parse(self, body: &str) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        match self {
            Live::EventBridge => v.get("detail").cloned(),
            Live::Sns => serde_json::from_str(v.get("Message")?.as_str()?).ok(),
            Live::Custom => v.get("data").cloned(),
            Live::OddOnly => Some(v),
        }
    }
}

/// A relay feed `orders` (see [`relay_feed_with_source`]) whose live
/// messages have the shape `live`, configured to recover them alike.
pub fn shaped_feed(live: Live, vendor_url: &str, vendor_q: &str, app_q: &str) -> String {
    let (watch, backfill) = live.config();
    let mut feed = relay_feed_with_source(
        "orders",
        vendor_q,
        app_q,
        &VendorShape::Cursor.source(vendor_url, 10),
    );
    if live == Live::Custom {
        feed = feed
            .replacen(
                "event_time = \"/created_at\"",
                "event_time = \"/data/created_at\"",
                1,
            )
            // The first one is the live side's; the source lists bare records.
            .replacen("record_id = \"/id\"\n", "record_id = \"/data/id\"\n", 1);
    }
    feed.replacen(
        "  [feeds.freshness]",
        &format!("{watch}  [feeds.freshness]"),
        1,
    )
    .replacen(
        "  concurrency = 2\n",
        &format!("  concurrency = 2\n{backfill}"),
        1,
    )
}

// === gapwatch ===

pub struct Gapwatch {
    child: Option<Child>,
    /// A command the daemon is started through (e.g. `prlimit …`), if any.
    wrapper: Vec<String>,
    pub port: u16,
    pub base: String,
    pub config: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gapwatch")
}

impl Gapwatch {
    /// Writes `config` (with `{port}` replaced by a free port) into `dir` and starts `gapwatch run`.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Gapwatch {
        Self::start_through(dir, config, env, &[])
    }

    /// [`start`](Self::start), but with no file it writes allowed past
    /// `bytes` (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored so a write past it
    /// fails with `EFBIG` instead of killing the process): a disk that fills
    /// up. [`lift_file_size_limit`](Self::lift_file_size_limit) frees it.
    pub fn start_with_file_size_limit(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        bytes: u64,
    ) -> Gapwatch {
        let wrapper = [
            "sh",
            "-c",
            "trap '' XFSZ; exec \"$@\"",
            "sh",
            "prlimit",
            &format!("--fsize={bytes}:unlimited"),
            "--",
        ];
        Self::start_through(dir, config, env, &wrapper)
    }

    pub fn lift_file_size_limit(&self) {
        let status = Command::new("prlimit")
            .args([
                "--pid",
                &self.pid().to_string(),
                "--fsize=unlimited:unlimited",
            ])
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gapwatch runs").id()
    }

    fn start_through(dir: &Path, config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gapwatch {
        let port = free_port();
        let path = dir.join("gapwatch.toml");
        std::fs::write(&path, config.replace("{port}", &port.to_string())).unwrap();
        let mut g = Gapwatch {
            child: None,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            config: path,
            log: dir.join(format!("gapwatch-{port}.log")),
            env: env
                .iter()
                .chain(aws_env().iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info,gapwatch=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gapwatch");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking_get(&format!("{}/healthz", self.base)) {
                if r == 200 {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("gapwatch exited with {status}; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gapwatch did not become healthy; log:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// Runs another gapwatch command with the same config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run gapwatch")
    }
}

impl Drop for Gapwatch {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of a sample in Prometheus text, e.g. `gapwatch_gap_open{feed="orders"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The record id in the JSON body of a message gapwatch delivered or relayed.
pub fn message_record_id(m: &aws_sdk_sqs::types::Message) -> String {
    let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Whether gapwatch delivered the message as recovered (`gapwatch-backfill`).
pub fn is_recovered(m: &aws_sdk_sqs::types::Message) -> bool {
    m.message_attributes()
        .is_some_and(|a| a.contains_key("gapwatch-backfill"))
}

/// Asks for a fill of `feed` over `[from, to)` through the API; its gap id.
pub async fn start_backfill(
    gw: &Gapwatch,
    token: &str,
    feed: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let body = serde_json::json!({ "feed": feed, "from": from, "to": to }).to_string();
    let (status, v) = gw.post("/api/v1/backfills", Some(token), &body).await;
    assert_eq!(status, 202, "{v}");
    v["gap_id"].as_i64().unwrap()
}

/// Waits until gap `id`'s fill is `want`; the gap as the API shows it.
pub async fn wait_fill(gw: &Gapwatch, id: i64, want: &str, timeout: Duration) -> serde_json::Value {
    eventually(timeout, &format!("gap {id} fill {want}"), || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["fill"] == want).then_some(v)
    })
    .await
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === an HTTP sink ===

/// An HTTP endpoint playing the app behind an `http` sink: `POST /ingest`
/// takes a JSON array of records, `POST /hook` one record per request; `POST /moved` answers `301` to `/elsewhere`,
/// which counts every request it gets (a client that follows the redirect
/// turns the POST into a GET there and drops the records).
pub struct HttpSinkPeer {
    pub base: String,
    pub state: std::sync::Arc<HttpSinkState>,
    task: tokio::task::JoinHandle<()>,
}

/// One `POST /hook`: the body, its `gapwatch-record-id` and `event-type` headers.
pub type Hook = (serde_json::Value, Option<String>, Option<String>);

#[derive(Default)]
pub struct HttpSinkState {
    pub records: std::sync::Mutex<Vec<serde_json::Value>>,
    /// `POST /hook`: one JSON body per request, with its `gapwatch-record-id`
    /// and `event-type` headers.
    pub hooks: std::sync::Mutex<Vec<Hook>>,
    pub elsewhere_hits: std::sync::atomic::AtomicU64,
}

impl HttpSinkPeer {
    pub async fn start() -> HttpSinkPeer {
        use axum::routing::{any, post};
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(HttpSinkState::default());
        let app = axum::Router::new()
            .route(
                "/ingest",
                post(
                    |axum::extract::State(s): axum::extract::State<
                        std::sync::Arc<HttpSinkState>,
                    >,
                     axum::Json(v): axum::Json<Vec<serde_json::Value>>| async move {
                        s.records.lock().unwrap().extend(v);
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .route(
                "/hook",
                post(
                    |axum::extract::State(s): axum::extract::State<
                        std::sync::Arc<HttpSinkState>,
                    >,
                     headers: axum::http::HeaderMap,
                     axum::Json(v): axum::Json<serde_json::Value>| async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let entry = (v, h("gapwatch-record-id"), h("event-type"));
                        s.hooks.lock().unwrap().push(entry);
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .route(
                "/moved",
                any(|| async {
                    (
                        axum::http::StatusCode::MOVED_PERMANENTLY,
                        [(axum::http::header::LOCATION, "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                any(
                    |axum::extract::State(s): axum::extract::State<
                        std::sync::Arc<HttpSinkState>,
                    >| async move {
                        s.elsewhere_hits.fetch_add(1, Ordering::Relaxed);
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpSinkPeer {
            base: format!("http://{addr}"),
            state,
            task,
        }
    }
}

impl Drop for HttpSinkPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === vendor simulator ===

pub struct VendorSim {
    child: Child,
    pub base: String,
}

impl VendorSim {
    /// Starts `vendor-sim` with extra args; it prints `{"listening": "ADDR"}` when ready.
    pub fn start(args: &[&str]) -> VendorSim {
        let bin = vendor_sim_bin();
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(aws_env())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("listening line");
        let addr = v["listening"]
            .as_str()
            .expect("listening address")
            .to_string();
        VendorSim {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control");
        assert!(r.status().is_success(), "control {path}: {}", r.status());
        r.json().await.unwrap_or(serde_json::Value::Null)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("GET")
            .json()
            .await
            .expect("json")
    }
}

impl Drop for VendorSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids in an NDJSON file sink, each with how often it was written.
pub fn file_ids(path: &Path) -> std::collections::HashMap<String, usize> {
    let mut ids = std::collections::HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).expect("each line is one JSON record");
        *ids.entry(v["id"].as_str().expect("a string id").to_string())
            .or_default() += 1;
    }
    ids
}

/// The ids the simulator holds with `created_at` in `[from, to)`.
pub async fn vendor_ids(
    sim: &VendorSim,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let v = sim
        .get(&format!(
            "/control/records?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await;
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_str().expect("a string id").to_string())
        .collect()
}

/// The simulator is a workspace member built next to gapwatch.
pub fn vendor_sim_bin() -> PathBuf {
    let gapwatch = PathBuf::from(bin());
    let dir = gapwatch.parent().unwrap().to_path_buf();
    dir.join("vendor-sim")
}

pub mod reqwest {
    pub use ::reqwest::*;

    /// Status of a blocking GET to a loopback URL (plain HTTP/1.0).
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        buf.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad response"))
    }
}
