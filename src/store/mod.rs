//! Durable state: feeds' newest event, gaps, fill chunks with their page
//! checkpoints, and the record ids that must not be delivered twice.
//!
//! SQLite through sqlx; the schema lives in `migrations/` and is applied on open.

mod sqlite;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

pub use sqlite::Store;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state store: cannot create directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("state store: corrupt row: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    Detected,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapState {
    Open,
    Closed,
}

/// Where a gap's recovery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FillState {
    /// The feed has no backfill configured.
    None,
    Pending,
    Running,
    Done,
    Failed,
    Ignored,
}

macro_rules! str_enum {
    ($t:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($t::$v),)+ _ => None }
            }
        }
    };
}
str_enum!(GapKind { Detected => "detected", Manual => "manual" });
str_enum!(GapState { Open => "open", Closed => "closed" });
str_enum!(FillState {
    None => "none",
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
    Ignored => "ignored",
});

/// A gap with the progress of its fill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gap {
    pub id: i64,
    pub feed: String,
    pub kind: GapKind,
    pub state: GapState,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub detected_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub fill: FillState,
    pub last_error: Option<String>,
    pub progress: Progress,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub chunks_total: i64,
    pub chunks_done: i64,
    pub chunks_failed: i64,
    pub pages: i64,
    pub records_delivered: i64,
    pub records_duplicate: i64,
    pub records_rejected: i64,
    /// Records a page carried outside its chunk's window (not delivered by
    /// that chunk: the neighbouring window's query covers them).
    pub records_out_of_window: i64,
}

/// One chunk of a fill: the half-open window `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: i64,
    pub gap_id: i64,
    pub idx: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub state: String,
    /// The serialized page cursor to resume from (None: first page).
    pub cursor: Option<String>,
    pub attempts: i64,
    pub next_attempt: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct GapFilter {
    pub feed: Option<String>,
    /// A gap state (`open`, `closed`) or a fill state (`running`, `failed`, …).
    pub state: Option<String>,
    pub limit: Option<i64>,
}

/// Counts of one delivered page, committed with its checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    pub delivered: i64,
    pub duplicate: i64,
    pub rejected: i64,
    pub out_of_window: i64,
}

/// Where a chunk's paging goes after a page was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint<'a> {
    /// The next page starts at this serialized cursor.
    Next(&'a str),
    /// That was the chunk's last page.
    Done,
    /// The page could not be finished (the sink failed part-way): what was
    /// delivered counts and is never sent again, the cursor stays.
    Stay,
}

/// One page's outcome, committed with its checkpoint in one transaction.
#[derive(Clone, Copy, Debug)]
pub struct PageCommit<'a> {
    pub delivered: &'a [(String, DateTime<Utc>)],
    pub counts: PageCounts,
    pub checkpoint: Checkpoint<'a>,
    /// File sinks: the output file's length once this page is in it.
    pub sink_offset: Option<(&'a str, u64)>,
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
