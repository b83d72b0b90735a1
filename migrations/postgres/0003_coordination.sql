-- Several replicas: per feed, one holds the lease (the database's clock decides
-- expiry, so skew between pods never makes two holders); `token` grows with
-- every change of holder and fences checkpoint commits.
CREATE TABLE leases (
    feed            TEXT PRIMARY KEY,
    holder          TEXT NOT NULL,
    token           BIGINT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL
);

-- A running chunk is claimed by one replica until `claim_until_ms` (database
-- time); a claim that lapses (its replica died) is taken by the next holder,
-- which resumes from the chunk's checkpoint.
ALTER TABLE chunks ADD COLUMN claimed_by TEXT;
ALTER TABLE chunks ADD COLUMN claim_until_ms BIGINT;
-- How long each checkpoint extends the claim.
ALTER TABLE chunks ADD COLUMN claim_ms BIGINT;
