//! The processes a benchmark runs against, each on a free loopback port and
//! killed when dropped: moto's server (SQS, CloudWatch), the vendor simulator
//! and the gapwatch daemon (release builds next to this binary).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

use crate::procfs;

/// Environment for anything that talks to moto.
pub const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "bench"),
    ("AWS_SECRET_ACCESS_KEY", "bench"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Bearer token of the simulated vendor API.
pub const VENDOR_TOKEN: &str = "bench-vendor-token";
/// Admin token of every gapwatch the bench starts.
pub const ADMIN_TOKEN: &str = "bench-admin";

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on port {port} within {timeout:?}")
}

/// Where the binaries and the scratch files are.
#[derive(Clone, Debug)]
pub struct Env {
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub moto_server: String,
}

impl Env {
    /// A fresh directory under the scratch dir.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d)
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{what} exited with {status}; log {}:\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

// === Moto ===

pub struct Moto {
    pub proc: Proc,
    pub endpoint: String,
    pub sqs: aws_sdk_sqs::Client,
}

impl Moto {
    pub async fn start(env: &Env, dir: &Path) -> Result<Moto> {
        let port = free_port()?;
        let log = dir.join(format!("moto-{port}.log"));
        let child = Command::new(&env.moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (pip install 'moto[server]', or set MOTO_SERVER)",
                    env.moto_server
                )
            })?;
        let proc = Proc { child, log };
        wait_for_port(port, "moto_server", Duration::from_secs(30)).await?;
        let endpoint = format!("http://127.0.0.1:{port}");
        Ok(Moto {
            proc,
            sqs: Moto::client_for(&endpoint),
            endpoint,
        })
    }

    /// A client of its own (its own connection pool, driven by the runtime
    /// that first uses it).
    pub fn client(&self) -> aws_sdk_sqs::Client {
        Moto::client_for(&self.endpoint)
    }

    pub fn client_for(endpoint: &str) -> aws_sdk_sqs::Client {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .endpoint_url(endpoint)
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    pub async fn create_queue(&self, name: &str) -> Result<String> {
        self.sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .with_context(|| format!("create queue {name}"))?
            .queue_url
            .context("create queue: no url")
    }
}

// === vendor simulator ===

pub struct VendorSim {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

impl VendorSim {
    /// Starts `vendor-sim` with `args`; it prints `{"listening": "ADDR"}` when ready.
    pub fn start(env: &Env, dir: &Path, name: &str, args: &[String]) -> Result<VendorSim> {
        let bin = env.bin_dir.join("vendor-sim");
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--token", VENDOR_TOKEN])
            .args(args)
            .envs(AWS_ENV)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("vendor-sim stdout")?;
        let proc = Proc { child, log };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "vendor-sim's first line is not {{\"listening\": …}}: {line:?}; log:\n{}",
                proc.log_tail(20)
            )
        })?;
        let addr = v["listening"].as_str().context("listening address")?;
        Ok(VendorSim {
            base: format!("http://{addr}"),
            proc,
            http: reqwest::Client::new(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        if !status.is_success() {
            bail!("vendor-sim GET {path}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn control(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("vendor-sim POST {path}: {status} {v}");
        }
        Ok(v)
    }

    /// How many records the vendor holds with `from <= created_at < to` (RFC 3339).
    pub async fn count(&self, from: &str, to: &str) -> Result<i64> {
        let v = self
            .get(&format!(
                "/control/records?from={}&to={}&limit=0",
                urlencode(from),
                urlencode(to)
            ))
            .await?;
        v["count"].as_i64().context("records count")
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

// === gapwatch ===

pub struct Gapwatch {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

impl Gapwatch {
    /// Writes `config` (with `{port}` replaced by a free port) into `dir` and
    /// starts `gapwatch run`; returns once `/healthz` answers.
    pub async fn start(env: &Env, dir: &Path, name: &str, config: &str) -> Result<Gapwatch> {
        let port = free_port()?;
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.replace("{port}", &port.to_string()))?;
        let log = dir.join(format!("{name}.log"));
        let bin = env.bin_dir.join("gapwatch");
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(&path)
            .envs(AWS_ENV)
            .env("VENDOR_TOKEN", VENDOR_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut proc = Proc { child, log };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            proc.check_alive("gapwatch")?;
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "gapwatch did not become healthy; log:\n{}",
                    proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Gapwatch { proc, base, http })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn status(&self) -> Result<procfs::Status> {
        procfs::status(self.pid())
    }

    pub fn cpu_seconds(&self) -> Result<f64> {
        procfs::cpu_seconds(self.pid())
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        if !status.is_success() {
            bail!("gapwatch GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// POST with the admin token; fails unless the status is 2xx.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("gapwatch POST {path}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Fails with the log tail when the daemon has died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive("gapwatch")
    }
}
