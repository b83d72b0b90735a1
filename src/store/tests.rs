//! The store's contract, written once and run against each backend: every
//! `async fn NAME(db: Db)` listed in `suite!` runs as `sqlite::NAME` (a SQLite
//! file) and `postgres::NAME` (its own database in a real Postgres cluster,
//! one cluster per test binary).

use chrono::{Duration, TimeZone, Utc};

use super::*;

// Shared with the integration tests and the bench, where its items are `pub`.
#[allow(unreachable_pub)]
#[path = "../../tests/common/postgres.rs"]
pub(crate) mod pg_cluster;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::sqlite()).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::postgres()).await
            })*
        }
    };
}

suite!(
    gaps_open_close_and_survive_reopening,
    page_checkpoints_and_known_ids,
    unfilled_seconds_subtract_done_chunks,
    failed_chunks_come_back_on_retry,
    leases_fence_checkpoints_and_claims,
    ledger_is_pruned_by_event_time,
    audit_watermark_starts_once_and_only_moves_forward,
    partitions_keep_their_own_gaps_chunks_and_newest_event,
    partition_pages_count_and_filter_by_state,
    shape_sample_keeps_the_newest_and_the_last_check_survives,
);

/// A database to test against: opening it twice gives the same state.
pub(super) enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Db {
        Db::Postgres(pg_cluster::shared_cluster().new_database())
    }

    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(&dir.path().join("state/gapwatch.db")).await,
            Db::Postgres(url) => Store::postgres(url).await,
        }
        .unwrap()
    }
}

fn t(min: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap() + Duration::minutes(min)
}

async fn gaps_open_close_and_survive_reopening(db: Db) {
    let store = db.open().await;
    store.save_last_event("orders", t(0), t(0)).await.unwrap();
    // Never backwards.
    store.save_last_event("orders", t(-5), t(1)).await.unwrap();
    let id = store
        .open_gap("orders", "", t(0), t(5), FillState::Pending)
        .await
        .unwrap();
    // Opening again returns the same open gap.
    assert_eq!(
        store
            .open_gap("orders", "", t(0), t(6), FillState::Pending)
            .await
            .unwrap(),
        id
    );
    store.close().await;

    let store = db.open().await;
    let state = store.detector_state("orders").await.unwrap();
    assert_eq!(state.last_event, Some(t(0)));
    assert_eq!(state.open_gap_start, Some(t(0)));
    assert_eq!(
        store.close_gap("orders", "", t(30), t(31)).await.unwrap(),
        Some(id)
    );
    let gap = store.gap(id).await.unwrap().unwrap();
    assert_eq!(gap.state, GapState::Closed);
    assert_eq!((gap.start, gap.end), (t(0), Some(t(30))));
    assert_eq!(
        store.detector_state("orders").await.unwrap().open_gap_start,
        None
    );
    let open = store
        .gaps(&GapFilter {
            state: Some("open".into()),
            ..GapFilter::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty());
}

fn done() -> PageCommit<'static> {
    PageCommit {
        delivered: &[],
        counts: PageCounts::default(),
        checkpoint: Checkpoint::Done,
        sink_offset: None,
    }
}

