-- The ledger: every id that reached the destination, with its event time and
-- origin: relayed or reported live ('relayed', 'reported'), seen live near a
-- gap edge ('live'), or delivered by a fill or an audit ('delivered').
-- SQLite cannot widen a CHECK in place: the table is rebuilt.
CREATE TABLE record_ids_v3 (
    feed            TEXT NOT NULL,
    id              TEXT NOT NULL,
    event_ms        INTEGER NOT NULL,
    origin          TEXT NOT NULL
                    CHECK (origin IN ('live', 'delivered', 'relayed', 'reported')),
    gap_id          INTEGER,
    PRIMARY KEY (feed, id)
) WITHOUT ROWID;
INSERT INTO record_ids_v3 (feed, id, event_ms, origin, gap_id)
    SELECT feed, id, event_ms, origin, gap_id FROM record_ids;
DROP TABLE record_ids;
ALTER TABLE record_ids_v3 RENAME TO record_ids;
-- Pruning deletes by event time; the audit reads ids of a window.
CREATE INDEX record_ids_time ON record_ids (feed, event_ms);

-- Per feed: since when the ledger is complete (`started_ms`: the audit never
-- looks before it) and the audit's watermark (every record older than
-- `verified_until_ms` is proven delivered; NULL: nothing verified yet).
CREATE TABLE audits (
    feed                TEXT PRIMARY KEY,
    started_ms          INTEGER NOT NULL,
    verified_until_ms   INTEGER,
    updated_ms          INTEGER NOT NULL
);
