//! The vendor's record history and the range / pagination arithmetic over it.
//!
//! Pure: no clock, no I/O. A record is 16 bytes (time + a flag); its id, `seq`
//! and payload are derived from its position, so a million records cost 16 MB.
//!
//! Invariants: records are appended in non-decreasing `created_at` order and
//! `seq = index + 1`. Ids are zero-padded so that ordering by `(created_at, id)`
//! is the same as ordering by index; positions (cursors) therefore never move.

use std::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::timefmt::format_millis;

/// Largest page a client may ask for; larger `limit`s are clamped (as most APIs do).
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 100;

/// Width of the zero-padded sequence number in ids.
const SEQ_WIDTH: usize = 12;

/// Cursors scramble the index (xor, then an odd multiplier, invertible mod 2^64)
/// so that clients cannot do arithmetic on them.
const CURSOR_MASK: u64 = 0x5eed_c0de_f00d_cafe;
const CURSOR_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const CURSOR_MUL_INV: u64 = inverse(CURSOR_MUL);

/// Multiplicative inverse of an odd number mod 2^64 (Newton's iteration).
const fn inverse(a: u64) -> u64 {
    let mut x = a;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub created_at_ms: i64,
    /// Created while the feed was silenced: kept and served, never published.
    pub silenced: bool,
    /// Lost on the way to SQS (a lossy vendor): kept and served, never published.
    pub dropped: bool,
}

#[derive(Debug)]
pub struct History {
    prefix: String,
    records: Vec<Record>,
    /// Records belong to stores `s1`…`sN` in turn (record index `i` to store
    /// `i % N`, written `s{i % N + 1}`); 0: no stores, no `store_id` field.
    stores: usize,
}

/// The records of one store among `n`: every `n`th from index `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stride {
    pub k: usize,
    pub n: usize,
}

impl Stride {
    /// The first index at or after `lo` that belongs to the store.
    fn first(self, lo: usize) -> usize {
        lo + (self.k + self.n - lo % self.n) % self.n
    }

    /// How many of the store's indices lie in `[first, i)`.
    fn rank(self, first: usize, i: usize) -> usize {
        if i <= first {
            0
        } else {
            (i - first).div_ceil(self.n)
        }
    }
}

/// Where a page starts, as each pagination style expresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// First page.
    Start,
    /// An index from a cursor (`cursor`, `next_url`, `link_header` styles).
    Index(usize),
    /// Just after the record with this seq (`starting_after=<id>`).
    AfterSeq(u64),
    /// Skip this many records of the range (`page`, `offset` styles).
    Skip(usize),
    /// Newest first: the records older than the one with this seq
    /// (`starting_after=<id>` of the `stripe` style).
    BeforeSeq(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// Inclusive lower bound on `created_at`, unix ms.
    pub since: Option<i64>,
    /// Exclusive upper bound on `created_at`, unix ms.
    pub until: Option<i64>,
    pub position: Position,
    /// `None`: the whole rest of the range in one page.
    pub limit: Option<usize>,
}

/// Records `[start, end)` of the history; `more` when the range goes on after `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub start: usize,
    pub end: usize,
    pub more: bool,
    /// The page is every `step`th record of `[start, end)` (one store's: `n`).
    pub step: usize,
}

