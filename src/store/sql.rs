//! Every query of the store, written once for both backends.
//!
//! [`Sql`] is the store on one sqlx backend. Each shared method has one body
//! and one SQL text, expanded by `shared_queries!` for `Sql<Sqlite>` and
//! `Sql<Postgres>`, so the compiler checks it once per backend with concrete
//! types. A macro rather than a generic `impl<DB: Database>`: sqlx's generic
//! form needs a where-clause naming an `Encode`/`Decode`/`Type` bound for
//! every Rust type bound or read (`i64`, `&str`, `Option<&str>`, `String`,
//! `Option<i64>`…), `Executor` for a connection, `ColumnIndex` for rows and
//! `IntoArguments` for a query builder, which grows with every new column type
//! and buries the SQL; a query builder crate (sea-query) would hide the SQL
//! that the tests and the migrations speak. The cost: rustfmt leaves the
//! macro's body alone, so keep it formatted by hand. The text uses only
//! what SQLite and Postgres both accept: `$N` placeholders (sqlx's SQLite
//! driver binds `$N` by number, as Postgres does), `CAST(… AS BIGINT)` rather
//! than `::`, `RETURNING`, and upserts on the same unique indexes. What truly
//! differs is a [`Dialect`] hook: a word (`MAX` or `GREATEST`), a clause that
//! only a shared database needs (`FOR UPDATE`, renewing a chunk claim), or a
//! whole statement where one backend has a better one (Postgres inserts a
//! page's ids from two arrays in one round trip). Coordination between
//! replicas (leases, `SKIP LOCKED` claims) exists on Postgres only and lives
//! in `postgres.rs`; its one-writer counterpart is in `sqlite.rs`.
//!
//! Adding a column is one change here (plus a migration per backend).

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Row};

use super::{
    from_ms, ms, AuditState, Checkpoint, Chunk, ChunkState, FenceArg, FillState, Gap, GapFilter,
    GapKind, GapState, Origin, PageCommit, PartitionRow, PartitionState, PartitionsPage, Progress,
    StoreError,
};
use crate::detector::DetectorState;
use crate::shape::{LiveMessage, ShapeStatus};

/// A store on one sqlx backend. Cheap to clone (a pool handle).
pub(crate) struct Sql<DB: Database> {
    pub(super) pool: Pool<DB>,
}

impl<DB: Database> Clone for Sql<DB> {
    fn clone(&self) -> Self {
        Sql {
            pool: self.pool.clone(),
        }
    }
}

/// What the two backends write differently.
pub(crate) trait Dialect: Database {
    /// The scalar maximum and minimum of two values (`MAX(a, b)` in SQLite,
    /// `GREATEST(a, b)` in Postgres).
    const GREATEST: &'static str;
    const LEAST: &'static str;
    /// Appended to a `SELECT` that must lock its row against a concurrent
    /// writer (empty where there is only one writer).
    const FOR_UPDATE: &'static str;
    /// Assignments appended to the checkpoint's `UPDATE chunks SET …`: a
    /// shared store renews the chunk's claim with every checkpoint.
    const RENEW_CLAIM: &'static str;

    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Refuses (`StoreError::Fenced`) unless `fence` still holds the feed's
    /// lease, and keeps the lease from changing hands until `tx` ends.
    fn check_fence<'a>(
        tx: &'a mut Self::Connection,
        feed: &'a str,
        fence: FenceArg<'a>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// Inserts ids into the ledger; an id already there keeps its row.
    fn insert_ids<'a>(
        tx: &'a mut Self::Connection,
        feed: &'a str,
        ids: &'a [(String, DateTime<Utc>)],
        origin: &'a str,
        gap_id: Option<i64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// Which of `ids` the ledger holds for `feed`.
    fn known_ids<'a>(
        pool: &'a Pool<Self>,
        feed: &'a str,
        ids: &'a [&'a str],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send + 'a;
}

