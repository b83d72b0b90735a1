-- Partitioned feeds (see the SQLite migration 0007): '' is the whole feed.
ALTER TABLE gaps ADD COLUMN part TEXT NOT NULL DEFAULT '';
DROP INDEX gaps_one_open;
CREATE UNIQUE INDEX gaps_one_open ON gaps (feed, part) WHERE state = 'open' AND kind = 'detected';
CREATE INDEX gaps_feed_updated ON gaps (feed, updated_ms);

ALTER TABLE chunks ADD COLUMN part TEXT NOT NULL DEFAULT '';

CREATE TABLE feed_partitions (
    feed            TEXT NOT NULL,
    part            TEXT NOT NULL,
    last_event_ms   BIGINT,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (feed, part)
);
CREATE INDEX feed_partitions_updated ON feed_partitions (feed, updated_ms);
