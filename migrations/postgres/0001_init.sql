-- gapwatch state on Postgres: the same tables as the SQLite schema (one
-- directory up), shared by every replica. Times are Unix milliseconds (UTC).

CREATE TABLE feeds (
    name            TEXT PRIMARY KEY,
    last_event_ms   BIGINT,
    updated_ms      BIGINT NOT NULL
);

CREATE TABLE gaps (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    feed            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('detected', 'manual')),
    state           TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    start_ms        BIGINT NOT NULL,
    end_ms          BIGINT,
    detected_ms     BIGINT NOT NULL,
    closed_ms       BIGINT,
    fill            TEXT NOT NULL DEFAULT 'pending'
                    CHECK (fill IN ('none', 'pending', 'running', 'done', 'failed', 'ignored')),
    last_error      TEXT,
    owner           TEXT NOT NULL DEFAULT 'daemon',
    updated_ms      BIGINT NOT NULL
);
CREATE INDEX gaps_feed_state ON gaps (feed, state);
CREATE UNIQUE INDEX gaps_one_open ON gaps (feed) WHERE state = 'open' AND kind = 'detected';

CREATE TABLE chunks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gap_id          BIGINT NOT NULL REFERENCES gaps (id),
    idx             BIGINT NOT NULL,
    start_ms        BIGINT NOT NULL,
    end_ms          BIGINT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'failed')),
    cursor          TEXT,
    pages           BIGINT NOT NULL DEFAULT 0,
    delivered       BIGINT NOT NULL DEFAULT 0,
    duplicate       BIGINT NOT NULL DEFAULT 0,
    rejected        BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_ms      BIGINT NOT NULL,
    UNIQUE (gap_id, idx)
);
CREATE INDEX chunks_gap ON chunks (gap_id, state);

CREATE TABLE record_ids (
    feed            TEXT NOT NULL,
    id              TEXT NOT NULL,
    event_ms        BIGINT NOT NULL,
    origin          TEXT NOT NULL CHECK (origin IN ('live', 'delivered')),
    gap_id          BIGINT,
    PRIMARY KEY (feed, id)
);
CREATE INDEX record_ids_time ON record_ids (feed, event_ms);

CREATE TABLE sink_offsets (
    feed            TEXT PRIMARY KEY,
    path            TEXT NOT NULL,
    committed       BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);