impl Page {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

// === impl History ===

impl History {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            records: Vec::new(),
            stores: 0,
        }
    }

    /// Records belong to `n` stores in turn (see [`History::stores`]).
    pub fn with_stores(mut self, n: usize) -> Self {
        self.stores = n;
        self
    }

    /// How many stores records belong to (0: none).
    pub fn stores(&self) -> usize {
        self.stores
    }

    /// The store of the record at `index` (0-based), if records have stores.
    pub fn store_of(&self, index: usize) -> Option<usize> {
        (self.stores > 0).then(|| index % self.stores)
    }

    /// A store's name (`s1`…) as its number, 0-based.
    pub fn store_index(&self, name: &str) -> Option<usize> {
        let k: usize = name.strip_prefix('s')?.parse().ok()?;
        (1..=self.stores).contains(&k).then(|| k - 1)
    }

    /// The records of store `k`.
    pub fn stride(&self, k: usize) -> Option<Stride> {
        (k < self.stores).then_some(Stride { k, n: self.stores })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Appends a record; its `created_at` is raised to the newest one's if it
    /// is older, so the history stays sorted. Returns its index.
    pub fn push(&mut self, created_at_ms: i64, silenced: bool) -> usize {
        self.push_lossy(created_at_ms, silenced, false)
    }

    /// [`push`](Self::push) for a record that may be `dropped` on its way to SQS.
    pub fn push_lossy(&mut self, created_at_ms: i64, silenced: bool, dropped: bool) -> usize {
        let floor = self.records.last().map_or(i64::MIN, |r| r.created_at_ms);
        self.records.push(Record {
            created_at_ms: created_at_ms.max(floor),
            silenced,
            dropped,
        });
        self.records.len() - 1
    }

    /// Appends `count` records spread evenly over `[from_ms, to_ms)`.
    pub fn seed(&mut self, count: usize, from_ms: i64, to_ms: i64) {
        self.records.reserve(count);
        let span = (to_ms - from_ms).max(0) as i128;
        for k in 0..count {
            let offset = (span * k as i128 / count as i128) as i64;
            self.push(from_ms + offset, false);
        }
    }

    /// Indices `[lo, hi)` of the records with `since <= created_at < until`.
    pub fn range(&self, since: Option<i64>, until: Option<i64>) -> (usize, usize) {
        let lo = since.map_or(0, |s| self.records.partition_point(|r| r.created_at_ms < s));
        let hi = until.map_or(self.records.len(), |u| {
            self.records.partition_point(|r| r.created_at_ms < u)
        });
        (lo, hi.max(lo))
    }

    pub fn page(&self, query: &PageQuery) -> Page {
        let (lo, hi) = self.range(query.since, query.until);
        let start = match query.position {
            Position::Start => lo,
            Position::Index(i) => i.max(lo),
            Position::AfterSeq(seq) => usize::try_from(seq).unwrap_or(usize::MAX).max(lo),
            Position::Skip(n) => lo.saturating_add(n),
            Position::BeforeSeq(_) => return self.page_newest_first(query),
        }
        .min(hi);
        let end = match query.limit {
            Some(limit) => start.saturating_add(limit).min(hi),
            None => hi,
        };
        Page {
            start,
            end,
            more: end < hi,
            step: 1,
        }
    }

    /// [`History::page`] over one store's records: positions, skips and
    /// limits count that store's records only; cursors stay indices into the
    /// whole history.
    pub fn page_in(&self, query: &PageQuery, stride: Stride) -> Page {
        if let Position::BeforeSeq(_) = query.position {
            return self.page_newest_first_in(query, stride);
        }
        let (lo, hi) = self.range(query.since, query.until);
        let first = stride.first(lo);
        let count = stride.rank(first, hi);
        let at = |j: usize| if j < count { first + j * stride.n } else { hi };
        let j0 = match query.position {
            Position::Start => 0,
            Position::Index(i) => stride.rank(first, i.max(lo)),
            Position::AfterSeq(seq) => {
                stride.rank(first, usize::try_from(seq).unwrap_or(usize::MAX).max(lo))
            }
            Position::Skip(n) => n,
            Position::BeforeSeq(_) => 0,
        }
        .min(count);
        let j1 = query
            .limit
            .map_or(count, |l| j0.saturating_add(l).min(count));
        Page {
            start: at(j0),
            end: at(j1),
            more: j1 < count,
            step: stride.n,
        }
    }

    /// [`History::page_newest_first`] over one store's records.
    pub fn page_newest_first_in(&self, query: &PageQuery, stride: Stride) -> Page {
        let (lo, hi) = self.range(query.since, query.until);
        let first = stride.first(lo);
        let count = stride.rank(first, hi);
        let at = |j: usize| if j < count { first + j * stride.n } else { hi };
        let top = match query.position {
            Position::BeforeSeq(seq) => stride.rank(
                first,
                usize::try_from(seq.saturating_sub(1))
                    .unwrap_or(usize::MAX)
                    .clamp(lo, hi),
            ),
            _ => count,
        };
        let start = query.limit.map_or(0, |l| top.saturating_sub(l));
        Page {
            start: at(start),
            end: at(top),
            more: start > 0,
            step: stride.n,
        }
    }

    /// A page of a newest-first listing: the `limit` newest records of the
    /// range below the position; `more` when older ones remain. The caller
    /// serves `[start, end)` in reverse.
    pub fn page_newest_first(&self, query: &PageQuery) -> Page {
        let (lo, hi) = self.range(query.since, query.until);
        let top = match query.position {
            // seq = index + 1: the records before seq s end at index s − 1.
            Position::BeforeSeq(seq) => {
                usize::try_from(seq.saturating_sub(1)).unwrap_or(usize::MAX)
            }
            _ => hi,
        }
        .clamp(lo, hi);
        let start = match query.limit {
            Some(limit) => top.saturating_sub(limit).max(lo),
            None => lo,
        };
        Page {
            start,
            end: top,
            more: start > lo,
            step: 1,
        }
    }

    /// The seq named by an id of this history (`<prefix>-<seq>`), if it exists.
    pub fn seq_of_id(&self, id: &str) -> Option<u64> {
        let seq: u64 = id
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        (seq >= 1 && seq <= self.records.len() as u64).then_some(seq)
    }

    pub fn view(&self, index: usize) -> RecordView<'_> {
        RecordView {
            prefix: &self.prefix,
            seq: index as u64 + 1,
            created_at_ms: self.records[index].created_at_ms,
            store: self.store_of(index),
        }
    }

    /// Copies a page's records out, so a caller can drop the lock before serializing.
    pub fn views(&self, page: &Page) -> Vec<OwnedView> {
        (page.start..page.end.min(self.records.len()))
            .step_by(page.step.max(1))
            .map(|i| OwnedView {
                seq: i as u64 + 1,
                created_at_ms: self.records[i].created_at_ms,
                store: self.store_of(i),
            })
            .collect()
    }
}

