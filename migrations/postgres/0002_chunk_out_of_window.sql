-- Records a vendor page carried outside the chunk's window (see the SQLite
-- migration 0005).
ALTER TABLE chunks ADD COLUMN out_of_window BIGINT NOT NULL DEFAULT 0;
