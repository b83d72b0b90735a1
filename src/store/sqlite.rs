//! The SQLite backend: one replica, the embedded default. Its queries are
//! the shared ones in `sql.rs`; here are how it opens, its dialect, and the
//! one-writer forms of what Postgres coordinates between replicas.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::Sqlite;

use super::sql::{Dialect, Sql};
use super::{ms, Chunk, FenceArg, StoreError};

/// The SQLite store: one replica. Cheap to clone (a pool handle).
pub(crate) type SqliteStore = Sql<Sqlite>;

impl Dialect for Sqlite {
    const GREATEST: &'static str = "MAX";
    const LEAST: &'static str = "MIN";
    // One connection, one writer: nothing to lock against.
    const FOR_UPDATE: &'static str = "";
    const RENEW_CLAIM: &'static str = "";

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// One writer: a SQLite file's leases are always held.
    async fn check_fence(
        _tx: &mut SqliteConnection,
        _feed: &str,
        _fence: FenceArg<'_>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Multi-row statements: one per 200 ids keeps a 1,000-record page to a
    /// handful of round trips.
    async fn insert_ids(
        tx: &mut SqliteConnection,
        feed: &str,
        ids: &[(String, DateTime<Utc>)],
        origin: &str,
        gap_id: Option<i64>,
    ) -> Result<(), StoreError> {
        for batch in ids.chunks(200) {
            let mut qb = sqlx::QueryBuilder::<Sqlite>::new(
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
            qb.build().execute(&mut *tx).await?;
        }
        Ok(())
    }

    async fn known_ids(
        pool: &SqlitePool,
        feed: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        // SQLite's default limit on bound parameters is 32766; stay far below it.
        for batch in ids.chunks(500) {
            let mut qb =
                sqlx::QueryBuilder::<Sqlite>::new("SELECT id FROM record_ids WHERE feed = ");
            qb.push_bind(feed).push(" AND id IN (");
            let mut list = qb.separated(", ");
            for id in batch {
                list.push_bind(*id);
            }
            qb.push(")");
            known.extend(qb.build_query_scalar::<String>().fetch_all(pool).await?);
        }
        Ok(known)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub(super) async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
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
    #[cfg(test)]
    pub(super) async fn memory() -> Result<SqliteStore, StoreError> {
        let options = <SqliteConnectOptions as std::str::FromStr>::from_str("sqlite::memory:")?;
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        let pool = SqlitePoolOptions::new()
            // One writer at a time is what SQLite does anyway; a single connection
            // also keeps an in-memory database shared.
            .max_connections(1)
            // A local file does not drop connections: the default ping before
            // every acquire was one more hop to SQLite's thread per query and
            // per transaction (a fifth of a fill's per-batch commit).
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Sql { pool })
    }

    // === one writer ===

    /// One writer: a claim is just the move to `running` (a crash's leftovers
    /// are reset at start by [`SqliteStore::reset_running`]).
    pub(super) async fn claim_chunks(
        &self,
        gap_id: i64,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Chunk>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE chunks SET state = 'running', updated_ms = $2 WHERE id IN ( \
               SELECT id FROM chunks WHERE gap_id = $1 AND state = 'pending' \
               AND next_attempt_ms <= $2 ORDER BY idx LIMIT $3) RETURNING id",
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

    /// Chunks left `running` by a crash go back to `pending` (nobody else can
    /// be running them); their checkpoint stays.
    pub(super) async fn reset_running(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE chunks SET state = 'pending', updated_ms = $1 WHERE state = 'running' \
             AND gap_id IN (SELECT id FROM gaps WHERE feed = $2)",
        )
        .bind(ms(now))
        .bind(feed)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
