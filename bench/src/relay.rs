//! Figure 4, relay throughput: the bench sends records into a moto queue as
//! fast as moto takes them, gapwatch relays them to a second moto queue that
//! two drainers empty; messages/s and gapwatch's CPU seconds (utime + stime)
//! per 10,000 messages. Moto (one Python process) is the slowest party and
//! slows down as queues fill, so the queues are kept short rather than
//! pre-loaded, and the CPU figure gives gapwatch's own ceiling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::peers::{Env, Gapwatch, Moto};
use crate::procfs;
use crate::sqs::{self, Drainer, DRAINERS};
use crate::table::{thousands, Figure};

/// Most messages the producer keeps ahead of the relay: enough that every
/// receive finds a full batch, few enough that moto stays fast.
const BACKLOG: u64 = 100;

/// A counter of one feed in Prometheus text, summed over the other labels that match.
pub fn counter(metrics: &str, name: &str, feed: &str, label: &str) -> f64 {
    let feed = format!("feed=\"{feed}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| l.contains(&feed) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn throughput(env: &Env, n: u64) -> Result<Vec<Figure>> {
    let dir = env.dir("relay")?;
    let moto = Moto::start(env, &dir).await?;
    let vendor_q = moto.create_queue("vendor-relay").await?;
    let app_q = moto.create_queue("app-relay").await?;

    let config = crate::relay_latency::config(&dir, &moto.endpoint, &vendor_q, &app_q);
    let drainer = Drainer::start(&moto.sqs, &app_q, DRAINERS);
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let cpu0 = gw.cpu_seconds()?;
    let moto_cpu0 = procfs::cpu_seconds(moto.proc.pid())?;
    let started = Instant::now();
    let consumed = Arc::new(AtomicU64::new(0));
    let producer = {
        let (sqs, q, gate) = (moto.sqs.clone(), vendor_q.clone(), consumed.clone());
        tokio::spawn(
            async move { sqs::send_paced(&sqs, &q, "relay", n, Some((gate, BACKLOG))).await },
        )
    };
    let timeout = Duration::from_secs(60).max(Duration::from_secs(n / 20));
    let mut max_backlog = 0u64;
    loop {
        gw.check_alive()?;
        let m = gw.metrics().await?;
        let forwarded = counter(&m, "gapwatch_relay_messages_total", "relay", "forwarded");
        let failed = counter(&m, "gapwatch_relay_messages_total", "relay", "failed");
        if failed > 0.0 {
            bail!("relay: {failed} forwards failed");
        }
        consumed.store(forwarded as u64, Ordering::Relaxed);
        if forwarded as u64 >= n {
            break;
        }
        if producer.is_finished() {
            max_backlog = max_backlog.max(n - forwarded as u64);
        }
        if started.elapsed() > timeout {
            bail!(
                "relay forwarded {forwarded} of {n} in {timeout:?}; log:\n{}",
                gw.proc.log_tail(20)
            );
        }
        // Rendering /metrics costs gapwatch CPU too: poll gently.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = gw.cpu_seconds()? - cpu0;
    let moto_cpu = procfs::cpu_seconds(moto.proc.pid())? - moto_cpu0;
    let send_secs = producer.await??;
    let drained = drainer.finish(n, Duration::from_secs(30)).await?;
    let redelivered = drained.check_once("relay", n)?;
    let rate = n as f64 / secs;
    Ok(vec![
        Figure::new(
            "4. relay throughput (moto → moto)",
            format!(
                "{} messages/s ({} messages in {secs:.2} s)",
                thousands(rate),
                thousands(n as f64)
            ),
            "—",
            format!(
                "fresh moto; the bench sends {} messages in batches of 10 into the vendor queue, at most {BACKLOG} ahead \
                 of the relay ({send_secs:.2} s; {} still to forward when it finished), while gapwatch relays and {DRAINERS} drainers empty the app queue (depth ≤ {}, {redelivered} redelivered); \
                 time from the first send until gapwatch_relay_messages_total{{outcome=\"forwarded\"}} = {n}; \
                 each id arrived once; moto {moto_cpu:.1} CPU-s ({:.0}% of a core)",
                thousands(n as f64),
                max_backlog,
                drained.max_depth,
                100.0 * moto_cpu / secs
            ),
        ),
        Figure::new(
            "4. relay CPU",
            format!(
                "{:.2} CPU-s per 10,000 messages ({cpu:.2} CPU-s for {}; one core would relay ~{} messages/s)",
                cpu * 10_000.0 / n as f64,
                thousands(n as f64),
                thousands(n as f64 / cpu.max(0.01))
            ),
            "—",
            "utime + stime of gapwatch from /proc/PID/stat over the same interval (includes 5 GET /metrics per second by the bench)".to_string(),
        ),
    ])
}
