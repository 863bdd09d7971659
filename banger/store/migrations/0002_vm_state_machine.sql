-- 0002: the VM state machine (banger/core/states.py). A 'creating' state replaces
-- spec = {"creating": true}; every row records its last transition (when, why);
-- the never-used nat and boot_id columns go. SQLite cannot change a CHECK rule in
-- place, so the table is rebuilt (nothing references vms, so foreign keys allow it).

CREATE TABLE vms_new (
    id               TEXT PRIMARY KEY NOT NULL CHECK (length(id) >= 1),
    name             TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 63),
    state            TEXT NOT NULL DEFAULT 'creating'
                     CHECK (state IN ('creating', 'created', 'starting', 'running', 'stopping',
                                      'stopped', 'error')),
    state_reason     TEXT,
    state_changed_at TEXT,
    image_id         TEXT REFERENCES images (id) ON DELETE RESTRICT,
    kernel_name      TEXT REFERENCES kernels (name) ON DELETE RESTRICT,
    backend          TEXT NOT NULL,
    vcpu             INTEGER NOT NULL CHECK (vcpu >= 1),
    memory_mib       INTEGER NOT NULL CHECK (memory_mib >= 1),
    disk_bytes       INTEGER NOT NULL CHECK (disk_bytes >= 0),
    net_mode         TEXT NOT NULL DEFAULT 'tap' CHECK (net_mode IN ('tap', 'user')),
    guest_ip         TEXT UNIQUE,
    mac              TEXT UNIQUE,
    tap_name         TEXT,
    ssh_port         INTEGER CHECK (ssh_port IS NULL OR ssh_port BETWEEN 1 AND 65535),
    pid              INTEGER CHECK (pid IS NULL OR pid > 0),
    last_error       TEXT,
    spec             TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    started_at       TEXT
);

INSERT INTO vms_new (
    id, name, state, state_reason, state_changed_at, image_id, kernel_name, backend, vcpu,
    memory_mib, disk_bytes, net_mode, guest_ip, mac, tap_name, ssh_port, pid, last_error,
    spec, created_at, updated_at, started_at
)
SELECT
    id, name,
    CASE WHEN json_extract(spec, '$.creating') THEN 'creating' ELSE state END,
    NULL, updated_at, image_id, kernel_name, backend, vcpu,
    memory_mib, disk_bytes, net_mode, guest_ip, mac, tap_name, ssh_port, pid, last_error,
    json_remove(spec, '$.creating'), created_at, updated_at, started_at
FROM vms;

DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE INDEX vms_state ON vms (state);
CREATE INDEX vms_image_id ON vms (image_id);
CREATE INDEX vms_kernel_name ON vms (kernel_name);
