-- The shape check (see src/shape): a small sample of live messages per feed,
-- bodies and message attributes as the app received them, kept across
-- restarts and read by `gapwatch check-shape`; and each feed's last check.
CREATE TABLE shape_samples (
    feed            TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    event_ms        INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    body            TEXT NOT NULL,
    -- JSON object: attribute name -> {"data_type", "value"}.
    attributes      TEXT NOT NULL,
    PRIMARY KEY (feed, record_id)
);

CREATE TABLE shape_checks (
    feed            TEXT PRIMARY KEY,
    checked_ms      INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('match', 'mismatch', 'unavailable')),
    reason          TEXT,
    -- The first difference: its record, where, and both values (redacted).
    record_id       TEXT,
    part            TEXT,
    path            TEXT,
    live            TEXT,
    recovered       TEXT
);