const GAP_COLUMNS: &str = "g.id, g.feed, g.part, g.kind, g.state, g.start_ms, g.end_ms, g.detected_ms, \
     g.closed_ms, g.fill, g.last_error, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id) AS chunks_total, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done') AS chunks_done, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'failed') AS chunks_failed, \
     (SELECT CAST(COALESCE(SUM(pages), 0) AS BIGINT) FROM chunks c WHERE c.gap_id = g.id) AS pages, \
     (SELECT CAST(COALESCE(SUM(delivered), 0) AS BIGINT) FROM chunks c WHERE c.gap_id = g.id) AS delivered, \
     (SELECT CAST(COALESCE(SUM(duplicate), 0) AS BIGINT) FROM chunks c WHERE c.gap_id = g.id) AS duplicate, \
     (SELECT CAST(COALESCE(SUM(rejected), 0) AS BIGINT) FROM chunks c WHERE c.gap_id = g.id) AS rejected, \
     (SELECT CAST(COALESCE(SUM(out_of_window), 0) AS BIGINT) FROM chunks c WHERE c.gap_id = g.id) AS out_of_window";

pub(super) const CHUNK_COLUMNS: &str =
    "id, gap_id, idx, part, start_ms, end_ms, state, cursor, attempts, next_attempt_ms, last_error";

/// Windows per `INSERT` when a plan is appended (6 values each: far below
/// either backend's limit on bound parameters).
const CHUNKS_PER_INSERT: usize = 200;
/// Partitions per `INSERT` of their newest events (4 values each).
const PARTITIONS_PER_INSERT: usize = 500;

// === the queries ===

