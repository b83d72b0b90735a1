//! Figure 10: the state store, SQLite next to Postgres. The same fill (same
//! vendor history, same records, file sink) runs once with `state.url` on a
//! SQLite file and once on a throwaway Postgres cluster started here the way
//! the tests start theirs; then each daemon takes `gaps` small manual
//! backfills. Rows and bytes are read from the databases themselves before and
//! after: SQLite's `dbstat` (pages of each table and its indexes), Postgres'
//! `pg_total_relation_size` (table, indexes and TOAST).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgPool, SqlitePool};

use crate::fill::{self, check_file, config_with_state, cpu_note, rfc3339, FillSpec, History};
use crate::peers::{Env, Gapwatch};
use crate::pg_cluster::PgCluster;
use crate::procfs;
use crate::table::{thousands, Figure};

/// The tables whose size is measured.
const TABLES: [&str; 3] = ["record_ids", "gaps", "chunks"];

/// Chunks per fill of the throughput figure (as in figure 2).
const FILL_CHUNKS: u32 = 24;
/// Chunks of each small backfill of the per-gap figure.
const GAP_CHUNKS: i64 = 4;

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Rows and bytes of each measured table (with its indexes) at one moment.
#[derive(Default, Clone)]
struct Usage {
    rows: HashMap<&'static str, i64>,
    bytes: HashMap<&'static str, i64>,
}

impl Usage {
    fn delta(&self, before: &Usage, table: &str) -> (i64, i64) {
        (
            self.rows[table] - before.rows[table],
            self.bytes[table] - before.bytes[table],
        )
    }
}

impl Db {
    async fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        for t in TABLES {
            let count = format!("SELECT COUNT(*) FROM {t}");
            let (rows, bytes): (i64, i64) = match self {
                Db::Sqlite(pool) => {
                    // Every b-tree page of the table and of its indexes (a
                    // WITHOUT ROWID table's primary key is the table itself).
                    let bytes: Option<i64> = sqlx::query_scalar(
                        "SELECT SUM(d.pgsize) FROM dbstat d \
                         JOIN sqlite_master m ON m.name = d.name WHERE m.tbl_name = ?",
                    )
                    .bind(t)
                    .fetch_one(pool)
                    .await
                    .context("dbstat (SQLite built with SQLITE_ENABLE_DBSTAT_VTAB)")?;
                    let rows: i64 = sqlx::query_scalar(&count).fetch_one(pool).await?;
                    (rows, bytes.unwrap_or(0))
                }
                Db::Postgres(pool) => {
                    let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size($1)")
                        .bind(t)
                        .fetch_one(pool)
                        .await?;
                    let rows: i64 = sqlx::query_scalar(&count).fetch_one(pool).await?;
                    (rows, bytes)
                }
            };
            u.rows.insert(t, rows);
            u.bytes.insert(t, bytes);
        }
        Ok(u)
    }

    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            Db::Postgres(_) => "Postgres",
        }
    }
}

/// What one backend measured.
struct Measured {
    backend: &'static str,
    fill: fill::FillResult,
    /// Rows and bytes in `record_ids` per delivered record.
    id_rows: f64,
    id_bytes: f64,
    /// Per small backfill: gap rows, chunk rows, bytes of `gaps`, of `chunks`.
    gap_rows: f64,
    chunk_rows: f64,
    gap_bytes: f64,
    chunk_bytes: f64,
    /// CPU of the database server during the fill (Postgres).
    server_cpu: Option<f64>,
}

/// Figure 10 for both backends over the same `n` records of `history`.
/// Then the bytes per id again with 36-character ids, over `long_n` records.
pub async fn backends(
    env: &Env,
    history: &History,
    n: u64,
    gaps: i64,
    long_n: u64,
) -> Result<Vec<Figure>> {
    let cluster = tokio::task::spawn_blocking(PgCluster::start_durable)
        .await
        .map_err(|e| anyhow!("cannot start a Postgres cluster: {}", panic_text(e)))?;
    let pg_url = new_database(&cluster)?;
    let sqlite_dir = env.dir("state-sqlite")?;
    let sqlite_url = format!("sqlite://{}/state.db", sqlite_dir.display());

    let postmaster = postmaster_pid(&cluster)?;
    let mut measured = Vec::new();
    for (name, url, server) in [
        ("state-sqlite", sqlite_url, None),
        ("state-postgres", pg_url.clone(), Some(postmaster)),
    ] {
        measured.push(one(env, history, n, gaps, name, &url, server).await?);
    }
    let mut figures = figures(&measured, n, gaps);

    // Ids as long as a UUID (36 characters), from a vendor of their own; in
    // a database of their own on each backend.
    let long = History::start_with(
        env,
        "vendor-long-ids",
        long_n,
        "24h",
        &["--prefix".into(), LONG_PREFIX.into()],
    )
    .await?;
    let sqlite_dir = env.dir("state-sqlite-long")?;
    let sqlite_url = format!("sqlite://{}/state.db", sqlite_dir.display());
    let pg_url = new_database(&cluster)?;
    let mut long_ids = Vec::new();
    for (name, url) in [
        ("state-sqlite-long", sqlite_url),
        ("state-postgres-long", pg_url),
    ] {
        long_ids.push(one(env, &long, long_n, 0, name, &url, None).await?);
    }
    figures.push(id_figure(&long_ids, 36));
    drop(cluster);
    Ok(figures)
}

