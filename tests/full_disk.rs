//! A full state disk costs nothing: the SQLite file lives on a small tmpfs
//! that a filler file takes to 100 % while the vendor streams, goes silent and
//! resumes. The relay keeps relaying, the gap waits in memory, `/readyz` says
//! why it is not ready, and once space returns everything is written once:
//! every vendor record is in the app queue exactly once, the gap is recorded
//! and filled.
//!
//! Mounting a tmpfs needs root (the test script runs as root in CI); without
//! it the test says so and passes only outside CI.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "vendor-t0ken";

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system refuses more.
fn fill_up(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let block = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    while let Ok(n @ 1..) = f.write(&block) {
        written += n as u64;
    }
    // The last bytes, one at a time, so not even a page is left.
    while let Ok(1) = f.write(&[0u8]) {
        written += 1;
    }
    written
}

/// Keeps the disk full: whatever the database frees (a checkpoint that
/// truncates its write-ahead log, say) is taken again at once, as by
/// another process writing to the same volume.
struct KeepFull {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepFull {
    fn start(path: PathBuf) -> KeepFull {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                fill_up(&path);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        KeepFull {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn config(moto: &Moto, vendor_url: &str, vendor_q: &str, app_q: &str, state: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false
poll_interval = "2s"

{feed}{audit}"#,
        state = state.display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_source(
            "orders",
            vendor_q,
            app_q,
            &VendorShape::Cursor.source(vendor_url, 10)
        ),
        audit = audit_block("5s", "10m", "2s"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_loses_and_repeats_nothing() {
    let Some(disk) = Tmpfs::mount("6m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (the test needs root); CI must run it"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "20",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = disk.path().join("state.db");
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, &sim.base, &vendor_q, &app_q, &state),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let mut received = Vec::new();
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(4)).await);
    assert!(
        !received.is_empty(),
        "nothing relayed before the disk filled"
    );

    // The disk fills up while the vendor streams.
    let filler: PathBuf = disk.path().join("filler");
    let filled = fill_up(&filler);
    assert!(filled > 0);
    let keep_full = KeepFull::start(filler.clone());
    let full_since = Instant::now();
    let mut probes = 0;
    let mut not_ready = 0;
    let mut said_why = 0;
    // Streaming for a while, then silent for 15 s, then streaming again:
    // the gap opens and closes while nothing can be written.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(500)).await);
        let (status, body) = gw.get("/readyz").await;
        probes += 1;
        not_ready += usize::from(status == 503);
        said_why += usize::from(body["state"] == "disk full");
    }
    let relayed_while_full = received.len();
    sim.control("/control/silence", serde_json::json!({ "for_seconds": 15 }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(24);
    while Instant::now() < deadline {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(500)).await);
        let (status, body) = gw.get("/readyz").await;
        probes += 1;
        not_ready += usize::from(status == 503);
        said_why += usize::from(body["state"] == "disk full");
    }
    let full_for = full_since.elapsed();
    // The relay kept relaying: records never wait for the store.
    assert!(
        received.len() > relayed_while_full,
        "nothing relayed after the silence while the disk was full"
    );
    // What is wrong is collected and reported together at the end, so one
    // run tells everything a full disk did.
    let mut wrong: Vec<String> = Vec::new();
    let m = gw.metrics().await;
    let failures = |reason: &str| {
        sample(
            &m,
            &format!(r#"gapwatch_state_write_failures_total{{reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };
    if failures("disk_full") == 0.0 {
        wrong.push(format!(
            "no store write failure counted as disk_full while the disk was full (other: {})",
            failures("error")
        ));
    }
    // Freshness and detection go on in memory.
    let (_, feeds) = gw.get("/api/v1/feeds").await;
    if feeds["feeds"][0]["freshness_seconds"].as_f64().is_none() {
        wrong.push(format!("no freshness while the disk was full: {feeds}"));
    }
    if not_ready * 10 < probes * 9 {
        wrong.push(format!(
            "/readyz answered 200 in {} of {probes} probes over {full_for:?} of a full disk",
            probes - not_ready
        ));
    }
    if said_why == 0 {
        wrong.push("/readyz never said `state: disk full`".into());
    }

    // Space returns: everything waiting is written once.
    keep_full.stop();
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let gap = loop {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get("/api/v1/gaps?feed=orders").await;
        let done = v["gaps"].as_array().and_then(|gaps| {
            gaps.iter()
                .find(|g| g["state"] == "closed" && g["fill"] == "done" && g["kind"] != "manual")
                .cloned()
        });
        if let Some(g) = done {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "no detected gap recorded and filled 60 s after space returned: {v}\n{}",
            gw.logs()
        );
    };
    // Ready again once writes have kept succeeding for a while (on a full
    // disk a small write may still fit: one success says little).
    let mut ready = false;
    for _ in 0..40 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(500)).await);
        if gw.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
    }
    if !ready {
        wrong.push(format!(
            "/readyz stays unready after space returned: {}",
            gw.get("/readyz").await.1
        ));
    }

    // A few audit runs over the whole stretch, then the vendor stops.
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(6)).await);
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(8)).await);

    let stats = sim.get("/control/stats").await;
    let history = sim.get("/control/records").await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut recovered: HashMap<String, usize> = HashMap::new();
    for m in &received {
        *got.entry(message_record_id(m)).or_default() += 1;
        if is_recovered(m) {
            *recovered.entry(message_record_id(m)).or_default() += 1;
        }
    }
    let dupes = got.values().filter(|n| **n > 1).count();
    if dupes > 0 {
        wrong.push(format!(
            "{dupes} records reached the app twice ({} of them recovered twice, {} relayed twice); relayed and recovered: {:?}; gap {gap}; audit found missing: {:?}",
            got.iter().filter(|(id, n)| **n > 1 && recovered.get(*id) == Some(n)).count(),
            got.iter().filter(|(id, n)| **n > 1 && !recovered.contains_key(*id)).count(),
            got.iter()
                .filter(|(id, n)| **n > 1 && recovered.get(*id).is_some_and(|r| r < n))
                .map(|(id, _)| id)
                .take(8)
                .collect::<Vec<_>>(),
            sample(&gw.metrics().await, r#"gapwatch_audit_records_missing_total{feed="orders"}"#),
        ));
    }
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    if !missing.is_empty() {
        wrong.push(format!(
            "{} of {} vendor records missing, e.g. {:?}; stats {stats}",
            missing.len(),
            want.len(),
            missing.first()
        ));
    }
    if !wrong.is_empty() {
        let log = std::env::temp_dir().join("gapwatch-full-disk.log");
        let _ = std::fs::write(&log, gw.logs());
        panic!(
            "{}\n(the daemon's log: {})",
            wrong.join("\n"),
            log.display()
        );
    }
    // The silenced records were recovered once each, by the gap's fill or by
    // an audit window that got to them first (both dedupe against the ledger).
    let silenced = stats["silenced"].as_u64().unwrap() as usize;
    assert!(silenced >= 150, "the silence produced {silenced} records");
    let recovered_total: usize = recovered.values().sum();
    assert_eq!(recovered_total, silenced, "recovered; gap {gap}");
    let (visible, in_flight) = queue_count(&sqs, &vendor_q).await;
    assert_eq!((visible, in_flight), (0, 0), "vendor queue not drained");
    drop(gw);
}
