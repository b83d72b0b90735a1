//! Several gapwatch replicas on one real Postgres: they share the vendor queue
//! as relays, one of them holds the feed's lease and fills its gaps, and when
//! it is killed with kill -9 mid-fill another takes the feed over and resumes
//! from the checkpoint.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::postgres::shared_cluster;
use common::*;

const TOKEN: &str = "vendor-t0ken";

/// The replica holding the feed's lease, as `/api/v1/feeds` reports it.
async fn leader(gw: &Gapwatch) -> Option<String> {
    let (_, v) = gw.get("/api/v1/feeds").await;
    v["feeds"][0]["leader"].as_str().map(str::to_string)
}

/// Whether this replica says it holds the lease (`gapwatch_feed_leader`).
async fn leads(gw: &Gapwatch) -> bool {
    sample(
        &gw.metrics().await,
        r#"gapwatch_feed_leader{feed="orders"}"#,
    ) == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_gap_and_a_kill_9_mid_fill() {
    let pg = shared_cluster();
    let state_url = pg.new_database();
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
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
        // Slow pages keep the fill going long enough to be killed mid-way.
        "--latency-ms",
        "300",
    ]);
    let text = relay_config_with_state(&moto, &state_url, &sim.base, &vendor_q, &app_q, "");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: Vec<Gapwatch> = dirs
        .iter()
        .map(|d| Gapwatch::start(d.path(), &text, &[("VENDOR_TOKEN", TOKEN)]))
        .collect();

    let mut received = Vec::new();
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(4)).await);
    // Exactly one replica leads, and all of them name it.
    let holder = leader(&replicas[0]).await.expect("a lease holder");
    for gw in &replicas {
        assert_eq!(leader(gw).await.as_deref(), Some(holder.as_str()));
    }
    let mut leading = Vec::new();
    for (i, gw) in replicas.iter().enumerate() {
        if leads(gw).await {
            leading.push(i);
        }
    }
    assert_eq!(leading.len(), 1, "replicas leading: {leading:?}");

    sim.control("/control/silence", serde_json::json!({ "for_seconds": 20 }))
        .await;

    // The holder fills the gap while it is open; kill it once it delivered some.
    let started = Instant::now();
    let killed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no replica started filling; logs:\n{}",
            replicas
                .iter()
                .map(Gapwatch::logs)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let mut filling = None;
        for (i, gw) in replicas.iter().enumerate() {
            let (_, v) = gw.get("/api/v1/gaps").await;
            let delivered = v["gaps"][0]["progress"]["records_delivered"]
                .as_i64()
                .unwrap_or(0);
            if delivered > 0 && leads(gw).await {
                filling = Some(i);
            }
        }
        if let Some(i) = filling {
            break i;
        }
    };
    let killed_name = leader(&replicas[killed]).await.expect("holder");
    replicas[killed].kill9();
    let killed_at = Instant::now();

    // Another replica takes the feed within the lease time (10 s) and a renewal.
    let survivor = (killed + 1) % 3;
    let new_holder = eventually(
        Duration::from_secs(40),
        "another replica takes the feed",
        || async {
            match leader(&replicas[survivor]).await {
                Some(h) if h != killed_name => Some(h),
                _ => None,
            }
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    assert_ne!(new_holder, killed_name);

    // The killed replica comes back (a new process: a new name).
    replicas[killed].restart();

    // The gap closes and its fill finishes under the new holder.
    let mut done = None;
    for _ in 0..200 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = replicas[survivor].get("/api/v1/gaps").await;
        if v["gaps"][0]["fill"] == "done" {
            done = Some(v["gaps"][0].clone());
            break;
        }
    }
    let gap = done.unwrap_or_else(|| {
        panic!(
            "fill not done; logs:\n{}",
            replicas
                .iter()
                .map(Gapwatch::logs)
                .collect::<Vec<_>>()
                .join("\n----\n")
        )
    });

    // Everything the vendor published so far reaches the app queue.
    let history = sim.get("/control/records").await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(6)).await);
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut recovered: HashMap<String, usize> = HashMap::new();
    for m in &received {
        let id = message_record_id(m);
        *got.entry(id.clone()).or_default() += 1;
        if is_recovered(m) {
            *recovered.entry(id).or_default() += 1;
        }
    }
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} vendor records missing, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );
    // Recovered records: at most one SQS batch (10) more than once, whether
    // sent twice by the fill or as a copy of a record relayed live.
    let repeated: Vec<_> = recovered
        .iter()
        .filter(|(id, n)| **n > 1 || got[*id] > **n)
        .collect();
    if repeated.len() > 10 {
        for gw in &replicas {
            eprintln!(
                "==== {}\n{}",
                gw.base,
                gw.logs()
                    .lines()
                    .filter(|l| !l.contains("DEBUG") || l.contains("edge") || l.contains("shared"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let db = state_url.rsplit('/').next().unwrap();
        eprintln!(
            "{}",
            pg.psql_in(
                db,
                "SELECT origin, gap_id, COUNT(*), MIN(id), MAX(id) FROM record_ids GROUP BY 1, 2"
            )
        );
    }
    assert!(
        repeated.len() <= 10,
        "{} recovered records arrived more than once: {repeated:?}",
        repeated.len()
    );
    assert!(!recovered.is_empty(), "nothing was recovered");
    assert!(gap["progress"]["records_delivered"].as_i64().unwrap() > 0);

    // Every replica shows the same single gap for the outage.
    for gw in &replicas {
        let (_, v) = gw.get("/api/v1/gaps").await;
        let gaps = v["gaps"].as_array().unwrap();
        assert_eq!(gaps.len(), 1, "{v}");
        assert_eq!(gaps[0]["id"], gap["id"]);
        assert_eq!(gaps[0]["state"], "closed");
        assert_eq!(gaps[0]["fill"], "done");
    }
    let logs: String = replicas.iter().map(Gapwatch::logs).collect();
    assert!(logs.contains("feed lease taken"));
    eprintln!(
        "takeover after kill -9: {takeover:?}; recovered {} ids, {} more than once",
        recovered.len(),
        repeated.len()
    );
}
