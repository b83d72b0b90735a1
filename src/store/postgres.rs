//! The Postgres backend: shared by every replica. Its queries are the shared
//! ones in `sql.rs`; here are how it connects, its dialect, and what only
//! replicas sharing one database need: leases and fenced chunk claims.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::Postgres;

use super::sql::{Dialect, Sql, CHUNK_COLUMNS};
use super::{ms, Chunk, FenceArg, LeaseInfo, StoreError};

/// The Postgres store: shared by every replica. Cheap to clone (a pool handle).
pub(crate) type PgStore = Sql<Postgres>;

/// Connections per replica: the feed monitors, fillers and the API share them,
/// and a handful keeps N replicas far below `max_connections`.
const POOL_SIZE: u32 = 5;

/// The database's clock in Unix milliseconds: claims and leases never use a
/// replica's own clock.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT";

impl Dialect for Postgres {
    const GREATEST: &'static str = "GREATEST";
    const LEAST: &'static str = "LEAST";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    // Each checkpoint renews the chunk's claim.
    const RENEW_CLAIM: &'static str =
        ", claim_until_ms = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT + claim_ms";

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn check_fence(
        tx: &mut PgConnection,
        feed: &str,
        fence: FenceArg<'_>,
    ) -> Result<(), StoreError> {
        let Some((replica, token)) = fence else {
            return Ok(());
        };
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
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced(feed.to_string())),
        }
    }

    /// Inserts ids as two arrays: one statement and one round trip per page.
    async fn insert_ids(
        tx: &mut PgConnection,
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
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn known_ids(
        pool: &PgPool,
        feed: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        for batch in ids.chunks(5000) {
            known.extend(
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM record_ids WHERE feed = $1 AND id = ANY($2)",
                )
                .bind(feed)
                .bind(batch)
                .fetch_all(pool)
                .await?,
            );
        }
        Ok(known)
    }
}

impl PgStore {
    /// Connects and applies migrations (concurrent replicas serialize on
    /// sqlx's advisory lock).
    pub(super) async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            // Fail fast while the database is away: callers retry on their own
            // schedule and readiness must report it.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("gapwatch"))
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Sql { pool })
    }

    // === coordination ===

    pub(super) async fn acquire_lease(
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

    pub(super) async fn claim_chunks(
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
        let mut chunks: Vec<Chunk> = rows
            .iter()
            .map(Self::chunk_from_row)
            .collect::<Result<_, _>>()?;
        chunks.sort_by_key(|c| c.idx);
        Ok(chunks)
    }

    /// Only chunks whose claim lapsed: another replica may be running the rest.
    pub(super) async fn reset_running(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
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
}