async fn page_checkpoints_and_known_ids(db: Db) {
    let store = db.open().await;
    let gap = store
        .manual_gap("orders", "", t(0), t(120), "daemon", t(200))
        .await
        .unwrap();
    store
        .add_chunks(gap, &[(t(0), t(60)), (t(60), t(120))], &[], t(200))
        .await
        .unwrap();
    let chunks = store.chunks(gap).await.unwrap();
    assert_eq!(chunks.iter().map(|c| c.idx).collect::<Vec<_>>(), vec![0, 1]);
    let ids: Vec<(String, DateTime<Utc>)> = (0..450).map(|i| (format!("r{i}"), t(1))).collect();
    store
        .commit_page(
            "orders",
            chunks[0].id,
            gap,
            PageCommit {
                delivered: &ids,
                counts: PageCounts {
                    delivered: 450,
                    duplicate: 2,
                    rejected: 1,
                    out_of_window: 3,
                },
                checkpoint: Checkpoint::Next("{\"kind\":\"page\",\"page\":2}"),
                sink_offset: Some(("/tmp/out.ndjson", 4096)),
            },
            t(201),
        )
        .await
        .unwrap();
    let c = &store.chunks(gap).await.unwrap()[0];
    assert_eq!(c.state, ChunkState::Running);
    assert_eq!(
        store
            .sink_offset("orders", "/tmp/out.ndjson")
            .await
            .unwrap(),
        Some(4096)
    );
    assert_eq!(
        store.sink_offset("orders", "/elsewhere").await.unwrap(),
        None
    );
    assert_eq!(c.cursor.as_deref(), Some("{\"kind\":\"page\",\"page\":2}"));
    store
        .commit_page("orders", chunks[0].id, gap, done(), t(202))
        .await
        .unwrap();
    // A page the sink could not finish: its deliveries count, the cursor stays.
    let partial = [("r-partial".to_string(), t(2))];
    store
        .commit_page(
            "orders",
            chunks[1].id,
            gap,
            PageCommit {
                delivered: &partial,
                counts: PageCounts {
                    delivered: 1,
                    ..PageCounts::default()
                },
                checkpoint: Checkpoint::Stay,
                sink_offset: None,
            },
            t(203),
        )
        .await
        .unwrap();
    let c = &store.chunks(gap).await.unwrap()[1];
    assert_eq!((c.state, c.cursor.as_deref()), (ChunkState::Pending, None));
    let g = store.gap(gap).await.unwrap().unwrap();
    assert_eq!(g.progress.records_delivered, 451);
    assert_eq!(g.progress.records_out_of_window, 3);
    store
        .commit_page("orders", chunks[1].id, gap, done(), t(204))
        .await
        .unwrap();
    let g = store.gap(gap).await.unwrap().unwrap();
    assert_eq!(g.progress.chunks_done, 2);
    assert_eq!(g.progress.records_delivered, 451);
    assert_eq!(g.progress.records_duplicate, 2);
    assert_eq!(g.progress.pages, 3);

    let asked: Vec<&str> = vec!["r0", "r449", "r450", "zzz"];
    let known = store.known_ids("orders", &asked).await.unwrap();
    assert_eq!(known.len(), 2);
    assert!(known.contains("r0") && known.contains("r449"));
    // Ids are per feed.
    assert!(store.known_ids("other", &asked).await.unwrap().is_empty());

    store
        .remember_live("orders", Some(gap), &[("live-1".into(), t(0))])
        .await
        .unwrap();
    assert_eq!(store.count_ids("orders", "live").await.unwrap(), 1);
    assert_eq!(store.count_ids("orders", "delivered").await.unwrap(), 451);
}

async fn unfilled_seconds_subtract_done_chunks(db: Db) {
    let store = db.open().await;
    let gap = store
        .manual_gap("orders", "", t(0), t(60), "daemon", t(100))
        .await
        .unwrap();
    assert_eq!(
        store.unfilled_seconds("orders", t(100)).await.unwrap(),
        3600.0
    );
    // Chunks reach past the gap (overlap): only the part inside counts.
    store
        .add_chunks(gap, &[(t(-2), t(30)), (t(30), t(62))], &[], t(100))
        .await
        .unwrap();
    let first = store.chunks(gap).await.unwrap()[0].id;
    store
        .commit_page("orders", first, gap, done(), t(100))
        .await
        .unwrap();
    assert_eq!(
        store.unfilled_seconds("orders", t(100)).await.unwrap(),
        1800.0
    );
    store
        .set_fill(gap, FillState::Done, None, t(101))
        .await
        .unwrap();
    assert_eq!(store.unfilled_seconds("orders", t(101)).await.unwrap(), 0.0);
}

