-- 0004: NAT per VM (docs/network.md, "NAT") and its published ports
-- (banger/core/publish.py PortMap), '{}' when it has none.
ALTER TABLE vms ADD COLUMN nat INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1));
ALTER TABLE vms ADD COLUMN ports TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(ports));
