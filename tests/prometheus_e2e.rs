//! The operations kit against a live gapwatch: the metric families the alert
//! rules and the dashboard use are exported by the running daemon, and a real
//! Prometheus server scraping it fires the gap alert, answers every dashboard
//! query with data, and hands the alert to a real Alertmanager, which notifies
//! a webhook receiver (a person's pager, here a loopback HTTP server) of the
//! gap and of its end.
//!
//! Both tests run one scenario: gapwatch relays a moto queue that the vendor
//! simulator publishes to, with the simulator's REST API as backfill source and
//! CloudWatch seeded (moto publishes no SQS metrics) so queue age is known; then
//! the vendor goes silent, a gap opens and is filled while it is still open.
//!
//! Peers: moto's server, `python3` (tests/ops/check_queries.py), Debian's
//! `prometheus` package (`promtool`, `prometheus`) and `prometheus-alertmanager`
//! (scripts/test.sh installs both). Without them these tests (or their
//! Alertmanager part) skip with a message, except under `CI`, where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::primitives::DateTime as AwsTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use chrono::{DurationRound, TimeDelta, Utc};
use common::*;

const TOKEN: &str = "vendor-t0ken";
const FEED: &str = "orders";
const VENDOR_QUEUE: &str = "vendor-orders";
const APP_QUEUE: &str = "app-orders";
/// What CloudWatch says the oldest message of each queue waited, in seconds.
const AGE: [(&str, f64); 2] = [(VENDOR_QUEUE, 7.0), (APP_QUEUE, 42.0)];
/// Every `for:` of the alert rules becomes this (see [`shortened_rules`]).
const SHORT_FOR: &str = "2s";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(path)` of a Prometheus tool, or `None` after saying that `what` is
/// skipped. Under `CI` a missing tool fails instead: CI installs the package.
fn prometheus_tool(name: &str, what: &str) -> Option<PathBuf> {
    tool(&[name], "prometheus", what)
}

/// The first of `names` on PATH (Debian names its binary differently from
/// upstream), with the same skip / CI rule as [`prometheus_tool`].
fn tool(names: &[&str], package: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        let dirs: Vec<PathBuf> = std::env::split_paths(&paths).collect();
        names
            .iter()
            .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
    });
    if found.is_none() {
        let why = format!(
            "`{}` is not on PATH (Debian package {package}: apt-get install {package}; scripts/test.sh installs it)",
            names.join("` or `")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{what}: {why}");
        }
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
    }
    found
}

// === the scenario ===

struct Scenario {
    gw: Gapwatch,
    sim: VendorSim,
    _moto: Moto,
    _dir: tempfile::TempDir,
}

fn config(moto: &Moto, vendor_url: &str, vendor_q: &str, app_q: &str, dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

# CloudWatch on (the default), read every second and trusted at once, so queue
# age is exported as soon as the seeded datapoints are read.
[monitor]
cloudwatch = true
poll_interval = "1s"
cloudwatch_interval = "1s"
cloudwatch_delay = "0s"
cloudwatch_lookback = "10m"

{feed}{audit}"#,
        state = dir.join("state.db").display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_backfill(FEED, vendor_q, app_q, vendor_url, 4),
        audit = audit_block("1s", "10m", "3s"),
    )
}

fn cloudwatch(moto: &Moto) -> aws_sdk_cloudwatch::Client {
    let conf = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&moto.endpoint)
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// `ApproximateAgeOfOldestMessage` of each queue for the last three whole
/// minutes, as SQS would publish it.
async fn seed_queue_age(moto: &Moto) {
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let cw = cloudwatch(moto);
    for (queue, age) in AGE {
        let data = (1..=3)
            .map(|m| {
                MetricDatum::builder()
                    .metric_name("ApproximateAgeOfOldestMessage")
                    .dimensions(Dimension::builder().name("QueueName").value(queue).build())
                    .timestamp(AwsTime::from_secs(
                        (now - TimeDelta::minutes(m)).timestamp(),
                    ))
                    .value(age)
                    .unit(StandardUnit::Seconds)
                    .build()
            })
            .collect();
        cw.put_metric_data()
            .namespace("AWS/SQS")
            .set_metric_data(Some(data))
            .send()
            .await
            .expect("put metric data");
    }
}

impl Scenario {
    /// moto with both queues and their CloudWatch age, the vendor publishing 10
    /// records/s, and gapwatch relaying them.
    async fn start() -> Scenario {
        let moto = Moto::start();
        let vendor_q = moto.create_queue(VENDOR_QUEUE).await;
        let app_q = moto.create_queue(APP_QUEUE).await;
        seed_queue_age(&moto).await;
        let sim = VendorSim::start(&[
            "--rate",
            "10",
            "--queue-url",
            &vendor_q,
            "--endpoint-url",
            &moto.endpoint,
            "--token",
            TOKEN,
            "--pagination",
            "cursor",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let gw = Gapwatch::start(
            dir.path(),
            &config(&moto, &sim.base, &vendor_q, &app_q, dir.path()),
            &[("VENDOR_TOKEN", TOKEN)],
        );
        Scenario {
            gw,
            sim,
            _moto: moto,
            _dir: dir,
        }
    }

    async fn wait_for(&self, what: &str, timeout: Duration, series: &str, ok: fn(f64) -> bool) {
        let found = eventually_or(timeout, || async {
            sample(&self.gw.metrics().await, series).filter(|v| ok(*v))
        })
        .await;
        if found.is_none() {
            panic!(
                "timed out after {timeout:?} waiting for {what} ({series}); metrics:\n{}\nlog:\n{}",
                self.gw.metrics().await,
                self.gw.logs()
            );
        }
    }

    /// Waits until records are relayed.
    async fn relaying(&self) {
        let observed = format!(r#"gapwatch_feed_records_observed_total{{feed="{FEED}"}}"#);
        self.wait_for("records relayed", Duration::from_secs(20), &observed, |v| {
            v >= 10.0
        })
        .await;
        // … and audited: the watermark exists once a first window is verified.
        let verified =
            format!(r#"gapwatch_audit_verified_until_timestamp_seconds{{feed="{FEED}"}}"#);
        self.wait_for(
            "a verified audit window",
            Duration::from_secs(30),
            &verified,
            |v| v > 0.0,
        )
        .await;
        // … and shape-checked (on by default): the relayed records as listed match.
        let shape = format!(r#"gapwatch_shape_mismatch{{feed="{FEED}"}}"#);
        self.wait_for("a shape check", Duration::from_secs(30), &shape, |v| {
            v == 0.0
        })
        .await;
    }

    /// The vendor stops publishing (its API keeps the records): a gap opens and
    /// is filled while still open. Waits until every family has its samples.
    async fn go_silent(&self) {
        self.sim
            .control("/control/silence", serde_json::json!({}))
            .await;
        let t = Duration::from_secs(30);
        let open = format!(r#"gapwatch_gap_open{{feed="{FEED}"}}"#);
        self.wait_for("an open gap", t, &open, |v| v == 1.0).await;
        let delivered =
            format!(r#"gapwatch_backfill_records_total{{feed="{FEED}",outcome="delivered"}}"#);
        self.wait_for("records recovered", t, &delivered, |v| v > 0.0)
            .await;
        let success =
            format!(r#"gapwatch_backfill_last_success_timestamp_seconds{{feed="{FEED}"}}"#);
        self.wait_for("a finished chunk", t, &success, |v| v > 0.0)
            .await;
        for (queue, age) in AGE {
            let series = format!(r#"gapwatch_queue_oldest_message_age_seconds{{queue="{queue}"}}"#);
            let found =
                eventually_or(t, || async { sample(&self.gw.metrics().await, &series) }).await;
            assert_eq!(found, Some(age), "{series}; log:\n{}", self.gw.logs());
        }
        // Still open: the vendor is silent until resumed.
        assert_eq!(sample(&self.gw.metrics().await, &open), Some(1.0));
    }
}

/// Like [`eventually`], but `None` on timeout so the caller can say more.
async fn eventually_or<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// === 1. every referenced family is exported by the live daemon ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gapwatch_exports_every_family_the_rules_and_dashboard_use() {
    let s = Scenario::start().await;
    s.relaying().await;
    s.go_silent().await;

    let url = format!("{}/metrics", s.gw.base);
    let out = Command::new("python3")
        .arg(repo().join("tests/ops/check_queries.py"))
        .args(["--quiet", "--metrics-url", &url])
        .output()
        .expect("python3 tests/ops/check_queries.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "check_queries.py --metrics-url failed ({}):\n{text}\nmetrics:\n{}",
        out.status,
        s.gw.metrics().await
    );
    // "ok   18/18 referenced families exported by …": all of them, and not none.
    let line = text
        .lines()
        .find(|l| l.contains("referenced families exported by"))
        .unwrap_or_else(|| panic!("no family count in:\n{text}"));
    let count = line.split_whitespace().nth(1).unwrap_or_default();
    let (found, total) = count.split_once('/').expect("N/M families");
    assert_eq!(found, total, "{line}");
    assert!(total.parse::<u32>().unwrap_or(0) >= 10, "{line}");

    // The exposition itself passes Prometheus' linter.
    let metrics = s.gw.metrics().await;
    assert!(!metrics.contains("NaN"), "{metrics}");
    let what = "promtool check metrics (the family check above ran)";
    let Some(promtool) = prometheus_tool("promtool", what) else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics ({}):\n{lint}\nmetrics:\n{metrics}",
        out.status
    );
    let families = metrics.lines().filter(|l| l.starts_with("# TYPE ")).count();
    eprintln!("promtool check metrics: clean ({families} families)");
}

// === 2. a real Prometheus: the gap alert fires, the dashboard has data ===

/// Prometheus 2.x on a free loopback port, scraping gapwatch every second;
/// killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// `alertmanager`: host:port Prometheus sends its alerts to.
    fn start(
        bin: &Path,
        dir: &Path,
        target: &str,
        rules: &Path,
        alertmanager: Option<&str>,
    ) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        let alerting = alertmanager.map_or(String::new(), |am| {
            format!("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{am}\"]\n")
        });
        // scrape_timeout must not exceed the interval (its default is 10s).
        std::fs::write(
            &config,
            format!(
                r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
{alerting}scrape_configs:
  - job_name: gapwatch
    static_configs:
      - targets: ["{target}"]
"#,
                rules = rules.display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if reqwest::blocking_get(&format!("{}/-/ready", p.base)).ok() == Some(200) {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}; log:\n{}", p.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not become ready; log:\n{}", p.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("GET {path} {params:?}: {status}: {text}"))
    }

    async fn query(&self, promql: &str) -> serde_json::Value {
        self.api("/api/v1/query", &[("query", promql)]).await
    }

    async fn alerts(&self) -> Vec<serde_json::Value> {
        let v = self.api("/api/v1/alerts", &[]).await;
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === 3. Alertmanager notifies a person ===

/// Stands in for the person's pager: records every notification Alertmanager
/// POSTs to `/alerts` (its webhook JSON, one group per post).
struct WebhookReceiver {
    url: String,
    posts: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    async fn start() -> WebhookReceiver {
        type Posts = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
        let posts = Posts::default();
        let app = axum::Router::new()
            .route(
                "/alerts",
                axum::routing::post(
                    |axum::extract::State(posts): axum::extract::State<Posts>,
                     axum::Json(v): axum::Json<serde_json::Value>| async move {
                        posts.lock().unwrap().push(v);
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(posts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/alerts"),
            posts,
            task,
        }
    }

    fn posts(&self) -> Vec<serde_json::Value> {
        self.posts.lock().unwrap().clone()
    }

    /// The first notification with `status` that carries an alert `alertname`
    /// for feed `feed` in that status: (that alert, the notification).
    fn find(
        &self,
        status: &str,
        alertname: &str,
        feed: &str,
    ) -> Option<(serde_json::Value, serde_json::Value)> {
        self.find_since(0, status, alertname, feed)
    }

    /// Like [`Self::find`], among the notifications after the first `skip`.
    fn find_since(
        &self,
        skip: usize,
        status: &str,
        alertname: &str,
        feed: &str,
    ) -> Option<(serde_json::Value, serde_json::Value)> {
        self.posts().into_iter().skip(skip).find_map(|post| {
            if post["status"] != status {
                return None;
            }
            let alert = post["alerts"].as_array()?.iter().find(|a| {
                a["status"] == status
                    && a["labels"]["alertname"] == alertname
                    && a["labels"]["feed"] == feed
            })?;
            Some((alert.clone(), post.clone()))
        })
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Alertmanager on a free loopback port, routing everything to `webhook` with
/// waits of a second, so a notification follows an alert at once; no
/// clustering (no gossip port). Killed on drop.
struct Alertmanager {
    child: Child,
    /// host:port, for Prometheus' `alertmanagers`.
    address: String,
    log: PathBuf,
}

impl Alertmanager {
    fn start(bin: &Path, dir: &Path, webhook: &str) -> Alertmanager {
        let port = free_port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                r#"global:
  resolve_timeout: 5s
route:
  receiver: pager
  group_by: ["alertname", "feed"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: pager
    webhook_configs:
      - url: "{webhook}"
        send_resolved: true
"#
            ),
        )
        .unwrap();
        let log = dir.join("alertmanager.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start alertmanager");
        let mut am = Alertmanager {
            child,
            address: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if reqwest::blocking_get(&format!("http://{}/-/ready", am.address)).ok() == Some(200) {
                return am;
            }
            if let Ok(Some(status)) = am.child.try_wait() {
                panic!("alertmanager exited with {status}; log:\n{}", am.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("alertmanager did not become ready; log:\n{}", am.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `runbook_url` the shipped rules give `alertname`.
fn shipped_runbook_url(alertname: &str) -> String {
    let shipped =
        std::fs::read_to_string(repo().join("deploy/prometheus/gapwatch-rules.yml")).unwrap();
    let rule = shipped
        .split("- alert: ")
        .find(|r| r.starts_with(alertname))
        .unwrap_or_else(|| panic!("no rule {alertname} in the rules file"));
    let line = rule
        .lines()
        .find_map(|l| l.trim().strip_prefix("runbook_url:"))
        .unwrap_or_else(|| panic!("rule {alertname} has no runbook_url"));
    line.trim().to_string()
}

/// deploy/prometheus/gapwatch-rules.yml with only its `for:` durations
/// shortened to [`SHORT_FOR`], so alerts fire within seconds; every
/// expression, label and annotation stays as shipped. Returns the copy and
/// the number of alert rules.
fn shortened_rules(dir: &Path) -> (PathBuf, usize) {
    let shipped =
        std::fs::read_to_string(repo().join("deploy/prometheus/gapwatch-rules.yml")).unwrap();
    let mut shortened = 0;
    let text: Vec<String> = shipped
        .lines()
        .map(|line| {
            let body = line.trim_start();
            match body.strip_prefix("for:") {
                Some(was) => {
                    shortened += 1;
                    let indent = &line[..line.len() - body.len()];
                    format!("{indent}for: {SHORT_FOR} # test copy: was{was}")
                }
                None => line.to_string(),
            }
        })
        .collect();
    let alerts = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(alerts > 0, "no alert rules in the rules file");
    assert_eq!(shortened, alerts, "every alert rule has one `for:`");
    let path = dir.join("gapwatch-rules.yml");
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    (path, alerts)
}

/// One PromQL query of the dashboard, with Grafana's variables replaced.
#[derive(Debug)]
struct DashboardQuery {
    /// Panel or annotation title, and refId.
    source: String,
    promql: String,
}

/// Values for the dashboard's variables: the feed under test, every queue,
/// and windows that fit a test of about a minute.
const VARIABLES: [(&str, &str); 11] = [
    ("${feed}", FEED),
    ("${feed:regex}", FEED),
    ("$feed", FEED),
    ("${queue}", ".*"),
    ("${queue:regex}", ".*"),
    ("$queue", ".*"),
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "1m"),
    ("$__interval", "1m"),
    ("$__range", "15m"),
];

/// Every `expr` of dashboards/gapwatch.json (panels, rows, annotations), and the
/// `label_values(metric, label)` variable queries as (metric, label).
fn dashboard() -> (Vec<DashboardQuery>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(repo().join("dashboards/gapwatch.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");

    fn walk(node: &serde_json::Value, title: &str, out: &mut Vec<DashboardQuery>) {
        match node {
            serde_json::Value::Object(o) => {
                let title = o
                    .get("title")
                    .or_else(|| o.get("name"))
                    .and_then(|t| t.as_str())
                    .unwrap_or(title);
                if let Some(expr) = o.get("expr").and_then(|e| e.as_str()) {
                    let mut promql = expr.to_string();
                    for (var, value) in VARIABLES {
                        promql = promql.replace(var, value);
                    }
                    let reference = o.get("refId").and_then(|r| r.as_str()).unwrap_or("");
                    let source = format!("{title} {reference}").trim().to_string();
                    assert!(
                        !promql.contains('$'),
                        "{source}: a Grafana variable this test does not know: {expr}"
                    );
                    out.push(DashboardQuery { source, promql });
                }
                for (k, v) in o {
                    if k != "templating" {
                        walk(v, title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&dash, "dashboard", &mut queries);

    let mut variables = Vec::new();
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        let args = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: unsupported query {q:?}", var["name"]));
        let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
        variables.push((metric.trim().to_string(), label.trim().to_string()));
    }
    (queries, variables)
}

/// Dashboard queries that have no data in this scenario, and why. Keep it short.
const NO_DATA_HERE: [(&str, &str); 1] = [(
    "Gap closed",
    "the gap stays open, and a closing shows only 2m later (offset 2m)",
)];

/// Samples of a query result (a vector, or a scalar as one sample), as values.
fn values(result: &serde_json::Value) -> Vec<(String, f64)> {
    let value = |v: &serde_json::Value| {
        v[1].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    match result["data"]["resultType"].as_str() {
        Some("scalar") => vec![(String::new(), value(&result["data"]["result"]))],
        _ => result["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["metric"].to_string(), value(&s["value"])))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_gap_alert_alertmanager_notifies_and_the_dashboard_answers() {
    let test = "prometheus_fires_the_gap_alert_alertmanager_notifies_and_the_dashboard_answers";
    let Some(bin) = prometheus_tool("prometheus", test) else {
        return;
    };
    let am_bin = tool(
        &["prometheus-alertmanager", "alertmanager"],
        "prometheus-alertmanager",
        &format!("{test}: its Alertmanager part"),
    );
    let started = Instant::now();
    let s = Scenario::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (rules, alert_rules) = shortened_rules(dir.path());
    let pager = WebhookReceiver::start().await;
    let am = am_bin.map(|bin| Alertmanager::start(&bin, dir.path(), &pager.url));
    let prom = Prometheus::start(
        &bin,
        dir.path(),
        &format!("127.0.0.1:{}", s.gw.port),
        &rules,
        am.as_ref().map(|am| am.address.as_str()),
    );

    // Every shipped rule loaded; gapwatch scraped as job "gapwatch".
    let loaded = prom.api("/api/v1/rules", &[]).await;
    let n: usize = loaded["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(n, alert_rules, "rules loaded: {loaded}");
    let up = r#"up{job="gapwatch"} == 1"#;
    if eventually_or(Duration::from_secs(15), || async {
        (!values(&prom.query(up).await).is_empty()).then_some(())
    })
    .await
    .is_none()
    {
        panic!(
            "prometheus does not scrape gapwatch: {}\nlog:\n{}",
            prom.api("/api/v1/targets", &[]).await,
            prom.logs()
        );
    }
    s.relaying().await;
    // A few scrapes of the feed while healthy, so counters have a before.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.go_silent().await;

    // The gap alert reaches `firing` for the feed, its annotations rendered
    // with the templated queries answered.
    let firing = eventually_or(Duration::from_secs(30), || async {
        prom.alerts().await.into_iter().find(|a| {
            a["labels"]["alertname"] == "GapwatchGapOpen"
                && a["labels"]["feed"] == FEED
                && a["state"] == "firing"
        })
    })
    .await;
    let Some(firing) = firing else {
        panic!(
            "GapwatchGapOpen not firing for feed {FEED}; alerts: {:?}\ngapwatch metrics:\n{}\nprometheus log:\n{}",
            prom.alerts().await,
            s.gw.metrics().await,
            prom.logs()
        );
    };
    eprintln!("firing: {firing}");
    assert_eq!(firing["labels"]["job"], "gapwatch", "{firing}");
    assert_eq!(firing["labels"]["severity"], "warning", "{firing}");
    assert_eq!(
        firing["annotations"]["summary"],
        format!("Gap open on feed {FEED}"),
        "{firing}"
    );
    let description = firing["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains(&format!("--feed {FEED} --state open"))
            && !description.contains("unknown"),
        "the description's queries found nothing: {description}"
    );
    // Alertmanager notifies the person: the feed, what is wrong, where the runbook is.
    let runbook = shipped_runbook_url("GapwatchGapOpen");
    assert!(runbook.ends_with("#alert-gapwatchgapopen"), "{runbook}");
    if let Some(am) = &am {
        let notified = eventually_or(Duration::from_secs(30), || async {
            pager.find("firing", "GapwatchGapOpen", FEED)
        })
        .await;
        let Some((alert, post)) = notified else {
            panic!(
                "no GapwatchGapOpen notification for feed {FEED}; webhook received: {:?}\nalertmanager log:\n{}\nprometheus log:\n{}",
                pager.posts(),
                am.logs(),
                prom.logs()
            );
        };
        eprintln!("webhook received (firing): {post}");
        assert_eq!(post["receiver"], "pager", "{post}");
        assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
        assert_eq!(
            alert["annotations"]["summary"],
            format!("Gap open on feed {FEED}"),
            "{alert}"
        );
        assert_eq!(alert["annotations"]["runbook_url"], runbook, "{alert}");
        assert!(
            alert["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("--feed {FEED} --state open"))),
            "{alert}"
        );
    }

    // Nothing else fires in this scenario: only the gap is wrong.
    let others: Vec<_> = prom
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] != "GapwatchGapOpen" && a["state"] == "firing")
        .collect();
    assert!(others.is_empty(), "unexpected alerts firing: {others:?}");

    // The dashboard's variables list the feed and the queues.
    let (queries, variables) = dashboard();
    for (metric, label) in &variables {
        let v = prom
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", metric)],
            )
            .await;
        let got: Vec<&str> = v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        let want = if label == "feed" { FEED } else { VENDOR_QUEUE };
        assert!(
            got.contains(&want),
            "label_values({metric}, {label}) = {got:?}"
        );
    }

    // Every dashboard query is valid, and has data unless listed above.
    assert!(queries.len() >= 10, "{queries:?}");
    for (source, _) in NO_DATA_HERE {
        assert!(
            queries.iter().any(|q| q.source == source),
            "NO_DATA_HERE names {source:?}, which is not a dashboard query"
        );
    }
    let mut missing: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        missing.clear();
        for q in &queries {
            let r = prom.query(&q.promql).await;
            assert_eq!(
                r["status"], "success",
                "{}: {} answered {r}",
                q.source, q.promql
            );
            if NO_DATA_HERE.iter().any(|(s, _)| *s == q.source) {
                continue;
            }
            let v = values(&r);
            if v.is_empty() || v.iter().any(|(_, x)| x.is_nan()) {
                missing.push(format!("{}: {} -> {v:?}", q.source, q.promql));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without data:\n{}\ngapwatch metrics:\n{}",
        missing.join("\n"),
        s.gw.metrics().await
    );

    // A few panels say what the scenario is.
    let one = |title: &str| {
        let q = queries.iter().find(|q| q.source == title);
        q.unwrap_or_else(|| panic!("no dashboard query {title:?}"))
            .promql
            .clone()
    };
    let state = values(&prom.query(&one("Gaps (open → filling → filled) A")).await);
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0].1, 2.0, "the gap shows as open: {state:?}");
    let recovered = values(&prom.query(&one("Recovered records in range A")).await);
    assert!(
        recovered
            .iter()
            .any(|(m, v)| m.contains("\"delivered\"") && *v > 0.0),
        "records recovered while the gap is open: {recovered:?}"
    );
    let age = values(&prom.query(&one("Oldest message age A")).await);
    assert!(
        age.iter()
            .any(|(m, v)| m.contains(VENDOR_QUEUE) && *v == AGE[0].1),
        "queue age from CloudWatch: {age:?}"
    );

    // The vendor resumes: the gap closes, and the person hears that it is over.
    let before_resume = pager.posts().len();
    let resumed_at = Utc::now();
    s.sim
        .control("/control/resume", serde_json::json!({}))
        .await;
    let open = format!(r#"gapwatch_gap_open{{feed="{FEED}"}}"#);
    s.wait_for("the gap closed", Duration::from_secs(60), &open, |v| {
        v == 0.0
    })
    .await;
    if let Some(am) = &am {
        let resolved = eventually_or(Duration::from_secs(60), || async {
            pager.find_since(before_resume, "resolved", "GapwatchGapOpen", FEED)
        })
        .await;
        let Some((alert, post)) = resolved else {
            panic!(
                "no resolved GapwatchGapOpen notification for feed {FEED} after the feed resumed; webhook received: {:?}\nprometheus alerts: {:?}\nalertmanager log:\n{}",
                pager.posts(),
                prom.alerts().await,
                am.logs()
            );
        };
        eprintln!("webhook received (resolved): {post}");
        assert_eq!(alert["annotations"]["runbook_url"], runbook, "{alert}");
        let (firing, _) = pager.find("firing", "GapwatchGapOpen", FEED).unwrap();
        assert_eq!(
            alert["fingerprint"], firing["fingerprint"],
            "the resolved notification is about the alert that fired"
        );
        let time = |a: &serde_json::Value, key: &str| {
            chrono::DateTime::parse_from_rfc3339(a[key].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{key} of {a}: {e}"))
        };
        assert!(
            time(&alert, "endsAt") >= resumed_at,
            "resolved at {}, before the feed resumed at {resumed_at}",
            alert["endsAt"]
        );
        let posts = pager.posts();
        eprintln!(
            "webhook: {} notifications: {}",
            posts.len(),
            posts
                .iter()
                .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default())
                .map(|a| format!(
                    "{} {} {{feed={}}} startsAt {} endsAt {}",
                    a["status"].as_str().unwrap_or("?"),
                    a["labels"]["alertname"].as_str().unwrap_or("?"),
                    a["labels"]["feed"],
                    a["startsAt"].as_str().unwrap_or("?"),
                    a["endsAt"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        eprintln!("feed resumed at {resumed_at}");
    }
    eprintln!(
        "{} dashboard queries answered ({} without data by design), {} variables, {} alert rules loaded, in {:?}",
        queries.len(),
        NO_DATA_HERE.len(),
        variables.len(),
        alert_rules,
        started.elapsed()
    );
}