async fn failed_chunks_come_back_on_retry(db: Db) {
    let store = db.open().await;
    let gap = store
        .manual_gap("orders", "", t(0), t(60), "cli", t(100))
        .await
        .unwrap();
    store
        .add_chunks(gap, &[(t(0), t(60))], &[], t(100))
        .await
        .unwrap();
    let c = store.chunks(gap).await.unwrap()[0].id;
    let attempts = store
        .fail_chunk(c, "status 500", t(101), true, t(100))
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    store
        .set_fill(gap, FillState::Failed, Some("chunk 0 failed"), t(100))
        .await
        .unwrap();
    assert!(store
        .gaps_to_fill("orders", "daemon")
        .await
        .unwrap()
        .is_empty());
    assert!(store.retry_gap(gap, t(102)).await.unwrap());
    // A retried gap is the daemon's.
    let todo = store.gaps_to_fill("orders", "daemon").await.unwrap();
    assert_eq!(todo.len(), 1);
    assert_eq!(todo[0].fill, FillState::Pending);
    assert_eq!(
        store.chunks(gap).await.unwrap()[0].state,
        ChunkState::Pending
    );
}

fn page<'a>(ids: &'a [(String, DateTime<Utc>)], next: &'a str) -> PageCommit<'a> {
    PageCommit {
        delivered: ids,
        counts: PageCounts {
            delivered: ids.len() as i64,
            ..PageCounts::default()
        },
        checkpoint: Checkpoint::Next(next),
        sink_offset: None,
    }
}

/// Two replicas on one store. On SQLite (one writer) every lease is held; on
/// Postgres one replica holds a feed until its lease lapses, and what it
/// commits after that is refused.
async fn leases_fence_checkpoints_and_claims(db: Db) {
    let ttl = std::time::Duration::from_millis(1500);
    let a = db.open().await.for_replica("a");
    let b = db.open().await.for_replica("b");
    let gap = a
        .manual_gap("orders", "", t(0), t(120), "daemon", t(200))
        .await
        .unwrap();
    a.add_chunks(gap, &[(t(0), t(60)), (t(60), t(120))], &[], t(200))
        .await
        .unwrap();
    // Without a lease nothing is claimed or committed.
    assert!(matches!(
        a.claim_chunks("orders", gap, t(200), ttl, 1).await,
        Err(StoreError::Fenced(_))
    ));
    let la = a.acquire_lease("orders", ttl).await.unwrap();
    assert!(la.mine && la.holder == "a");
    // Renewing keeps the token.
    assert_eq!(
        a.acquire_lease("orders", ttl).await.unwrap().token,
        la.token
    );
    let lb = b.acquire_lease("orders", ttl).await.unwrap();
    let claimed = a.claim_chunks("orders", gap, t(200), ttl, 1).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.idx).collect::<Vec<_>>(), vec![0]);
    assert_eq!(claimed[0].state, ChunkState::Running);
    let first = [("r1".to_string(), t(1))];
    a.commit_page("orders", claimed[0].id, gap, page(&first, "p2"), t(201))
        .await
        .unwrap();
    if !a.is_shared() {
        assert!(lb.mine, "a single-writer store's lease is always held");
        return;
    }
    assert!(!lb.mine);
    assert_eq!(lb.holder, "a");
    assert!(matches!(
        b.claim_chunks("orders", gap, t(200), ttl, 10).await,
        Err(StoreError::Fenced(_))
    ));

    // a stops renewing; once the database's clock passes the expiry, b takes over.
    tokio::time::sleep(ttl + std::time::Duration::from_millis(300)).await;
    let lb = b.acquire_lease("orders", ttl).await.unwrap();
    assert!(lb.mine && lb.token > la.token, "{lb:?} after {la:?}");
    // a still believes it holds the lease: its checkpoint is refused, whole.
    let late = [("late".to_string(), t(2))];
    let refused = a
        .commit_page("orders", claimed[0].id, gap, page(&late, "p3"), t(202))
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    assert!(b.known_ids("orders", &["late"]).await.unwrap().is_empty());
    // b resumes a's chunk (its claim lapsed with the lease) from a's checkpoint,
    // and the chunk a never touched.
    let resumed = b
        .claim_chunks("orders", gap, t(203), ttl, 10)
        .await
        .unwrap();
    assert_eq!(
        resumed.iter().map(|c| c.idx).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(resumed[0].cursor.as_deref(), Some("p2"));
    // Claimed chunks are skipped by the next claim.
    assert!(b
        .claim_chunks("orders", gap, t(203), ttl, 10)
        .await
        .unwrap()
        .is_empty());
    b.commit_page("orders", resumed[0].id, gap, page(&late, "p3"), t(204))
        .await
        .unwrap();
    assert_eq!(
        b.known_ids("orders", &["late", "r1"]).await.unwrap().len(),
        2
    );
    // a learns it lost the feed.
    let la2 = a.acquire_lease("orders", ttl).await.unwrap();
    assert!(!la2.mine && la2.holder == "b");
    // A one-off run (no replica) is not fenced.
    let cli = db.open().await;
    cli.commit_page("orders", resumed[1].id, gap, done(), t(205))
        .await
        .unwrap();
}

