-- 0003: a VM's workspace (banger/core/workspace_state.py WorkspaceState), '{}' when it has none.
ALTER TABLE vms ADD COLUMN workspace TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(workspace));