/// `LONG_PREFIX-000000000001`: 36 characters, a UUID's length.
const LONG_PREFIX: &str = "evt-0000-0000-0000-0000";

fn new_database(cluster: &PgCluster) -> Result<String> {
    // psql is a short blocking call.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.new_database()))
        .map_err(|e| anyhow!("create a bench database: {}", panic_message(&*e)))
}

async fn one(
    env: &Env,
    history: &History,
    n: u64,
    gaps: i64,
    name: &str,
    url: &str,
    server: Option<u32>,
) -> Result<Measured> {
    let dir = env.dir(name)?;
    let path = dir.join("recovered.ndjson");
    let (from, to) = history.interval(n);
    let spec = FillSpec {
        name,
        from,
        to,
        chunks: FILL_CHUNKS,
        concurrency: 2,
        page: 1000,
        rate_limit: "100000/s",
        sink: format!("    type = \"file\"\n    path = \"{}\"", path.display()),
        aws: None,
    };
    let mut gw = Gapwatch::start(
        env,
        &dir,
        "gapwatch",
        &config_with_state(url, &history.sim.base, &spec),
    )
    .await?;
    // The fill starts once this replica holds the feed's lease (at once on
    // SQLite, after the first renewal round on Postgres): not part of the fill.
    wait_leader(&mut gw, name).await?;
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(dir.join("state.db"))
                        .read_only(true),
                )
                .await?,
        )
    } else {
        Db::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?,
        )
    };
    let before = db.usage().await?;
    let server_cpu = || server.map(procfs::tree_cpu_seconds).transpose();
    let server_cpu0 = server_cpu()?;
    let fill = fill::fill_in(&mut gw, &history.sim, &spec).await?;
    let server_cpu = server_cpu()?.zip(server_cpu0).map(|(b, a)| b - a);
    check_file(&path, fill.expected)?;
    let filled = db.usage().await?;
    let (id_rows, id_bytes) = filled.delta(&before, "record_ids");

    let per = |v: i64, of: i64| v as f64 / of.max(1) as f64;
    let mut m = Measured {
        backend: db.name(),
        id_rows: per(id_rows, fill.delivered),
        id_bytes: per(id_bytes, fill.delivered),
        gap_rows: 0.0,
        chunk_rows: 0.0,
        gap_bytes: 0.0,
        chunk_bytes: 0.0,
        server_cpu,
        fill,
    };
    if gaps == 0 {
        return Ok(m);
    }
    // Small backfills before the vendor's history: each is planned in
    // GAP_CHUNKS chunks that find no records, so they add gaps and chunks only.
    let chunk_ms = (to - from).num_milliseconds().max(1) / i64::from(FILL_CHUNKS) + 1;
    let span = chunk_ms * GAP_CHUNKS - chunk_ms / 2;
    let base = history.first - chrono::Duration::milliseconds(2 * span * (gaps + 1));
    for i in 0..gaps {
        let start = base + chrono::Duration::milliseconds(2 * span * i);
        let end = start + chrono::Duration::milliseconds(span);
        backfill(&gw, name, start, end).await?;
    }
    wait_done(&mut gw, name, gaps as usize).await?;
    let after = db.usage().await?;
    let (gap_rows, gap_bytes) = after.delta(&filled, "gaps");
    let (chunk_rows, chunk_bytes) = after.delta(&filled, "chunks");
    if after.rows["record_ids"] != filled.rows["record_ids"] {
        bail!("{name}: the empty backfills added record ids");
    }
    m.gap_rows = per(gap_rows, gaps);
    m.chunk_rows = per(chunk_rows, gaps);
    m.gap_bytes = per(gap_bytes, gaps);
    m.chunk_bytes = per(chunk_bytes, chunk_rows);
    Ok(m)
}

