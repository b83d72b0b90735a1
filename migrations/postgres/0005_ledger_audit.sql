-- The ledger and the audit's watermark (see the SQLite migration 0003).
ALTER TABLE record_ids DROP CONSTRAINT IF EXISTS record_ids_origin_check;
ALTER TABLE record_ids ADD CONSTRAINT record_ids_origin_check
    CHECK (origin IN ('live', 'delivered', 'relayed', 'reported'));

CREATE TABLE audits (
    feed                TEXT PRIMARY KEY,
    started_ms          BIGINT NOT NULL,
    verified_until_ms   BIGINT,
    updated_ms          BIGINT NOT NULL
);