/// Expands the shared queries for one concrete backend (the module doc says
/// why a macro).
macro_rules! shared_queries {
    ($backend:ty) => {
        const _: () = {
            type DB = $backend;

            impl Sql<DB> {
                pub(crate) async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                pub(crate) async fn close(&self) {
                    self.pool.close().await;
                }

                // === feeds ===

                pub(crate) async fn detector_state(&self, feed: &str) -> Result<DetectorState, StoreError> {
                    let last: Option<i64> =
                        sqlx::query_scalar("SELECT last_event_ms FROM feeds WHERE name = $1")
                            .bind(feed)
                            .fetch_optional(&self.pool)
                            .await?
                            .flatten();
                    let open: Option<i64> = sqlx::query_scalar(
                        "SELECT start_ms FROM gaps WHERE feed = $1 AND part = '' AND state = 'open' AND kind = 'detected'",
                    )
                    .bind(feed)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(DetectorState {
                        last_event: last.map(from_ms),
                        open_gap_start: open.map(from_ms),
                    })
                }

                pub(crate) async fn save_last_event(
                    &self,
                    feed: &str,
                    last_event: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let sql = format!(
                        "INSERT INTO feeds (name, last_event_ms, updated_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET \
                           last_event_ms = {greatest}(COALESCE(feeds.last_event_ms, $2), $2), updated_ms = $3",
                        greatest = DB::GREATEST,
                    );
                    sqlx::query(&sql)
                        .bind(feed)
                        .bind(ms(last_event))
                        .bind(ms(now))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                pub(crate) async fn repair_last_event(
                    &self,
                    feed: &str,
                    last_event: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query("UPDATE feeds SET last_event_ms = $1, updated_ms = $2 WHERE name = $3")
                        .bind(ms(last_event))
                        .bind(ms(now))
                        .bind(feed)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                // === partitions ===

                pub(crate) async fn save_partitions(
                    &self,
                    feed: &str,
                    rows: &[(&str, Option<DateTime<Utc>>)],
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    for batch in rows.chunks(PARTITIONS_PER_INSERT) {
                        let mut qb = sqlx::QueryBuilder::<DB>::new(
                            "INSERT INTO feed_partitions (feed, part, last_event_ms, updated_ms) ",
                        );
                        qb.push_values(batch, |mut b, (part, last)| {
                            b.push_bind(feed)
                                .push_bind(*part)
                                .push_bind(last.map(ms))
                                .push_bind(ms(now));
                        });
                        // Never backwards; a row without a time only says the partition is watched.
                        qb.push(format!(
                            " ON CONFLICT (feed, part) DO UPDATE SET last_event_ms = CASE \
                               WHEN excluded.last_event_ms IS NULL THEN feed_partitions.last_event_ms \
                               ELSE {greatest}(COALESCE(feed_partitions.last_event_ms, excluded.last_event_ms), \
                                 excluded.last_event_ms) END, \
                             updated_ms = excluded.updated_ms",
                            greatest = DB::GREATEST,
                        ));
                        qb.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn forget_partitions(&self, feed: &str, parts: &[&str]) -> Result<u64, StoreError> {
                    let mut n = 0;
                    for part in parts {
                        let r = sqlx::query("DELETE FROM feed_partitions WHERE feed = $1 AND part = $2")
                            .bind(feed)
                            .bind(*part)
                            .execute(&self.pool)
                            .await?;
                        n += DB::rows_affected(&r);
                    }
                    Ok(n)
                }

                pub(crate) async fn partition_states(
                    &self,
                    feed: &str,
                    since: Option<DateTime<Utc>>,
                ) -> Result<Vec<PartitionState>, StoreError> {
                    use std::collections::BTreeMap;
                    let since_ms = since.map_or(i64::MIN, ms);
                    let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
                        "SELECT part, last_event_ms FROM feed_partitions WHERE feed = $1 AND updated_ms >= $2",
                    )
                    .bind(feed)
                    .bind(since_ms)
                    .fetch_all(&self.pool)
                    .await?;
                    let open: Vec<(String, i64, i64)> = sqlx::query_as(
                        "SELECT part, id, start_ms FROM gaps \
                         WHERE feed = $1 AND part <> '' AND state = 'open' AND kind = 'detected'",
                    )
                    .bind(feed)
                    .fetch_all(&self.pool)
                    .await?;
                    // A gap closed since: its partition has no open gap any more.
                    let changed: Vec<String> = match since {
                        None => Vec::new(),
                        Some(_) => sqlx::query_scalar(
                            "SELECT DISTINCT part FROM gaps \
                             WHERE feed = $1 AND part <> '' AND kind = 'detected' AND updated_ms >= $2",
                        )
                        .bind(feed)
                        .bind(since_ms)
                        .fetch_all(&self.pool)
                        .await?,
                    };
                    let mut out: BTreeMap<String, PartitionState> = BTreeMap::new();
                    for (part, last) in rows {
                        out.entry(part.clone()).or_insert_with(|| PartitionState::new(part)).last_event =
                            last.map(from_ms);
                    }
                    for part in changed {
                        out.entry(part.clone()).or_insert_with(|| PartitionState::new(part));
                    }
                    for (part, id, start) in open {
                        // Read incrementally: only the partitions that changed.
                        if since.is_some() && !out.contains_key(&part) {
                            continue;
                        }
                        out.entry(part.clone()).or_insert_with(|| PartitionState::new(part)).open_gap =
                            Some((id, from_ms(start)));
                    }
                    Ok(out.into_values().collect())
                }

                pub(crate) async fn partitions_page(
                    &self,
                    feed: &str,
                    state: Option<&str>,
                    after: Option<&str>,
                    limit: i64,
                ) -> Result<PartitionsPage, StoreError> {
                    const FROM: &str = "FROM feed_partitions p LEFT JOIN gaps g ON g.feed = p.feed \
                         AND g.part = p.part AND g.state = 'open' AND g.kind = 'detected' \
                         WHERE p.feed = $1";
                    let (silent, fresh, unseen): (i64, i64, i64) = sqlx::query_as(&format!(
                        "SELECT \
                           CAST(COALESCE(SUM(CASE WHEN g.id IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
                           CAST(COALESCE(SUM(CASE WHEN g.id IS NULL AND p.last_event_ms IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
                           CAST(COALESCE(SUM(CASE WHEN g.id IS NULL AND p.last_event_ms IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
                         {FROM}"
                    ))
                    .bind(feed)
                    .fetch_one(&self.pool)
                    .await?;
                    // The casts give Postgres the parameters' type where it only sees NULL.
                    let sql = format!(
                        "SELECT p.part, p.last_event_ms, g.id, g.start_ms {FROM} \
                           AND (CAST($2 AS TEXT) IS NULL \
                             OR ($2 = 'silent' AND g.id IS NOT NULL) \
                             OR ($2 = 'fresh' AND g.id IS NULL AND p.last_event_ms IS NOT NULL) \
                             OR ($2 = 'unseen' AND g.id IS NULL AND p.last_event_ms IS NULL)) \
                           AND (CAST($3 AS TEXT) IS NULL OR p.part > $3) \
                         ORDER BY p.part LIMIT $4"
                    );
                    let rows: Vec<(String, Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(&sql)
                        .bind(feed)
                        .bind(state)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(PartitionsPage {
                        silent,
                        fresh,
                        unseen,
                        partitions: rows
                            .into_iter()
                            .map(|(partition, last, gap, start)| PartitionRow {
                                partition,
                                last_event: last.map(from_ms),
                                open_gap: gap.zip(start.map(from_ms)),
                            })
                            .collect(),
                    })
                }

                // === gaps ===

                pub(crate) async fn open_gap(
                    &self,
                    feed: &str,
                    partition: &str,
                    start: DateTime<Utc>,
                    detected_at: DateTime<Utc>,
                    fill: FillState,
                ) -> Result<i64, StoreError> {
                    // The partial unique index (one open detected gap per feed and
                    // partition) makes a second insert, concurrent or after a restart, a no-op.
                    let inserted: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO gaps (feed, part, kind, state, start_ms, detected_ms, fill, updated_ms) \
                         VALUES ($1, $5, 'detected', 'open', $2, $3, $4, $3) \
                         ON CONFLICT (feed, part) WHERE state = 'open' AND kind = 'detected' DO NOTHING RETURNING id",
                    )
                    .bind(feed)
                    .bind(ms(start))
                    .bind(ms(detected_at))
                    .bind(fill.as_str())
                    .bind(partition)
                    .fetch_optional(&self.pool)
                    .await?;
                    match inserted {
                        Some(id) => Ok(id),
                        None => Ok(sqlx::query_scalar(
                            "SELECT id FROM gaps WHERE feed = $1 AND part = $2 AND state = 'open' AND kind = 'detected'",
                        )
                        .bind(feed)
                        .bind(partition)
                        .fetch_one(&self.pool)
                        .await?),
                    }
                }

                pub(crate) async fn close_gap(
                    &self,
                    feed: &str,
                    partition: &str,
                    end: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<Option<i64>, StoreError> {
                    Ok(sqlx::query_scalar(
                        "UPDATE gaps SET state = 'closed', end_ms = $1, closed_ms = $2, updated_ms = $2 \
                         WHERE feed = $3 AND part = $4 AND state = 'open' AND kind = 'detected' RETURNING id",
                    )
                    .bind(ms(end))
                    .bind(ms(now))
                    .bind(feed)
                    .bind(partition)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                pub(crate) async fn manual_gap(
                    &self,
                    feed: &str,
                    partition: &str,
                    from: DateTime<Utc>,
                    to: DateTime<Utc>,
                    owner: &str,
                    now: DateTime<Utc>,
                ) -> Result<i64, StoreError> {
                    Ok(sqlx::query_scalar(
                        "INSERT INTO gaps (feed, part, kind, state, start_ms, end_ms, detected_ms, closed_ms, fill, owner, updated_ms) \
                         VALUES ($1, $6, 'manual', 'closed', $2, $3, $4, $4, 'pending', $5, $4) RETURNING id",
                    )
                    .bind(feed)
                    .bind(ms(from))
                    .bind(ms(to))
                    .bind(ms(now))
                    .bind(owner)
                    .bind(partition)
                    .fetch_one(&self.pool)
                    .await?)
                }

                pub(crate) async fn set_fill(
                    &self,
                    gap_id: i64,
                    fill: FillState,
                    error: Option<&str>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let r = sqlx::query(
                        "UPDATE gaps SET fill = $1, last_error = $2, updated_ms = $3 WHERE id = $4",
                    )
                    .bind(fill.as_str())
                    .bind(error)
                    .bind(ms(now))
                    .bind(gap_id)
                    .execute(&self.pool)
                    .await?;
                    Ok(DB::rows_affected(&r) > 0)
                }

                pub(crate) async fn retry_gap(&self, gap_id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
                    let mut tx = self.pool.begin().await?;
                    let r = sqlx::query(
                        "UPDATE gaps SET fill = 'pending', last_error = NULL, owner = 'daemon', updated_ms = $1 \
                         WHERE id = $2 AND fill != 'none'",
                    )
                    .bind(ms(now))
                    .bind(gap_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE chunks SET state = 'pending', attempts = 0, next_attempt_ms = 0, updated_ms = $1 \
                         WHERE gap_id = $2 AND state IN ('failed', 'running')",
                    )
                    .bind(ms(now))
                    .bind(gap_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(DB::rows_affected(&r) > 0)
                }

                pub(crate) async fn gap(&self, id: i64) -> Result<Option<Gap>, StoreError> {
                    let sql = format!("SELECT {GAP_COLUMNS} FROM gaps g WHERE g.id = $1");
                    let row = sqlx::query(&sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.map(|r| Self::gap_from_row(&r)).transpose()
                }

                pub(crate) async fn gaps(&self, filter: &GapFilter) -> Result<Vec<Gap>, StoreError> {
                    // The casts give Postgres the parameters' type where it only sees NULL.
                    let sql = format!(
                        "SELECT {GAP_COLUMNS} FROM gaps g \
                         WHERE (CAST($1 AS TEXT) IS NULL OR g.feed = $1) \
                           AND (CAST($2 AS TEXT) IS NULL OR g.state = $2 OR g.fill = $2) \
                           AND (CAST($4 AS TEXT) IS NULL OR g.part = $4) \
                           AND g.owner <> 'audit' \
                         ORDER BY g.id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(filter.feed.as_deref())
                        .bind(filter.state.as_deref())
                        .bind(filter.limit.unwrap_or(1000))
                        .bind(filter.partition.as_deref())
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(Self::gap_from_row).collect()
                }

                pub(crate) async fn gaps_to_fill(&self, feed: &str, owner: &str) -> Result<Vec<Gap>, StoreError> {
                    let sql = format!(
                        "SELECT {GAP_COLUMNS} FROM gaps g \
                         WHERE g.feed = $1 AND g.owner = $2 AND g.fill IN ('pending', 'running') ORDER BY g.id"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(feed)
                        .bind(owner)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(Self::gap_from_row).collect()
                }

                // === chunks ===

                pub(crate) async fn add_chunks(
                    &self,
                    gap_id: i64,
                    windows: &[(DateTime<Utc>, DateTime<Utc>)],
                    partitions: &[&str],
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    // Window by window, each for every partition (one for '').
                    let parts: &[&str] = if partitions.is_empty() { &[""] } else { partitions };
                    let planned: Vec<(DateTime<Utc>, DateTime<Utc>, &str)> = windows
                        .iter()
                        .flat_map(|(start, end)| parts.iter().map(move |p| (*start, *end, *p)))
                        .collect();
                    let mut tx = self.pool.begin().await?;
                    // Appends from two planners at once would race on `idx`: the gap row
                    // lock orders them.
                    let lock = format!("SELECT id FROM gaps WHERE id = $1{}", DB::FOR_UPDATE);
                    sqlx::query(&lock).bind(gap_id).execute(&mut *tx).await?;
                    let next: i64 = sqlx::query_scalar(
                        "SELECT CAST(COALESCE(MAX(idx) + 1, 0) AS BIGINT) FROM chunks WHERE gap_id = $1",
                    )
                    .bind(gap_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    for (batch, rows) in planned.chunks(CHUNKS_PER_INSERT).enumerate() {
                        let first = next + (batch * CHUNKS_PER_INSERT) as i64;
                        let mut qb = sqlx::QueryBuilder::<DB>::new(
                            "INSERT INTO chunks (gap_id, idx, part, start_ms, end_ms, updated_ms) ",
                        );
                        qb.push_values(rows.iter().enumerate(), |mut b, (i, (start, end, part))| {
                            b.push_bind(gap_id)
                                .push_bind(first + i as i64)
                                .push_bind(*part)
                                .push_bind(ms(*start))
                                .push_bind(ms(*end))
                                .push_bind(ms(now));
                        });
                        qb.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn chunks(&self, gap_id: i64) -> Result<Vec<Chunk>, StoreError> {
                    let sql = format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE gap_id = $1 ORDER BY idx");
                    let rows = sqlx::query(&sql).bind(gap_id).fetch_all(&self.pool).await?;
                    rows.iter().map(Self::chunk_from_row).collect()
                }

                pub(crate) async fn commit_page(
                    &self,
                    feed: &str,
                    chunk_id: i64,
                    gap_id: i64,
                    page: PageCommit<'_>,
                    now: DateTime<Utc>,
                    fence: FenceArg<'_>,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    DB::check_fence(&mut *tx, feed, fence).await?;
                    DB::insert_ids(&mut *tx, feed, page.delivered, "delivered", Some(gap_id)).await?;
                    let c = page.counts;
                    let counts = "delivered = delivered + $1, duplicate = duplicate + $2, \
                         rejected = rejected + $3, out_of_window = out_of_window + $4, updated_ms = $5";
                    let advance = match page.checkpoint {
                        Checkpoint::Next(cursor) => Some((Some(cursor), ChunkState::Running)),
                        Checkpoint::Done => Some((None, ChunkState::Done)),
                        Checkpoint::Stay => None,
                    };
                    let sql = match advance {
                        Some(_) => format!(
                            "UPDATE chunks SET {counts}, cursor = $7, state = $8, pages = pages + 1, \
                             attempts = 0, last_error = NULL{renew} WHERE id = $6",
                            renew = DB::RENEW_CLAIM,
                        ),
                        None => format!("UPDATE chunks SET {counts} WHERE id = $6"),
                    };
                    let q = sqlx::query(&sql)
                        .bind(c.delivered)
                        .bind(c.duplicate)
                        .bind(c.rejected)
                        .bind(c.out_of_window)
                        .bind(ms(now))
                        .bind(chunk_id);
                    let q = match advance {
                        Some((cursor, state)) => q.bind(cursor).bind(state.as_str()),
                        None => q,
                    };
                    q.execute(&mut *tx).await?;
                    if let Some((path, offset)) = page.sink_offset {
                        sqlx::query(
                            "INSERT INTO sink_offsets (feed, path, committed, updated_ms) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (feed) DO UPDATE SET path = $2, committed = $3, updated_ms = $4",
                        )
                        .bind(feed)
                        .bind(path)
                        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn sink_offset(&self, feed: &str, path: &str) -> Result<Option<u64>, StoreError> {
                    let v: Option<i64> =
                        sqlx::query_scalar("SELECT committed FROM sink_offsets WHERE feed = $1 AND path = $2")
                            .bind(feed)
                            .bind(path)
                            .fetch_optional(&self.pool)
                            .await?;
                    Ok(v.and_then(|v| u64::try_from(v).ok()))
                }

                pub(crate) async fn unfilled_seconds(
                    &self,
                    feed: &str,
                    now: DateTime<Utc>,
                ) -> Result<f64, StoreError> {
                    let sql = format!(
                        "SELECT CAST(SUM({max}(0, (COALESCE(g.end_ms, $2) - g.start_ms) - COALESCE(( \
                             SELECT SUM({max}(0, {min}(c.end_ms, COALESCE(g.end_ms, $2)) - {max}(c.start_ms, g.start_ms))) \
                             FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done'), 0))) AS BIGINT) \
                         FROM gaps g WHERE g.feed = $1 AND g.fill NOT IN ('done', 'ignored') AND g.owner <> 'audit'",
                        max = DB::GREATEST,
                        min = DB::LEAST,
                    );
                    let v: Option<i64> = sqlx::query_scalar(&sql)
                        .bind(feed)
                        .bind(ms(now))
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(v.unwrap_or(0).max(0) as f64 / 1000.0)
                }

                pub(crate) async fn fail_chunk(
                    &self,
                    chunk_id: i64,
                    error: &str,
                    next_attempt: DateTime<Utc>,
                    give_up: bool,
                    now: DateTime<Utc>,
                ) -> Result<i64, StoreError> {
                    let state = if give_up {
                        ChunkState::Failed
                    } else {
                        ChunkState::Pending
                    };
                    Ok(sqlx::query_scalar(
                        "UPDATE chunks SET state = $1, attempts = attempts + 1, last_error = $2, \
                         next_attempt_ms = $3, updated_ms = $4 WHERE id = $5 RETURNING attempts",
                    )
                    .bind(state.as_str())
                    .bind(error)
                    .bind(ms(next_attempt))
                    .bind(ms(now))
                    .bind(chunk_id)
                    .fetch_one(&self.pool)
                    .await?)
                }

                pub(crate) async fn chunk_states(&self, feed: &str) -> Result<Vec<(ChunkState, i64)>, StoreError> {
                    let rows: Vec<(String, i64)> = sqlx::query_as(
                        "SELECT c.state, COUNT(*) FROM chunks c JOIN gaps g ON g.id = c.gap_id \
                         WHERE g.feed = $1 AND g.fill IN ('pending', 'running', 'failed') AND g.owner <> 'audit' \
                         GROUP BY c.state",
                    )
                    .bind(feed)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.into_iter()
                        .map(|(s, n)| Ok((ChunkState::from_row(&s)?, n)))
                        .collect()
                }

                // === record ids ===

                pub(crate) async fn remember_live(
                    &self,
                    feed: &str,
                    gap_id: Option<i64>,
                    ids: &[(String, DateTime<Utc>)],
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    DB::insert_ids(&mut *tx, feed, ids, "live", gap_id).await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn known_ids(&self, feed: &str, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
                    DB::known_ids(&self.pool, feed, ids).await
                }

                #[cfg(test)]
                pub(crate) async fn count_ids(&self, feed: &str, origin: &str) -> Result<i64, StoreError> {
                    Ok(
                        sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = $1 AND origin = $2")
                            .bind(feed)
                            .bind(origin)
                            .fetch_one(&self.pool)
                            .await?,
                    )
                }

                // === ledger and audit ===

                pub(crate) async fn ledger_add(
                    &self,
                    feed: &str,
                    origin: Origin,
                    ids: &[(String, DateTime<Utc>)],
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    DB::insert_ids(&mut *tx, feed, ids, origin.as_str(), None).await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn prune_ledger(&self, feed: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
                    let r = sqlx::query("DELETE FROM record_ids WHERE feed = $1 AND event_ms < $2")
                        .bind(feed)
                        .bind(ms(before))
                        .execute(&self.pool)
                        .await?;
                    Ok(DB::rows_affected(&r))
                }

                pub(crate) async fn ledger_size(&self, feed: &str) -> Result<i64, StoreError> {
                    Ok(
                        sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = $1")
                            .bind(feed)
                            .fetch_one(&self.pool)
                            .await?,
                    )
                }

                pub(crate) async fn audit_state(
                    &self,
                    feed: &str,
                    now: DateTime<Utc>,
                ) -> Result<AuditState, StoreError> {
                    sqlx::query(
                        "INSERT INTO audits (feed, started_ms, updated_ms) VALUES ($1, $2, $2) \
                         ON CONFLICT (feed) DO NOTHING",
                    )
                    .bind(feed)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await?;
                    let r = sqlx::query("SELECT started_ms, verified_until_ms FROM audits WHERE feed = $1")
                        .bind(feed)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(AuditState {
                        started: from_ms(r.try_get("started_ms")?),
                        verified_until: r
                            .try_get::<Option<i64>, _>("verified_until_ms")?
                            .map(from_ms),
                    })
                }

                pub(crate) async fn verified_until(&self, feed: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
                    let v: Option<Option<i64>> =
                        sqlx::query_scalar("SELECT verified_until_ms FROM audits WHERE feed = $1")
                            .bind(feed)
                            .fetch_optional(&self.pool)
                            .await?;
                    Ok(v.flatten().map(from_ms))
                }

                pub(crate) async fn set_verified_until(
                    &self,
                    feed: &str,
                    until: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    let sql = format!(
                        "UPDATE audits SET verified_until_ms = {greatest}(COALESCE(verified_until_ms, 0), $1), \
                         updated_ms = $2 WHERE feed = $3",
                        greatest = DB::GREATEST,
                    );
                    sqlx::query(&sql)
                        .bind(ms(until))
                        .bind(ms(now))
                        .bind(feed)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                // === shape check ===

                pub(crate) async fn save_shape_sample(
                    &self,
                    feed: &str,
                    messages: &[LiveMessage],
                    keep: i64,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin().await?;
                    for m in messages {
                        let attributes = serde_json::to_string(&m.attributes)
                            .map_err(|e| StoreError::Corrupt(format!("shape sample attributes: {e}")))?;
                        sqlx::query(
                            "INSERT INTO shape_samples (feed, record_id, event_ms, received_ms, body, attributes) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (feed, record_id) DO NOTHING",
                        )
                        .bind(feed)
                        .bind(&m.id)
                        .bind(ms(m.event_time))
                        .bind(ms(m.received_at))
                        .bind(&m.body)
                        .bind(attributes)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // The newest `keep` of every replica's messages stay.
                    sqlx::query(
                        "DELETE FROM shape_samples WHERE feed = $1 AND record_id NOT IN ( \
                           SELECT record_id FROM shape_samples WHERE feed = $1 \
                           ORDER BY received_ms DESC, record_id LIMIT $2)",
                    )
                    .bind(feed)
                    .bind(keep)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                pub(crate) async fn shape_sample(&self, feed: &str) -> Result<Vec<LiveMessage>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT record_id, event_ms, received_ms, body, attributes FROM shape_samples \
                         WHERE feed = $1 ORDER BY received_ms, record_id",
                    )
                    .bind(feed)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|r| {
                            let attributes: String = r.try_get("attributes")?;
                            Ok(LiveMessage {
                                id: r.try_get("record_id")?,
                                event_time: from_ms(r.try_get("event_ms")?),
                                received_at: from_ms(r.try_get("received_ms")?),
                                body: r.try_get("body")?,
                                attributes: serde_json::from_str(&attributes).map_err(|e| {
                                    StoreError::Corrupt(format!("shape sample attributes: {e}"))
                                })?,
                            })
                        })
                        .collect()
                }

                pub(crate) async fn save_shape_check(&self, feed: &str, s: &ShapeStatus) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO shape_checks (feed, checked_ms, outcome, reason, record_id, part, path, live, recovered) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (feed) DO UPDATE SET checked_ms = excluded.checked_ms, \
                         outcome = excluded.outcome, reason = excluded.reason, record_id = excluded.record_id, \
                         part = excluded.part, path = excluded.path, live = excluded.live, \
                         recovered = excluded.recovered",
                    )
                    .bind(feed)
                    .bind(ms(s.checked_at))
                    .bind(s.outcome.as_str())
                    .bind(s.reason.as_deref())
                    .bind(s.record_id.as_deref())
                    .bind(s.part.map(|p| p.as_str()))
                    .bind(s.path.as_deref())
                    .bind(s.live.as_deref())
                    .bind(s.recovered.as_deref())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                pub(crate) async fn shape_check(&self, feed: &str) -> Result<Option<ShapeStatus>, StoreError> {
                    let Some(r) = sqlx::query(
                        "SELECT checked_ms, outcome, reason, record_id, part, path, live, recovered \
                         FROM shape_checks WHERE feed = $1",
                    )
                    .bind(feed)
                    .fetch_optional(&self.pool)
                    .await?
                    else {
                        return Ok(None);
                    };
                    let outcome: String = r.try_get("outcome")?;
                    let part: Option<String> = r.try_get("part")?;
                    Ok(Some(ShapeStatus {
                        checked_at: from_ms(r.try_get("checked_ms")?),
                        outcome: crate::metrics::ShapeOutcome::ALL
                            .iter()
                            .copied()
                            .find(|o| o.as_str() == outcome)
                            .ok_or_else(|| StoreError::Corrupt(format!("shape outcome {outcome}")))?,
                        reason: r.try_get("reason")?,
                        record_id: r.try_get("record_id")?,
                        part: ShapeStatus::part_from_row(part.as_deref()),
                        path: r.try_get("path")?,
                        live: r.try_get("live")?,
                        recovered: r.try_get("recovered")?,
                    }))
                }

                // === rows ===

                pub(super) fn chunk_from_row(r: &<DB as Database>::Row) -> Result<Chunk, StoreError> {
                    Ok(Chunk {
                        id: r.try_get("id")?,
                        gap_id: r.try_get("gap_id")?,
                        idx: r.try_get("idx")?,
                        partition: r.try_get("part")?,
                        start: from_ms(r.try_get("start_ms")?),
                        end: from_ms(r.try_get("end_ms")?),
                        state: ChunkState::from_row(&r.try_get::<String, _>("state")?)?,
                        cursor: r.try_get("cursor")?,
                        attempts: r.try_get("attempts")?,
                        next_attempt: from_ms(r.try_get("next_attempt_ms")?),
                        last_error: r.try_get("last_error")?,
                    })
                }

                fn gap_from_row(r: &<DB as Database>::Row) -> Result<Gap, StoreError> {
                    let kind: String = r.try_get("kind")?;
                    let state: String = r.try_get("state")?;
                    let fill: String = r.try_get("fill")?;
                    Ok(Gap {
                        id: r.try_get("id")?,
                        feed: r.try_get("feed")?,
                        partition: r.try_get("part")?,
                        kind: GapKind::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("gap kind {kind}")))?,
                        state: GapState::parse(&state)
                            .ok_or_else(|| StoreError::Corrupt(format!("gap state {state}")))?,
                        start: from_ms(r.try_get("start_ms")?),
                        end: r.try_get::<Option<i64>, _>("end_ms")?.map(from_ms),
                        detected_at: from_ms(r.try_get("detected_ms")?),
                        closed_at: r.try_get::<Option<i64>, _>("closed_ms")?.map(from_ms),
                        fill: FillState::parse(&fill)
                            .ok_or_else(|| StoreError::Corrupt(format!("fill {fill}")))?,
                        last_error: r.try_get("last_error")?,
                        progress: Progress {
                            chunks_total: r.try_get("chunks_total")?,
                            chunks_done: r.try_get("chunks_done")?,
                            chunks_failed: r.try_get("chunks_failed")?,
                            pages: r.try_get("pages")?,
                            records_delivered: r.try_get("delivered")?,
                            records_duplicate: r.try_get("duplicate")?,
                            records_rejected: r.try_get("rejected")?,
                            records_out_of_window: r.try_get("out_of_window")?,
                        },
                    })
                }
            }
        };
    };
}

shared_queries!(sqlx::Sqlite);
shared_queries!(sqlx::Postgres);
