-- Records a vendor page carried outside the chunk's window: counted per chunk
-- (they belong to a neighbouring window, whose own query fetches them).
ALTER TABLE chunks ADD COLUMN out_of_window INTEGER NOT NULL DEFAULT 0;
