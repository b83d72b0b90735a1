use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::{
    from_ms, ms, AuditState, Checkpoint, Chunk, ChunkState, FenceArg, FillState, Gap, GapFilter,
    GapKind, GapState, LeaseInfo, Origin, PageCommit, Progress, StoreError,
};
use crate::detector::DetectorState;

/// The Postgres store: shared by every replica. Cheap to clone (a pool handle).
#[derive(Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
}

/// Connections per replica: the feed monitors, fillers and the API share them,
/// and a handful keeps N replicas far below `max_connections`.
const POOL_SIZE: u32 = 5;

/// The database's clock in Unix milliseconds: claims and leases never use a
/// replica's own clock.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT";

const CHUNK_COLUMNS: &str =
    "id, gap_id, idx, start_ms, end_ms, state, cursor, attempts, next_attempt_ms, last_error";

const GAP_COLUMNS: &str = "g.id, g.feed, g.kind, g.state, g.start_ms, g.end_ms, g.detected_ms, \
     g.closed_ms, g.fill, g.last_error, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id) AS chunks_total, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done') AS chunks_done, \
     (SELECT COUNT(*) FROM chunks c WHERE c.gap_id = g.id AND c.state = 'failed') AS chunks_failed, \
     (SELECT COALESCE(SUM(pages), 0)::BIGINT FROM chunks c WHERE c.gap_id = g.id) AS pages, \
     (SELECT COALESCE(SUM(delivered), 0)::BIGINT FROM chunks c WHERE c.gap_id = g.id) AS delivered, \
     (SELECT COALESCE(SUM(duplicate), 0)::BIGINT FROM chunks c WHERE c.gap_id = g.id) AS duplicate, \
     (SELECT COALESCE(SUM(rejected), 0)::BIGINT FROM chunks c WHERE c.gap_id = g.id) AS rejected, \
     (SELECT COALESCE(SUM(out_of_window), 0)::BIGINT FROM chunks c WHERE c.gap_id = g.id) AS out_of_window";

impl PgStore {
    /// Connects and applies migrations (concurrent replicas serialize on
    /// sqlx's advisory lock).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            // Fail fast while the database is away: callers retry on their own
            // schedule and readiness must report it.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("gapwatch"))
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // === feeds ===

