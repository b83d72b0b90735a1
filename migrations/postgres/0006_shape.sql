-- The shape check: the same tables as the SQLite migration 0006 (samples of
-- live messages, written by every replica; the last check, by the lease holder).
CREATE TABLE shape_samples (
    feed            TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    event_ms        BIGINT NOT NULL,
    received_ms     BIGINT NOT NULL,
    body            TEXT NOT NULL,
    -- JSON object: attribute name -> {"data_type", "value"}.
    attributes      TEXT NOT NULL,
    PRIMARY KEY (feed, record_id)
);

CREATE TABLE shape_checks (
    feed            TEXT PRIMARY KEY,
    checked_ms      BIGINT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('match', 'mismatch', 'unavailable')),
    reason          TEXT,
    -- The first difference: its record, where, and both values (redacted).
    record_id       TEXT,
    part            TEXT,
    path            TEXT,
    live            TEXT,
    recovered       TEXT
);
