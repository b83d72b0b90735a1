-- Partitioned feeds (`feeds.partitions`): a gap, a chunk and a newest event
-- belong to one partition. '' is the whole feed: every row of an unpartitioned
-- feed, and a partitioned feed's manual backfills and audit windows that cover
-- all its partitions (their chunks then name one partition each).
ALTER TABLE gaps ADD COLUMN part TEXT NOT NULL DEFAULT '';
DROP INDEX gaps_one_open;
-- At most one open detected gap per feed and partition.
CREATE UNIQUE INDEX gaps_one_open ON gaps (feed, part) WHERE state = 'open' AND kind = 'detected';
-- Replicas read back the gaps the feed's lease holder changed since their last look.
CREATE INDEX gaps_feed_updated ON gaps (feed, updated_ms);

-- The partition a chunk asks the source for.
ALTER TABLE chunks ADD COLUMN part TEXT NOT NULL DEFAULT '';

-- The partitions a feed watches, with the newest event time of each (NULL:
-- none seen yet); the max over replicas, as `feeds.last_event_ms` is.
CREATE TABLE feed_partitions (
    feed            TEXT NOT NULL,
    part            TEXT NOT NULL,
    last_event_ms   INTEGER,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (feed, part)
) WITHOUT ROWID;
CREATE INDEX feed_partitions_updated ON feed_partitions (feed, updated_ms);
