use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::{
    from_ms, ms, AuditState, Checkpoint, Chunk, ChunkState, FillState, Gap, GapFilter, GapKind,
    GapState, Origin, PageCommit, Progress, StoreError,
};
use crate::detector::DetectorState;

/// The SQLite store: one replica. Cheap to clone (a pool handle).
#[derive(Clone)]
pub(crate) struct SqliteStore {
    pool: SqlitePool,
}

const GAP_COLUMNS: &str = "g.id, g.feed, g.kind, g.state, g.start_ms, g.end_ms, g.detected_ms, \
     g.closed_ms, g.fill, g.last_error, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id) AS chunks_total, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done') AS chunks_done, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'failed') AS chunks_failed, \
     (SELECT COALESCE(SUM(pages), 0) FROM chunks c WHERE c.gap_id = g.id) AS pages, \
     (SELECT COALESCE(SUM(delivered), 0) FROM chunks c WHERE c.gap_id = g.id) AS delivered, \
     (SELECT COALESCE(SUM(duplicate), 0) FROM chunks c WHERE c.gap_id = g.id) AS duplicate, \
     (SELECT COALESCE(SUM(rejected), 0) FROM chunks c WHERE c.gap_id = g.id) AS rejected, \
     (SELECT COALESCE(SUM(out_of_window), 0) FROM chunks c WHERE c.gap_id = g.id) AS out_of_window";

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A checkpoint must survive kill -9 and power loss alike.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        Self::connect(options).await
    }

    /// A private in-memory database, for tests.
    pub async fn memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        let pool = SqlitePoolOptions::new()
            // One writer at a time is what SQLite does anyway; a single connection
            // also keeps an in-memory database shared.
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // === feeds ===

    /// The detector state saved for a feed (nothing yet: default).
    pub async fn detector_state(&self, feed: &str) -> Result<DetectorState, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_event_ms FROM feeds WHERE name = ?")
                .bind(feed)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT start_ms FROM gaps WHERE feed = ? AND state = 'open' AND kind = 'detected'",
        )
        .bind(feed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(DetectorState {
            last_event: last.map(from_ms),
            open_gap_start: open.map(from_ms),
        })
    }

    /// Records the newest event time (never moves it backwards).
    pub async fn save_last_event(
        &self,
        feed: &str,
        last_event: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO feeds (name, last_event_ms, updated_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET \
               last_event_ms = MAX(COALESCE(last_event_ms, ?2), ?2), updated_ms = ?3",
        )
        .bind(feed)
        .bind(ms(last_event))
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Overwrites the newest event time, also downwards: only for repairing a
    /// value that cannot be true (an event time in the future).
    pub async fn repair_last_event(
        &self,
        feed: &str,
        last_event: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE feeds SET last_event_ms = ?, updated_ms = ? WHERE name = ?")
            .bind(ms(last_event))
            .bind(ms(now))
            .bind(feed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // === gaps ===

    /// Opens a detected gap starting at `start`; returns its id. If the feed
    /// already has an open gap (a restart raced the detector), returns that one.
    pub async fn open_gap(
        &self,
        feed: &str,
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
        fill: FillState,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM gaps WHERE feed = ? AND state = 'open' AND kind = 'detected'",
        )
        .bind(feed)
        .fetch_optional(&mut *tx)
        .await?;
        let id = match existing {
            Some(id) => id,
            None => sqlx::query(
                "INSERT INTO gaps (feed, kind, state, start_ms, detected_ms, fill, updated_ms) \
                 VALUES (?, 'detected', 'open', ?, ?, ?, ?)",
            )
            .bind(feed)
            .bind(ms(start))
            .bind(ms(detected_at))
            .bind(fill.as_str())
            .bind(ms(detected_at))
            .execute(&mut *tx)
            .await?
            .last_insert_rowid(),
        };
        tx.commit().await?;
        Ok(id)
    }

    /// Closes the feed's open gap at `end`; returns its id (None: no open gap).
    pub async fn close_gap(
        &self,
        feed: &str,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE gaps SET state = 'closed', end_ms = ?, closed_ms = ?, updated_ms = ? \
             WHERE feed = ? AND state = 'open' AND kind = 'detected' RETURNING id",
        )
        .bind(ms(end))
        .bind(ms(now))
        .bind(ms(now))
        .bind(feed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    /// A closed gap created by hand (`backfill`), to be filled over `[from, to)`.
    /// `owner` is who fills it: `daemon`, or `cli` for a `gapwatch backfill` run.
    pub async fn manual_gap(
        &self,
        feed: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO gaps (feed, kind, state, start_ms, end_ms, detected_ms, closed_ms, fill, owner, updated_ms) \
             VALUES (?, 'manual', 'closed', ?, ?, ?, ?, 'pending', ?, ?)",
        )
        .bind(feed)
        .bind(ms(from))
        .bind(ms(to))
        .bind(ms(now))
        .bind(ms(now))
        .bind(owner)
        .bind(ms(now))
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    pub async fn set_fill(
        &self,
        gap_id: i64,
        fill: FillState,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE gaps SET fill = ?, last_error = ?, updated_ms = ? WHERE id = ?")
                .bind(fill.as_str())
                .bind(error)
                .bind(ms(now))
                .bind(gap_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n > 0)
    }

    /// Puts a failed or ignored gap back to work: failed chunks become pending.
    pub async fn retry_gap(&self, gap_id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE gaps SET fill = 'pending', last_error = NULL, owner = 'daemon', updated_ms = ? \
             WHERE id = ? AND fill != 'none'",
        )
        .bind(ms(now))
        .bind(gap_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE chunks SET state = 'pending', attempts = 0, next_attempt_ms = 0, updated_ms = ? \
             WHERE gap_id = ? AND state IN ('failed', 'running')",
        )
        .bind(ms(now))
        .bind(gap_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn gap(&self, id: i64) -> Result<Option<Gap>, StoreError> {
        let sql = format!("SELECT {GAP_COLUMNS} FROM gaps g WHERE g.id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| gap_from_row(&r)).transpose()
    }

    /// Gaps, newest first.
    pub async fn gaps(&self, filter: &GapFilter) -> Result<Vec<Gap>, StoreError> {
        let sql = format!(
            "SELECT {GAP_COLUMNS} FROM gaps g \
             WHERE (?1 IS NULL OR g.feed = ?1) AND (?2 IS NULL OR g.state = ?2 OR g.fill = ?2) \
               AND g.owner <> 'audit' \
             ORDER BY g.id DESC LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.feed.as_deref())
            .bind(filter.state.as_deref())
            .bind(filter.limit.unwrap_or(1000))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(gap_from_row).collect()
    }

    /// Gaps of `owner` whose fill still has work (pending or running), oldest first.
    pub async fn gaps_to_fill(&self, feed: &str, owner: &str) -> Result<Vec<Gap>, StoreError> {
        let sql = format!(
            "SELECT {GAP_COLUMNS} FROM gaps g \
             WHERE g.feed = ? AND g.owner = ? AND g.fill IN ('pending', 'running') ORDER BY g.id"
        );
        let rows = sqlx::query(&sql)
            .bind(feed)
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(gap_from_row).collect()
    }

    // === chunks ===

    /// Appends chunks to a gap's plan (indexes continue after the last one).
    pub async fn add_chunks(
        &self,
        gap_id: i64,
        windows: &[(DateTime<Utc>, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let next: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM chunks WHERE gap_id = ?")
                .bind(gap_id)
                .fetch_one(&mut *tx)
                .await?;
        for (i, (start, end)) in windows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO chunks (gap_id, idx, start_ms, end_ms, updated_ms) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(gap_id)
            .bind(next + i as i64)
            .bind(ms(*start))
            .bind(ms(*end))
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn chunks(&self, gap_id: i64) -> Result<Vec<Chunk>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, gap_id, idx, start_ms, end_ms, state, cursor, attempts, next_attempt_ms, last_error \
             FROM chunks WHERE gap_id = ? ORDER BY idx",
        )
        .bind(gap_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    id: r.get("id"),
                    gap_id: r.get("gap_id"),
                    idx: r.get("idx"),
                    start: from_ms(r.get("start_ms")),
                    end: from_ms(r.get("end_ms")),
                    state: ChunkState::from_row(r.get("state"))?,
                    cursor: r.get("cursor"),
                    attempts: r.get("attempts"),
                    next_attempt: from_ms(r.get("next_attempt_ms")),
                    last_error: r.get("last_error"),
                })
            })
            .collect()
    }

    /// One writer: a claim is just the move to `running` (a crash's leftovers
    /// are reset at start by [`SqliteStore::reset_running`]).
    pub async fn claim_chunks(
        &self,
        gap_id: i64,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Chunk>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE chunks SET state = 'running', updated_ms = ?2 WHERE id IN ( \
               SELECT id FROM chunks WHERE gap_id = ?1 AND state = 'pending' \
               AND next_attempt_ms <= ?2 ORDER BY idx LIMIT ?3) RETURNING id",
        )
        .bind(gap_id)
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = self.chunks(gap_id).await?;
        chunks.retain(|c| ids.contains(&c.id));
        Ok(chunks)
    }

    pub async fn start_chunk(&self, chunk_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE chunks SET state = 'running', updated_ms = ? WHERE id = ?")
            .bind(ms(now))
            .bind(chunk_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Chunks left `running` by a crash go back to `pending`; their checkpoint
    /// stays, so they resume at the page after the last one delivered.
    pub async fn reset_running(&self, feed: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE chunks SET state = 'pending', updated_ms = ? WHERE state = 'running' \
             AND gap_id IN (SELECT id FROM gaps WHERE feed = ?)",
        )
        .bind(ms(now))
        .bind(feed)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// The checkpoint of one delivered page, in one transaction: the ids it
    /// delivered, its counts, and where the chunk goes next.
    pub async fn commit_page(
        &self,
        feed: &str,
        chunk_id: i64,
        gap_id: i64,
        page: PageCommit<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_ids(&mut tx, feed, page.delivered, "delivered", Some(gap_id)).await?;
        let c = page.counts;
        let advance = match page.checkpoint {
            Checkpoint::Next(cursor) => Some((Some(cursor), "running")),
            Checkpoint::Done => Some((None, "done")),
            Checkpoint::Stay => None,
        };
        let q = match advance {
            Some((cursor, state)) => sqlx::query(
                "UPDATE chunks SET cursor = ?, state = ?, pages = pages + 1, attempts = 0, \
                 last_error = NULL, delivered = delivered + ?, duplicate = duplicate + ?, \
                 rejected = rejected + ?, out_of_window = out_of_window + ?, updated_ms = ? WHERE id = ?",
            )
            .bind(cursor)
            .bind(state),
            None => sqlx::query(
                "UPDATE chunks SET delivered = delivered + ?, duplicate = duplicate + ?, \
                 rejected = rejected + ?, out_of_window = out_of_window + ?, updated_ms = ? WHERE id = ?",
            ),
        };
        q.bind(c.delivered)
            .bind(c.duplicate)
            .bind(c.rejected)
            .bind(c.out_of_window)
            .bind(ms(now))
            .bind(chunk_id)
            .execute(&mut *tx)
            .await?;
        if let Some((path, offset)) = page.sink_offset {
            sqlx::query(
                "INSERT INTO sink_offsets (feed, path, committed, updated_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (feed) DO UPDATE SET path = ?2, committed = ?3, updated_ms = ?4",
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

    /// The committed length of a feed's file sink output, if it wrote to `path`.
    pub async fn sink_offset(&self, feed: &str, path: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT committed FROM sink_offsets WHERE feed = ? AND path = ?")
                .bind(feed)
                .bind(path)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }

    /// Seconds of the feed's gaps not recovered yet: gaps still to fill (or
    /// without backfill) minus what their finished chunks cover.
    pub async fn unfilled_seconds(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<f64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(MAX(0, (COALESCE(g.end_ms, ?2) - g.start_ms) - COALESCE(( \
                 SELECT SUM(MAX(0, MIN(c.end_ms, COALESCE(g.end_ms, ?2)) - MAX(c.start_ms, g.start_ms))) \
                 FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done'), 0))) \
             FROM gaps g WHERE g.feed = ?1 AND g.fill NOT IN ('done', 'ignored') AND g.owner <> 'audit'",
        )
        .bind(feed)
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(v.unwrap_or(0).max(0) as f64 / 1000.0)
    }

    /// A chunk attempt failed; it is retried at `next_attempt` unless `give_up`.
    pub async fn fail_chunk(
        &self,
        chunk_id: i64,
        error: &str,
        next_attempt: DateTime<Utc>,
        give_up: bool,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let attempts: i64 = sqlx::query_scalar(
            "UPDATE chunks SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt_ms = ?, \
             updated_ms = ? WHERE id = ? RETURNING attempts",
        )
        .bind(if give_up { "failed" } else { "pending" })
        .bind(error)
        .bind(ms(next_attempt))
        .bind(ms(now))
        .bind(chunk_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(attempts)
    }

    /// Chunk counts by state over the feed's gaps that are still being filled.
    pub async fn chunk_states(&self, feed: &str) -> Result<Vec<(ChunkState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.state, COUNT(*) FROM chunks c JOIN gaps g ON g.id = c.gap_id \
             WHERE g.feed = ? AND g.fill IN ('pending', 'running', 'failed') AND g.owner <> 'audit' GROUP BY c.state",
        )
        .bind(feed)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((ChunkState::from_row(&s)?, n)))
            .collect()
    }

    // === record ids ===

    /// Remembers ids seen live near a gap edge (kept for dedupe).
    pub async fn remember_live(
        &self,
        feed: &str,
        gap_id: Option<i64>,
        ids: &[(String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_ids(&mut tx, feed, ids, "live", gap_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Which of `ids` gapwatch already knows (seen live near an edge, or delivered).
    pub async fn known_ids(&self, feed: &str, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        // SQLite's default limit on bound parameters is 32766; stay far below it.
        for batch in ids.chunks(500) {
            let placeholders = vec!["?"; batch.len()].join(",");
            let sql =
                format!("SELECT id FROM record_ids WHERE feed = ? AND id IN ({placeholders})");
            let mut q = sqlx::query_scalar::<_, String>(&sql).bind(feed);
            for id in batch {
                q = q.bind(*id);
            }
            known.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(known)
    }

    pub async fn ledger_add(
        &self,
        feed: &str,
        origin: Origin,
        ids: &[(String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_ids(&mut tx, feed, ids, origin.as_str(), None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn prune_ledger(&self, feed: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM record_ids WHERE feed = ? AND event_ms < ?")
                .bind(feed)
                .bind(ms(before))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn ledger_size(&self, feed: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = ?")
                .bind(feed)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn audit_state(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<AuditState, StoreError> {
        sqlx::query(
            "INSERT INTO audits (feed, started_ms, updated_ms) VALUES (?1, ?2, ?2) \
             ON CONFLICT (feed) DO NOTHING",
        )
        .bind(feed)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        let r = sqlx::query("SELECT started_ms, verified_until_ms FROM audits WHERE feed = ?")
            .bind(feed)
            .fetch_one(&self.pool)
            .await?;
        Ok(AuditState {
            started: from_ms(r.get("started_ms")),
            verified_until: r.get::<Option<i64>, _>("verified_until_ms").map(from_ms),
        })
    }

    pub async fn verified_until(&self, feed: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let v: Option<Option<i64>> =
            sqlx::query_scalar("SELECT verified_until_ms FROM audits WHERE feed = ?")
                .bind(feed)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.flatten().map(from_ms))
    }

    pub async fn set_verified_until(
        &self,
        feed: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE audits SET verified_until_ms = MAX(COALESCE(verified_until_ms, 0), ?), \
             updated_ms = ? WHERE feed = ?",
        )
        .bind(ms(until))
        .bind(ms(now))
        .bind(feed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_ids(&self, feed: &str, origin: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = ? AND origin = ?")
                .bind(feed)
                .bind(origin)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// Inserts ids in multi-row statements (one statement per 200 ids keeps a
/// 1,000-record page to a handful of round trips).
async fn insert_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    feed: &str,
    ids: &[(String, DateTime<Utc>)],
    origin: &str,
    gap_id: Option<i64>,
) -> Result<(), StoreError> {
    for batch in ids.chunks(200) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO record_ids (feed, id, event_ms, origin, gap_id) ",
        );
        qb.push_values(batch, |mut b, (id, t)| {
            b.push_bind(feed)
                .push_bind(id)
                .push_bind(ms(*t))
                .push_bind(origin)
                .push_bind(gap_id);
        });
        qb.push(" ON CONFLICT (feed, id) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn gap_from_row(r: &SqliteRow) -> Result<Gap, StoreError> {
    let kind: String = r.get("kind");
    let state: String = r.get("state");
    let fill: String = r.get("fill");
    Ok(Gap {
        id: r.get("id"),
        feed: r.get("feed"),
        kind: GapKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("gap kind {kind}")))?,
        state: GapState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("gap state {state}")))?,
        start: from_ms(r.get("start_ms")),
        end: r.get::<Option<i64>, _>("end_ms").map(from_ms),
        detected_at: from_ms(r.get("detected_ms")),
        closed_at: r.get::<Option<i64>, _>("closed_ms").map(from_ms),
        fill: FillState::parse(&fill).ok_or_else(|| StoreError::Corrupt(format!("fill {fill}")))?,
        last_error: r.get("last_error"),
        progress: Progress {
            chunks_total: r.get("chunks_total"),
            chunks_done: r.get("chunks_done"),
            chunks_failed: r.get("chunks_failed"),
            pages: r.get("pages"),
            records_delivered: r.get("delivered"),
            records_duplicate: r.get("duplicate"),
            records_rejected: r.get("rejected"),
            records_out_of_window: r.get("out_of_window"),
        },
    })
}