async fn ledger_is_pruned_by_event_time(db: Db) {
    let store = db.open().await;
    let relayed: Vec<(String, DateTime<Utc>)> = (0..300).map(|i| (format!("r{i}"), t(i))).collect();
    store
        .ledger_add("orders", Origin::Relayed, &relayed)
        .await
        .unwrap();
    store
        .ledger_add("orders", Origin::Reported, &[("r5".into(), t(5))])
        .await
        .unwrap();
    store
        .ledger_add("other", Origin::Reported, &[("o1".into(), t(0))])
        .await
        .unwrap();
    // An id keeps its first origin.
    assert_eq!(store.count_ids("orders", "relayed").await.unwrap(), 300);
    assert_eq!(store.ledger_size("orders").await.unwrap(), 300);
    let gap = store
        .manual_gap("orders", "", t(0), t(10), "daemon", t(400))
        .await
        .unwrap();
    store
        .remember_live("orders", Some(gap), &[("edge".into(), t(100))])
        .await
        .unwrap();
    // Strictly older than the horizon goes, whatever the origin; the rest stays.
    let pruned = store.prune_ledger("orders", t(100)).await.unwrap();
    assert_eq!(pruned, 100);
    assert_eq!(store.ledger_size("orders").await.unwrap(), 201);
    let known = store
        .known_ids("orders", &["r0", "r99", "r100", "r299", "edge"])
        .await
        .unwrap();
    let mut known: Vec<_> = known.into_iter().collect();
    known.sort();
    assert_eq!(known, vec!["edge", "r100", "r299"]);
    // Other feeds are untouched.
    assert_eq!(store.ledger_size("other").await.unwrap(), 1);
}

async fn audit_watermark_starts_once_and_only_moves_forward(db: Db) {
    let store = db.open().await;
    assert_eq!(store.verified_until("orders").await.unwrap(), None);
    let s = store.audit_state("orders", t(0)).await.unwrap();
    assert_eq!(
        s,
        AuditState {
            started: t(0),
            verified_until: None
        }
    );
    // A later start (a restart) keeps the first.
    assert_eq!(
        store.audit_state("orders", t(9)).await.unwrap().started,
        t(0)
    );
    store
        .set_verified_until("orders", t(20), t(30))
        .await
        .unwrap();
    store
        .set_verified_until("orders", t(10), t(31))
        .await
        .unwrap();
    assert_eq!(store.verified_until("orders").await.unwrap(), Some(t(20)));
    let reopened = db.open().await;
    assert_eq!(
        reopened.audit_state("orders", t(40)).await.unwrap(),
        AuditState {
            started: t(0),
            verified_until: Some(t(20))
        }
    );
}

