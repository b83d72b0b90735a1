//! A throwaway Postgres cluster for tests: `initdb` + `pg_ctl` in a temporary
//! directory, listening on a free loopback port, run as the `postgres` user when
//! the tests run as root (the server refuses root). No mock and no skip: a test
//! that asks for Postgres fails when it cannot start.
//!
//! Std only, so both the library's unit tests (`src/store/tests.rs`) and the
//! integration tests (`tests/common`) include this one file.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One running cluster. Dropping it stops the server and removes its files; a
/// watchdog does the same if the test process dies first.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// Run server commands as this user (`postgres` when we are root).
    run_as: Option<String>,
    /// Commits reach the disk (`fsync` on), as in production; tests run
    /// without, which is faster and loses nothing a test looks at.
    durable: bool,
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The cluster shared by every test of one test binary (started on first use):
/// each test takes its own database from it with [`PgCluster::new_database`].
pub fn shared_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    // The newest major version (directory names are numbers).
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
             (apt-get install postgresql, or set PG_BIN); scripts/test.sh installs them"
        )
    })
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl PgCluster {
    /// Creates and starts a new cluster. Panics (with the server's own words)
    /// when it cannot.
    pub fn start() -> PgCluster {
        Self::start_with(false)
    }

    /// A cluster that syncs every commit to disk (the server's defaults): for
    /// figures that compare with SQLite's `synchronous = FULL`.
    pub fn start_durable() -> PgCluster {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> PgCluster {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let bin = pg_bin_dir();
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = std::env::temp_dir().join(format!(
            "gapwatch-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        if run_as.is_some() {
            check(
                "chown the cluster directory to postgres",
                Command::new("chown")
                    .args(["postgres:", &dir.display().to_string()])
                    .output(),
            );
        }
        let cluster = PgCluster {
            bin,
            dir,
            port: free_loopback_port(),
            run_as,
            durable,
        };
        check(
            "initdb",
            cluster
                .server_cmd("initdb")
                .args(["-D", &cluster.data().display().to_string()])
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
                .output(),
        );
        cluster.watchdog();
        cluster.resume();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Stops the server and removes the directory once this process is gone,
    /// however it ended (the shared cluster is never dropped).
    fn watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \
             '{pg_ctl}' stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "sh", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster watchdog");
        // Reaped when it ends, which is after this process ended.
        std::thread::spawn(move || child.wait());
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.display(),
            if self.durable {
                ""
            } else {
                " -c fsync=off -c full_page_writes=off"
            }
        );
        let log = self.dir.join("server.log");
        let out = self
            .server_cmd("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-l"])
            .arg(&log)
            .args(["-o", &opts])
            .stdin(Stdio::null())
            // pg_ctl's server inherits these: never hold the test's pipes open.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl");
        if !out.success() {
            panic!(
                "postgres did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres does not accept connections on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (`-m immediate`: like a crash, no checkpoint).
    pub fn halt(&self) {
        let _ = self
            .server_cmd("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the server the way an operator restarting it does (`-m fast`:
    /// clients are disconnected, the server shuts down cleanly).
    pub fn stop(&self) {
        check(
            "pg_ctl stop -m fast",
            self.server_cmd("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
                .arg(self.data())
                .stdin(Stdio::null())
                .output(),
        );
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database; returns its URL.
    pub fn new_database(&self) -> String {
        let name = format!("gapwatch_test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs one SQL statement against the `postgres` database; returns its
    /// unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = check(
            &format!("psql {sql:?}"),
            Command::new(self.bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args([
                    "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-c", sql,
                ])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs SQL in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = check(
            &format!("psql {sql:?}"),
            Command::new(self.bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", db, "-X", "-A", "-t", "-c", sql])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
