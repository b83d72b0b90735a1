-- How far a file sink's output is committed: bytes past this offset were written
-- by a page whose checkpoint never committed (a crash), and are cut on start.
CREATE TABLE sink_offsets (
    feed            TEXT PRIMARY KEY,
    path            TEXT NOT NULL,
    committed       INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