// === cursors ===

pub fn encode_cursor(index: usize) -> String {
    format!(
        "{:016x}",
        (index as u64 ^ CURSOR_MASK).wrapping_mul(CURSOR_MUL)
    )
}

pub fn decode_cursor(cursor: &str) -> Option<usize> {
    if cursor.len() != 16 {
        return None;
    }
    let raw = u64::from_str_radix(cursor, 16).ok()?;
    usize::try_from(raw.wrapping_mul(CURSOR_MUL_INV) ^ CURSOR_MASK).ok()
}

// === records as JSON ===

/// `{"id", "created_at", "seq", "payload"}`, built on the fly.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub prefix: &'a str,
    pub seq: u64,
    pub created_at_ms: i64,
    /// The store it belongs to (0-based), written `store_id: "s{k + 1}"`.
    pub store: Option<usize>,
}

/// A record copied out of the history; pair it with the prefix to render it.
#[derive(Clone, Copy, Debug)]
pub struct OwnedView {
    pub seq: u64,
    pub created_at_ms: i64,
    pub store: Option<usize>,
}

impl OwnedView {
    pub fn with_prefix(self, prefix: &str) -> RecordView<'_> {
        RecordView {
            prefix,
            seq: self.seq,
            created_at_ms: self.created_at_ms,
            store: self.store,
        }
    }
}

/// The name of store `k` (0-based).
pub fn store_name(k: usize) -> String {
    format!("s{}", k + 1)
}

pub fn record_id(prefix: &str, seq: u64) -> String {
    format!("{prefix}-{seq:0SEQ_WIDTH$}")
}

struct Id<'a>(&'a str, u64);

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:0SEQ_WIDTH$}", self.0, self.1)
    }
}

struct Payload(u64);