async fn backfill(gw: &Gapwatch, feed: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<()> {
    let v = gw
        .post(
            "/api/v1/backfills",
            json!({ "feed": feed, "from": rfc3339(from), "to": rfc3339(to) }),
        )
        .await?;
    v["gap_id"]
        .as_i64()
        .map(drop)
        .with_context(|| format!("backfill answer: {v}"))
}

async fn wait_leader(gw: &mut Gapwatch, feed: &str) -> Result<()> {
    let line = format!("gapwatch_feed_leader{{feed=\"{feed}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        gw.check_alive()?;
        if gw.metrics().await?.lines().any(|l| l == line) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{feed}: this replica never took the feed's lease");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until the feed lists `want` gaps besides the big fill, all done.
async fn wait_done(gw: &mut Gapwatch, feed: &str, want: usize) -> Result<()> {
    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(200) * want as u32;
    loop {
        gw.check_alive()?;
        let v = gw
            .get(&format!("/api/v1/gaps?feed={feed}&limit=10000"))
            .await?;
        let gaps = v["gaps"].as_array().context("gaps list")?;
        if let Some(g) = gaps.iter().find(|g| g["fill"] == "failed") {
            bail!("{feed}: a backfill failed: {g}");
        }
        let done = gaps.iter().filter(|g| g["fill"] == "done").count();
        if done > want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{feed}: {done} of {} fills done", want + 1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn figures(m: &[Measured], n: u64, gaps: i64) -> Vec<Figure> {
    let rate = |r: &fill::FillResult| r.delivered as f64 / r.secs;
    let (sqlite, pg) = (&m[0], &m[1]);
    let mut out = vec![Figure::new(
        &format!(
            "10. fill throughput, file sink, {} records: state in SQLite vs Postgres",
            thousands(n as f64)
        ),
        format!(
            "SQLite {} records/s ({:.2} s); Postgres {} records/s ({:.2} s) = {:.2} × SQLite",
            thousands(rate(&sqlite.fill)),
            sqlite.fill.secs,
            thousands(rate(&pg.fill)),
            pg.fill.secs,
            rate(&pg.fill) / rate(&sqlite.fill)
        ),
        "—",
        format!(
            "the same POST /api/v1/backfills over the same vendor-sim records ({FILL_CHUNKS} chunks, limit=1000, \
             concurrency 2, file sink; file checked: each id once), one daemon per backend: SQLite file \
             (WAL, synchronous=FULL) vs a local Postgres cluster started by the bench (fsync on, the \
             server's defaults, 5 connections); SQLite: {}; Postgres: {}, the Postgres server {:.2} CPU-s",
            cpu_note(&sqlite.fill),
            cpu_note(&pg.fill),
            pg.server_cpu.unwrap_or(f64::NAN)
        ),
    )];
    out.push(id_figure(m, 16));
    let gap = |x: &Measured| {
        format!(
            "{}: {:.0} gap row + {:.1} chunk rows, {:.0} bytes + {:.0} bytes per chunk",
            x.backend, x.gap_rows, x.chunk_rows, x.gap_bytes, x.chunk_bytes
        )
    };
    out.push(Figure::new(
        "10. state per gap",
        format!("{}; {}", gap(sqlite), gap(pg)),
        "—",
        format!(
            "{gaps} manual backfills of {GAP_CHUNKS} chunks each, filled to done (no records in their \
             windows), rows and bytes of gaps and chunks (tables + indexes) after minus before, per gap \
             and per chunk"
        ),
    ));
    out
}

/// The server's process id: the first line of its `postmaster.pid`.
fn postmaster_pid(cluster: &PgCluster) -> Result<u32> {
    let path = cluster.dir().join("data").join("postmaster.pid");
    std::fs::read_to_string(&path)
        .with_context(|| format!("read {}", path.display()))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{}: no process id", path.display()))
}

/// Rows and bytes per ledger id on each backend, ids of `len` characters.
fn id_figure(m: &[Measured], len: usize) -> Figure {
    let ids = |x: &Measured| {
        format!(
            "{}: {:.2} row, {:.0} bytes",
            x.backend, x.id_rows, x.id_bytes
        )
    };
    Figure::new(
        &format!("10. state per delivered record (ledger / record id), {len}-character ids"),
        format!("{}; {}", ids(&m[0]), ids(&m[1])),
        "—",
        format!(
            "record_ids rows and bytes (table + indexes) after the fill minus before, over {} delivered \
             ids of {len} characters (in sequence, as vendor-sim numbers them); SQLite: dbstat pages, \
             Postgres: pg_total_relation_size; as written, no VACUUM",
            thousands(m[0].fill.delivered as f64)
        ),
    )
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => panic_message(&*p),
        Err(e) => e.to_string(),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
