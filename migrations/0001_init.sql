-- gapwatch state. Times are Unix milliseconds (UTC).

CREATE TABLE feeds (
    name            TEXT PRIMARY KEY,
    last_event_ms   INTEGER,
    updated_ms      INTEGER NOT NULL
);

-- A gap is an interval of event time whose records are missing: `open` while the
-- feed is still silent, `closed` once it resumed. Manual backfills are gaps of
-- kind 'manual'. `fill` is where its recovery stands.
CREATE TABLE gaps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    feed            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('detected', 'manual')),
    state           TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER,
    detected_ms     INTEGER NOT NULL,
    closed_ms       INTEGER,
    fill            TEXT NOT NULL DEFAULT 'pending'
                    CHECK (fill IN ('none', 'pending', 'running', 'done', 'failed', 'ignored')),
    last_error      TEXT,
    -- Who fills it: the daemon, or a `gapwatch backfill` process ('cli').
    owner           TEXT NOT NULL DEFAULT 'daemon',
    updated_ms      INTEGER NOT NULL
);
CREATE INDEX gaps_feed_state ON gaps (feed, state);
-- At most one open detected gap per feed.
CREATE UNIQUE INDEX gaps_one_open ON gaps (feed) WHERE state = 'open' AND kind = 'detected';

-- A fill is split into chunks; each is fetched page by page and checkpointed
-- after every delivered page (`cursor` is where the next page starts).
CREATE TABLE chunks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    gap_id          INTEGER NOT NULL REFERENCES gaps (id),
    idx             INTEGER NOT NULL,
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'failed')),
    cursor          TEXT,
    pages           INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    duplicate       INTEGER NOT NULL DEFAULT 0,
    rejected        INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_ms      INTEGER NOT NULL,
    UNIQUE (gap_id, idx)
);
CREATE INDEX chunks_gap ON chunks (gap_id, state);

-- Record ids gapwatch must not deliver again: ids seen live near gap edges
-- (origin 'live') and every id a fill delivered (origin 'delivered').
CREATE TABLE record_ids (
    feed            TEXT NOT NULL,
    id              TEXT NOT NULL,
    event_ms        INTEGER NOT NULL,
    origin          TEXT NOT NULL CHECK (origin IN ('live', 'delivered')),
    gap_id          INTEGER,
    PRIMARY KEY (feed, id)
) WITHOUT ROWID;
CREATE INDEX record_ids_time ON record_ids (feed, event_ms);