impl fmt::Display for Payload {
    // Deterministic filler so a record's body is a pure function of its seq.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        write!(
            f,
            "order {n}: sku {} qty {} price {}.{:02}",
            n.wrapping_mul(2_654_435_761) % 100_000,
            n % 9 + 1,
            n.wrapping_mul(7919) % 500,
            n % 100
        )
    }
}

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.store.is_some() { 5 } else { 4 };
        let mut s = serializer.serialize_struct("Record", fields)?;
        s.serialize_field("id", &Collect(Id(self.prefix, self.seq)))?;
        s.serialize_field("created_at", &Collect(format_millis(self.created_at_ms)))?;
        s.serialize_field("seq", &self.seq)?;
        if let Some(k) = self.store {
            s.serialize_field("store_id", &Collect(StoreName(k)))?;
        }
        s.serialize_field("payload", &Collect(Payload(self.seq)))?;
        s.end()
    }
}

struct StoreName(usize);

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0 + 1)
    }
}

/// Serializes any `Display` as a JSON string without an intermediate `String`.
struct Collect<T>(T);

impl<T: fmt::Display> Serialize for Collect<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten records, one per second from t=1000 ms, plus two sharing t=20_000.
    fn sample() -> History {
        let mut h = History::new("evt");
        h.seed(10, 1_000, 11_000);
        h.push(20_000, false);
        h.push(20_000, true);
        h
    }

    fn query(
        since: Option<i64>,
        until: Option<i64>,
        position: Position,
        limit: usize,
    ) -> PageQuery {
        PageQuery {
            since,
            until,
            position,
            limit: Some(limit),
        }
    }

    #[test]
    fn seed_spreads_evenly_and_stays_sorted() {
        let h = sample();
        let times: Vec<i64> = h.records().iter().map(|r| r.created_at_ms).collect();
        assert_eq!(&times[..3], &[1_000, 2_000, 3_000]);
        assert_eq!(times[9], 10_000);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn push_never_goes_back_in_time() {
        let mut h = History::new("evt");
        h.push(5_000, false);
        h.push(4_000, false);
        assert_eq!(h.records()[1].created_at_ms, 5_000);
    }

    #[test]
    fn range_is_half_open() {
        let h = sample();
        let cases = [
            (None, None, (0, 12)),
            (Some(1_000), Some(3_000), (0, 2)),
            (Some(1_001), Some(3_001), (1, 3)),
            (Some(20_000), None, (10, 12)),
            (None, Some(20_000), (0, 10)),
            (Some(50_000), None, (12, 12)),
            (Some(5_000), Some(1_000), (4, 4)),
        ];
        for (since, until, want) in cases {
            assert_eq!(
                h.range(since, until),
                want,
                "since={since:?} until={until:?}"
            );
        }
    }

    #[test]
    fn cursor_pages_cover_the_range_once() {
        let h = sample();
        let mut seen = Vec::new();
        let mut position = Position::Start;
        loop {
            let page = h.page(&query(Some(2_000), Some(20_001), position, 3));
            seen.extend(page.start..page.end);
            if !page.more {
                break;
            }
            position = Position::Index(decode_cursor(&encode_cursor(page.end)).unwrap());
        }
        assert_eq!(seen, (1..12).collect::<Vec<_>>());
    }

    #[test]
    fn starting_after_continues_after_the_id() {
        let h = sample();
        let first = h.page(&query(None, None, Position::Start, 4));
        assert_eq!((first.start, first.end, first.more), (0, 4, true));
        let last_id = record_id(h.prefix(), h.view(first.end - 1).seq);
        let seq = h.seq_of_id(&last_id).unwrap();
        let next = h.page(&query(None, None, Position::AfterSeq(seq), 100));
        assert_eq!((next.start, next.end, next.more), (4, 12, false));
        assert_eq!(h.seq_of_id("evt-999"), None);
        assert_eq!(h.seq_of_id("other-000000000001"), None);
        assert_eq!(h.seq_of_id("evt-0"), None);
    }

    #[test]
    fn page_and_offset_skip_within_the_range() {
        let h = sample();
        // page 2 of size 4 within [3000, ∞): records 6..10
        let p = h.page(&query(Some(3_000), None, Position::Skip(4), 4));
        assert_eq!((p.start, p.end, p.more), (6, 10, true));
        let past_end = h.page(&query(Some(3_000), None, Position::Skip(400), 4));
        assert_eq!((past_end.len(), past_end.more), (0, false));
    }

    #[test]
    fn unlimited_page_takes_the_rest() {
        let h = sample();
        let p = h.page(&PageQuery {
            since: Some(2_000),
            until: None,
            position: Position::Start,
            limit: None,
        });
        assert_eq!((p.start, p.end, p.more), (1, 12, false));
    }

    #[test]
    fn cursor_before_the_range_is_clamped_and_garbage_rejected() {
        let h = sample();
        let p = h.page(&query(Some(5_000), None, Position::Index(0), 2));
        assert_eq!(p.start, 4);
        assert_eq!(decode_cursor("not-a-cursor"), None);
        for i in [0, 1, 12345, 1 << 40] {
            assert_eq!(decode_cursor(&encode_cursor(i)), Some(i));
        }
        assert_ne!(encode_cursor(1)[..12], encode_cursor(2)[..12]);
    }

    #[test]
    fn newest_first_pages_cover_the_range_once() {
        let h = sample();
        let mut seen = Vec::new();
        let mut position = Position::Start;
        loop {
            let mut q = query(Some(2_000), Some(20_001), position, 3);
            q.position = position;
            let page = h.page_newest_first(&q);
            seen.extend((page.start..page.end).rev());
            if !page.more {
                break;
            }
            position = Position::BeforeSeq(h.view(page.start).seq);
        }
        assert_eq!(seen, (1..12).rev().collect::<Vec<_>>());
    }

    #[test]
    fn a_store_pages_through_its_own_records_once() {
        let mut h = History::new("evt").with_stores(3);
        h.seed(20, 1_000, 21_000);
        let stride = h.stride(h.store_index("s2").unwrap()).unwrap();
        let want: Vec<u64> = (0..20).filter(|i| i % 3 == 1).map(|i| i + 1).collect();
        // Cursor style: the next page starts at the index the last one ended at.
        let mut seen = Vec::new();
        let mut position = Position::Start;
        loop {
            let page = h.page_in(&query(None, None, position, 2), stride);
            seen.extend(h.views(&page).iter().map(|v| v.seq));
            if !page.more {
                break;
            }
            position = Position::Index(page.end);
        }
        assert_eq!(seen, want);
        // Offsets count the store's records.
        let p = h.page_in(&query(None, None, Position::Skip(2), 2), stride);
        let seqs: Vec<u64> = h.views(&p).iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![8, 11]);
        // A time range: records at 1000 + 1000·i ms.
        let p = h.page_in(
            &query(Some(5_000), Some(12_000), Position::Start, 100),
            stride,
        );
        let seqs: Vec<u64> = h.views(&p).iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![5, 8, 11]);
        // Newest first.
        let mut seen = Vec::new();
        let mut position = Position::Start;
        loop {
            let page = h.page_newest_first_in(&query(None, None, position, 3), stride);
            let views = h.views(&page);
            seen.extend(views.iter().rev().map(|v| v.seq));
            if !page.more {
                break;
            }
            position = Position::BeforeSeq(views[0].seq);
        }
        seen.reverse();
        assert_eq!(seen, want);
        let v = serde_json::to_value(h.view(4)).unwrap();
        assert_eq!(v["store_id"], "s2");
        assert_eq!(h.store_index("s4"), None);
        assert_eq!(h.store_index("x1"), None);
    }

    #[test]
    fn ids_sort_like_seq() {
        assert_eq!(record_id("evt", 42), "evt-000000000042");
        assert!(record_id("evt", 9) < record_id("evt", 10));
    }

    #[test]
    fn record_json_shape() {
        let h = sample();
        let v = serde_json::to_value(h.view(0)).unwrap();
        assert_eq!(v["id"], "evt-000000000001");
        assert_eq!(v["created_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["seq"], 1);
        assert!(v["payload"].as_str().unwrap().starts_with("order 1:"));
    }
}