/// A partitioned feed: one open gap per partition next to the whole feed's,
/// chunks that name the partition they ask for, and each partition's newest
/// event, read back whole or as what changed.
async fn partitions_keep_their_own_gaps_chunks_and_newest_event(db: Db) {
    let store = db.open().await;
    let s1 = store
        .open_gap("orders", "s1", t(0), t(5), FillState::Pending)
        .await
        .unwrap();
    let s2 = store
        .open_gap("orders", "s2", t(1), t(6), FillState::Pending)
        .await
        .unwrap();
    assert_ne!(s1, s2);
    assert_eq!(
        store
            .open_gap("orders", "s1", t(0), t(7), FillState::Pending)
            .await
            .unwrap(),
        s1,
        "one open gap per partition"
    );
    // The whole feed's detector state is not a partition's.
    assert_eq!(
        store.detector_state("orders").await.unwrap().open_gap_start,
        None
    );
    assert_eq!(
        store.close_gap("orders", "", t(9), t(9)).await.unwrap(),
        None
    );
    assert_eq!(
        store.close_gap("orders", "s1", t(10), t(10)).await.unwrap(),
        Some(s1)
    );
    let gap = store.gap(s2).await.unwrap().unwrap();
    assert_eq!((gap.partition.as_str(), gap.state), ("s2", GapState::Open));
    let only_s2 = store
        .gaps(&GapFilter {
            partition: Some("s2".into()),
            ..GapFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only_s2.iter().map(|g| g.id).collect::<Vec<_>>(), vec![s2]);

    // A fill of every partition: each window once per partition.
    let all = store
        .manual_gap("orders", "", t(0), t(2), "daemon", t(20))
        .await
        .unwrap();
    store
        .add_chunks(all, &[(t(0), t(1)), (t(1), t(2))], &["s1", "s2"], t(20))
        .await
        .unwrap();
    let chunks = store.chunks(all).await.unwrap();
    let planned: Vec<_> = chunks
        .iter()
        .map(|c| (c.idx, c.start, c.partition.as_str()))
        .collect();
    assert_eq!(
        planned,
        vec![
            (0, t(0), "s1"),
            (1, t(0), "s2"),
            (2, t(1), "s1"),
            (3, t(1), "s2")
        ]
    );
    assert_eq!(store.gap(all).await.unwrap().unwrap().partition, "");

    // Newest events: never backwards; a row without a time only says watched.
    store
        .save_partitions(
            "orders",
            &[("s1", Some(t(3))), ("s2", None), ("s3", Some(t(4)))],
            t(30),
        )
        .await
        .unwrap();
    store
        .save_partitions("orders", &[("s1", Some(t(2))), ("s3", None)], t(31))
        .await
        .unwrap();
    store.close().await;

    let store = db.open().await;
    let states = store.partition_states("orders", None).await.unwrap();
    let want = vec![
        PartitionState {
            partition: "s1".into(),
            last_event: Some(t(3)),
            open_gap: None,
        },
        PartitionState {
            partition: "s2".into(),
            last_event: None,
            open_gap: Some((s2, t(1))),
        },
        PartitionState {
            partition: "s3".into(),
            last_event: Some(t(4)),
            open_gap: None,
        },
    ];
    assert_eq!(states, want);
    // What changed since: s1's newer event and s2's closed gap.
    store
        .save_partitions("orders", &[("s1", Some(t(40)))], t(40))
        .await
        .unwrap();
    store.close_gap("orders", "s2", t(41), t(41)).await.unwrap();
    let changed = store.partition_states("orders", Some(t(40))).await.unwrap();
    let want = vec![
        PartitionState {
            partition: "s1".into(),
            last_event: Some(t(40)),
            open_gap: None,
        },
        PartitionState::new("s2".into()),
    ];
    assert_eq!(changed, want);
    assert_eq!(
        store
            .forget_partitions("orders", &["s3", "s9"])
            .await
            .unwrap(),
        1
    );
    let left: Vec<_> = store
        .partition_states("orders", None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.partition)
        .collect();
    assert_eq!(left, vec!["s1", "s2"]);
    // Another feed's partitions are its own.
    assert!(store
        .partition_states("other", None)
        .await
        .unwrap()
        .is_empty());
}

async fn partition_pages_count_and_filter_by_state(db: Db) {
    let store = db.open().await;
    let rows: Vec<(String, Option<DateTime<Utc>>)> = (1..=5)
        .map(|i| (format!("p{i}"), (i <= 3).then(|| t(i))))
        .collect();
    let rows: Vec<(&str, Option<DateTime<Utc>>)> =
        rows.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    store.save_partitions("orders", &rows, t(10)).await.unwrap();
    let gap = store
        .open_gap("orders", "p2", t(2), t(12), FillState::Pending)
        .await
        .unwrap();
    let page = store
        .partitions_page("orders", None, None, 2)
        .await
        .unwrap();
    assert_eq!((page.silent, page.fresh, page.unseen), (1, 2, 2));
    let names: Vec<_> = page
        .partitions
        .iter()
        .map(|p| p.partition.as_str())
        .collect();
    assert_eq!(names, vec!["p1", "p2"]);
    assert_eq!(page.partitions[1].open_gap, Some((gap, t(2))));
    assert_eq!(page.partitions[1].last_event, Some(t(2)));
    let next = store
        .partitions_page("orders", None, Some("p2"), 2)
        .await
        .unwrap();
    let names: Vec<_> = next
        .partitions
        .iter()
        .map(|p| p.partition.as_str())
        .collect();
    assert_eq!(names, vec!["p3", "p4"]);
    for (state, want) in [
        ("silent", vec!["p2"]),
        ("fresh", vec!["p1", "p3"]),
        ("unseen", vec!["p4", "p5"]),
    ] {
        let page = store
            .partitions_page("orders", Some(state), None, 10)
            .await
            .unwrap();
        let names: Vec<_> = page
            .partitions
            .iter()
            .map(|p| p.partition.as_str())
            .collect();
        assert_eq!(names, want, "{state}");
    }
}

async fn shape_sample_keeps_the_newest_and_the_last_check_survives(db: Db) {
    use crate::metrics::ShapeOutcome;
    use crate::shape::{Attribute, LiveMessage, Part, ShapeStatus};

    let msg = |id: &str, min: i64| LiveMessage {
        id: id.into(),
        event_time: t(min),
        received_at: t(min) + Duration::milliseconds(250),
        body: format!(r#"{{"id":"{id}","note":"it's \"quoted\""}}"#),
        attributes: [("event-type".to_string(), Attribute::string("order"))]
            .into_iter()
            .collect(),
    };
    let store = db.open().await;
    assert!(store.shape_sample("orders").await.unwrap().is_empty());
    assert!(store.shape_check("orders").await.unwrap().is_none());
    store
        .save_shape_sample("orders", &[msg("a", 0), msg("b", 1)], 3)
        .await
        .unwrap();
    // Another replica's messages join; the newest 3 of all stay; a message
    // saved twice keeps one row.
    store
        .save_shape_sample("orders", &[msg("b", 1), msg("c", 2), msg("d", 3)], 3)
        .await
        .unwrap();
    store
        .save_shape_sample("other", &[msg("x", 9)], 3)
        .await
        .unwrap();
    let status = ShapeStatus {
        checked_at: t(5),
        outcome: ShapeOutcome::Mismatch,
        reason: None,
        record_id: Some("c".into()),
        part: Some(Part::Body),
        path: Some("/detail/amount".into()),
        live: Some("5".into()),
        recovered: Some("\"5\"".into()),
    };
    store.save_shape_check("orders", &status).await.unwrap();
    drop(store);

    let store = db.open().await;
    let sample = store.shape_sample("orders").await.unwrap();
    assert_eq!(sample, vec![msg("b", 1), msg("c", 2), msg("d", 3)]);
    assert_eq!(store.shape_check("orders").await.unwrap(), Some(status));
    // The next check replaces the last one.
    let matched = ShapeStatus {
        checked_at: t(65),
        outcome: ShapeOutcome::Match,
        reason: None,
        record_id: None,
        part: None,
        path: None,
        live: None,
        recovered: None,
    };
    store.save_shape_check("orders", &matched).await.unwrap();
    assert_eq!(store.shape_check("orders").await.unwrap(), Some(matched));
    assert_eq!(store.shape_sample("other").await.unwrap().len(), 1);
}