    pub async fn detector_state(&self, feed: &str) -> Result<DetectorState, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_event_ms FROM feeds WHERE name = $1")
                .bind(feed)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT start_ms FROM gaps WHERE feed = $1 AND state = 'open' AND kind = 'detected'",
        )
        .bind(feed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(DetectorState {
            last_event: last.map(from_ms),
            open_gap_start: open.map(from_ms),
        })
    }

    pub async fn save_last_event(
        &self,
        feed: &str,
        last_event: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO feeds (name, last_event_ms, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET \
               last_event_ms = GREATEST(COALESCE(feeds.last_event_ms, $2), $2), updated_ms = $3",
        )
        .bind(feed)
        .bind(ms(last_event))
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn repair_last_event(
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

    // === gaps ===

    pub async fn open_gap(
        &self,
        feed: &str,
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
        fill: FillState,
    ) -> Result<i64, StoreError> {
        // The partial unique index makes a concurrent second insert a no-op.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO gaps (feed, kind, state, start_ms, detected_ms, fill, updated_ms) \
             VALUES ($1, 'detected', 'open', $2, $3, $4, $3) \
             ON CONFLICT (feed) WHERE state = 'open' AND kind = 'detected' DO NOTHING RETURNING id",
        )
        .bind(feed)
        .bind(ms(start))
        .bind(ms(detected_at))
        .bind(fill.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(id) => Ok(id),
            None => Ok(sqlx::query_scalar(
                "SELECT id FROM gaps WHERE feed = $1 AND state = 'open' AND kind = 'detected'",
            )
            .bind(feed)
            .fetch_one(&self.pool)
            .await?),
        }
    }

    pub async fn close_gap(
        &self,
        feed: &str,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE gaps SET state = 'closed', end_ms = $1, closed_ms = $2, updated_ms = $2 \
             WHERE feed = $3 AND state = 'open' AND kind = 'detected' RETURNING id",
        )
        .bind(ms(end))
        .bind(ms(now))
        .bind(feed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn manual_gap(
        &self,
        feed: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO gaps (feed, kind, state, start_ms, end_ms, detected_ms, closed_ms, fill, owner, updated_ms) \
             VALUES ($1, 'manual', 'closed', $2, $3, $4, $4, 'pending', $5, $4) RETURNING id",
        )
        .bind(feed)
        .bind(ms(from))
        .bind(ms(to))
        .bind(ms(now))
        .bind(owner)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn set_fill(
        &self,
        gap_id: i64,
        fill: FillState,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE gaps SET fill = $1, last_error = $2, updated_ms = $3 WHERE id = $4",
        )
        .bind(fill.as_str())
        .bind(error)
        .bind(ms(now))
        .bind(gap_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn retry_gap(&self, gap_id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE gaps SET fill = 'pending', last_error = NULL, owner = 'daemon', updated_ms = $1 \
             WHERE id = $2 AND fill != 'none'",
        )
        .bind(ms(now))
        .bind(gap_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE chunks SET state = 'pending', attempts = 0, next_attempt_ms = 0, updated_ms = $1 \
             WHERE gap_id = $2 AND state IN ('failed', 'running')",
        )
        .bind(ms(now))
        .bind(gap_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn gap(&self, id: i64) -> Result<Option<Gap>, StoreError> {
        let sql = format!("SELECT {GAP_COLUMNS} FROM gaps g WHERE g.id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| gap_from_row(&r)).transpose()
    }

    pub async fn gaps(&self, filter: &GapFilter) -> Result<Vec<Gap>, StoreError> {
        let sql = format!(
            "SELECT {GAP_COLUMNS} FROM gaps g \
             WHERE ($1::TEXT IS NULL OR g.feed = $1) \
               AND ($2::TEXT IS NULL OR g.state = $2 OR g.fill = $2) \
               AND g.owner <> 'audit' \
             ORDER BY g.id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.feed.as_deref())
            .bind(filter.state.as_deref())
            .bind(filter.limit.unwrap_or(1000))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(gap_from_row).collect()
    }

    pub async fn gaps_to_fill(&self, feed: &str, owner: &str) -> Result<Vec<Gap>, StoreError> {
        let sql = format!(
            "SELECT {GAP_COLUMNS} FROM gaps g \
             WHERE g.feed = $1 AND g.owner = $2 AND g.fill IN ('pending', 'running') ORDER BY g.id"
        );
        let rows = sqlx::query(&sql)
            .bind(feed)
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(gap_from_row).collect()
    }

    // === chunks ===

    pub async fn add_chunks(
        &self,
        gap_id: i64,
        windows: &[(DateTime<Utc>, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let starts: Vec<i64> = windows.iter().map(|(s, _)| ms(*s)).collect();
        let ends: Vec<i64> = windows.iter().map(|(_, e)| ms(*e)).collect();
        let mut tx = self.pool.begin().await?;
        // Appends from two planners at once would race on `idx`: the gap row lock
        // orders them.
        sqlx::query("SELECT id FROM gaps WHERE id = $1 FOR UPDATE")
            .bind(gap_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO chunks (gap_id, idx, start_ms, end_ms, updated_ms) \
             SELECT $1, base.next + w.ord - 1, w.s, w.e, $4 \
             FROM (SELECT COALESCE(MAX(idx) + 1, 0) AS next FROM chunks WHERE gap_id = $1) base, \
                  UNNEST($2::BIGINT[], $3::BIGINT[]) WITH ORDINALITY AS w(s, e, ord)",
        )
        .bind(gap_id)
        .bind(&starts)
        .bind(&ends)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn chunks(&self, gap_id: i64) -> Result<Vec<Chunk>, StoreError> {
        let sql = format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE gap_id = $1 ORDER BY idx");
        let rows = sqlx::query(&sql).bind(gap_id).fetch_all(&self.pool).await?;
        rows.iter().map(chunk_from_row).collect()
    }

    // === coordination ===

    pub async fn acquire_lease(
        &self,
        feed: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<LeaseInfo, StoreError> {
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases AS l (feed, holder, token, expires_at) \
             VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
             ON CONFLICT (feed) DO UPDATE SET holder = EXCLUDED.holder, \
               token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() \
                            THEN l.token ELSE l.token + 1 END, \
               expires_at = EXCLUDED.expires_at \
             WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now() \
             RETURNING token",
        )
        .bind(feed)
        .bind(replica)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(token) = token {
            return Ok(LeaseInfo {
                holder: replica.to_string(),
                token,
                mine: true,
            });
        }
        let (holder, token): (String, i64) =
            sqlx::query_as("SELECT holder, token FROM leases WHERE feed = $1")
                .bind(feed)
                .fetch_one(&self.pool)
                .await?;
        Ok(LeaseInfo {
            mine: holder == replica,
            holder,
            token,
        })
    }

    pub async fn claim_chunks(
        &self,
        feed: &str,
        gap_id: i64,
        now: DateTime<Utc>,
        claim: Duration,
        limit: i64,
        fence: FenceArg<'_>,
    ) -> Result<Vec<Chunk>, StoreError> {
        let (replica, token) = fence.map_or((None, None), |(r, t)| (Some(r), Some(t)));
        let sql = format!(
            "UPDATE chunks SET state = 'running', claimed_by = $4, claim_ms = $5, \
               claim_until_ms = {DB_NOW_MS} + $5, updated_ms = $2 \
             WHERE id IN ( \
               SELECT id FROM chunks WHERE gap_id = $1 AND ( \
                 (state = 'pending' AND next_attempt_ms <= $2) \
                 OR (state = 'running' AND COALESCE(claim_until_ms, 0) < {DB_NOW_MS})) \
               ORDER BY idx LIMIT $3 FOR UPDATE SKIP LOCKED) \
             AND ($4::TEXT IS NULL OR EXISTS (SELECT 1 FROM leases \
               WHERE feed = $6 AND holder = $4 AND token = $7 AND expires_at > now())) \
             RETURNING {CHUNK_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(gap_id)
            .bind(ms(now))
            .bind(limit)
            .bind(replica)
            .bind(i64::try_from(claim.as_millis()).unwrap_or(i64::MAX))
            .bind(feed)
            .bind(token)
            .fetch_all(&self.pool)
            .await?;
        let mut chunks: Vec<Chunk> = rows.iter().map(chunk_from_row).collect::<Result<_, _>>()?;
        chunks.sort_by_key(|c| c.idx);
        Ok(chunks)
    }

    pub async fn start_chunk(&self, chunk_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE chunks SET state = 'running', updated_ms = $1 WHERE id = $2")
            .bind(ms(now))
            .bind(chunk_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Only chunks whose claim lapsed: another replica may be running the rest.
    pub async fn reset_running(&self, feed: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE chunks SET state = 'pending', claimed_by = NULL, updated_ms = $1 \
             WHERE state = 'running' AND COALESCE(claim_until_ms, 0) < {DB_NOW_MS} \
             AND gap_id IN (SELECT id FROM gaps WHERE feed = $2)"
        );
        let n = sqlx::query(&sql)
            .bind(ms(now))
            .bind(feed)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    pub async fn commit_page(
        &self,
        feed: &str,
        chunk_id: i64,
        gap_id: i64,
        page: PageCommit<'_>,
        now: DateTime<Utc>,
        fence: FenceArg<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some((replica, token)) = fence {
            // The row lock holds a takeover back until this commit is done.
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT token FROM leases WHERE feed = $1 AND holder = $2 AND token = $3 \
                 AND expires_at > now() FOR SHARE",
            )
            .bind(feed)
            .bind(replica)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Err(StoreError::Fenced(feed.to_string()));
            }
        }
        insert_ids(&mut tx, feed, page.delivered, "delivered", Some(gap_id)).await?;
        let c = page.counts;
        let advance = match page.checkpoint {
            Checkpoint::Next(cursor) => Some((Some(cursor), "running")),
            Checkpoint::Done => Some((None, "done")),
            Checkpoint::Stay => None,
        };
        let q = match advance {
            Some(_) => sqlx::query(
                "UPDATE chunks SET delivered = delivered + $1, duplicate = duplicate + $2, \
                 rejected = rejected + $3, updated_ms = $4, out_of_window = out_of_window + $6, \
                 cursor = $7, state = $8, pages = pages + 1, attempts = 0, last_error = NULL, \
                 claim_until_ms = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT + claim_ms \
                 WHERE id = $5",
            ),
            None => sqlx::query(
                "UPDATE chunks SET delivered = delivered + $1, duplicate = duplicate + $2, \
                 rejected = rejected + $3, updated_ms = $4, out_of_window = out_of_window + $6 \
                 WHERE id = $5",
            ),
        };
        let q = q
            .bind(c.delivered)
            .bind(c.duplicate)
            .bind(c.rejected)
            .bind(ms(now))
            .bind(chunk_id)
            .bind(c.out_of_window);
        let q = match advance {
            // Each checkpoint renews the chunk's claim.
            Some((cursor, state)) => q.bind(cursor).bind(state),
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

    pub async fn sink_offset(&self, feed: &str, path: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT committed FROM sink_offsets WHERE feed = $1 AND path = $2")
                .bind(feed)
                .bind(path)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }

    pub async fn unfilled_seconds(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<f64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(GREATEST(0, (COALESCE(g.end_ms, $2) - g.start_ms) - COALESCE(( \
                 SELECT SUM(GREATEST(0, LEAST(c.end_ms, COALESCE(g.end_ms, $2)) - GREATEST(c.start_ms, g.start_ms))) \
                 FROM chunks c WHERE c.gap_id = g.id AND c.state = 'done'), 0)))::BIGINT \
             FROM gaps g WHERE g.feed = $1 AND g.fill NOT IN ('done', 'ignored') AND g.owner <> 'audit'",
        )
        .bind(feed)
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(v.unwrap_or(0).max(0) as f64 / 1000.0)
    }

    pub async fn fail_chunk(
        &self,
        chunk_id: i64,
        error: &str,
        next_attempt: DateTime<Utc>,
        give_up: bool,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE chunks SET state = $1, attempts = attempts + 1, last_error = $2, \
             next_attempt_ms = $3, updated_ms = $4 WHERE id = $5 RETURNING attempts",
        )
        .bind(if give_up { "failed" } else { "pending" })
        .bind(error)
        .bind(ms(next_attempt))
        .bind(ms(now))
        .bind(chunk_id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn chunk_states(&self, feed: &str) -> Result<Vec<(ChunkState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.state, COUNT(*) FROM chunks c JOIN gaps g ON g.id = c.gap_id \
             WHERE g.feed = $1 AND g.fill IN ('pending', 'running', 'failed') AND g.owner <> 'audit' GROUP BY c.state",
        )
        .bind(feed)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((ChunkState::from_row(&s)?, n)))
            .collect()
    }

    // === record ids ===

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

    pub async fn known_ids(&self, feed: &str, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        for batch in ids.chunks(5000) {
            known.extend(
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM record_ids WHERE feed = $1 AND id = ANY($2)",
                )
                .bind(feed)
                .bind(batch)
                .fetch_all(&self.pool)
                .await?,
            );
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
            sqlx::query("DELETE FROM record_ids WHERE feed = $1 AND event_ms < $2")
                .bind(feed)
                .bind(ms(before))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn ledger_size(&self, feed: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = $1")
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
            started: from_ms(r.get("started_ms")),
            verified_until: r.get::<Option<i64>, _>("verified_until_ms").map(from_ms),
        })
    }

    pub async fn verified_until(&self, feed: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let v: Option<Option<i64>> =
            sqlx::query_scalar("SELECT verified_until_ms FROM audits WHERE feed = $1")
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
            "UPDATE audits SET verified_until_ms = GREATEST(COALESCE(verified_until_ms, 0), $1), \
             updated_ms = $2 WHERE feed = $3",
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
            sqlx::query_scalar("SELECT COUNT(*) FROM record_ids WHERE feed = $1 AND origin = $2")
                .bind(feed)
                .bind(origin)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// Inserts ids as two arrays: one statement and one round trip per page.
async fn insert_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    feed: &str,
    ids: &[(String, DateTime<Utc>)],
    origin: &str,
    gap_id: Option<i64>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let times: Vec<i64> = ids.iter().map(|(_, t)| ms(*t)).collect();
    sqlx::query(
        "INSERT INTO record_ids (feed, id, event_ms, origin, gap_id) \
         SELECT $1, r.id, r.t, $4, $5 FROM UNNEST($2::TEXT[], $3::BIGINT[]) AS r(id, t) \
         ON CONFLICT (feed, id) DO NOTHING",
    )
    .bind(feed)
    .bind(&names)
    .bind(&times)
    .bind(origin)
    .bind(gap_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn chunk_from_row(r: &PgRow) -> Result<Chunk, StoreError> {
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
}

fn gap_from_row(r: &PgRow) -> Result<Gap, StoreError> {
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
