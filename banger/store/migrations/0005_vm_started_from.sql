-- 0005: warm snapshots (docs/snapshots.md). started_from: how the VM last started
-- ("snapshot <id>" or "cold (<why>)"); snapshot_id: the snapshot whose saved root its
-- root overlay is backed by (kept while such a VM exists).
ALTER TABLE vms ADD COLUMN started_from TEXT;
ALTER TABLE vms ADD COLUMN snapshot_id TEXT;
