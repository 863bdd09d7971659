-- 0001: the tables of the foundation, kernels/images and VM issues.
-- Timestamps are ISO-8601 UTC text; *_json-like columns (manifest, spec, stages,
-- result, error) hold JSON text encoded at the repository boundary.

CREATE TABLE kernels (
    name        TEXT PRIMARY KEY NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    version     TEXT NOT NULL,
    source      TEXT NOT NULL,
    path        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    manifest    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(manifest)),
    created_at  TEXT NOT NULL
);
-- At most one default kernel.
CREATE UNIQUE INDEX kernels_one_default ON kernels (is_default) WHERE is_default = 1;

CREATE TABLE images (
    id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) >= 1),
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    kernel_name TEXT REFERENCES kernels (name) ON DELETE RESTRICT,
    source      TEXT NOT NULL,
    path        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    size_bytes  INTEGER NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    manifest    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(manifest)),
    created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX images_one_default ON images (is_default) WHERE is_default = 1;
CREATE INDEX images_kernel_name ON images (kernel_name);

CREATE TABLE vms (
    id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) >= 1),
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 63),
    state       TEXT NOT NULL DEFAULT 'created'
                CHECK (state IN ('created', 'starting', 'running', 'stopping', 'stopped', 'error')),
    image_id    TEXT REFERENCES images (id) ON DELETE RESTRICT,
    kernel_name TEXT REFERENCES kernels (name) ON DELETE RESTRICT,
    backend     TEXT NOT NULL,
    vcpu        INTEGER NOT NULL CHECK (vcpu >= 1),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 1),
    disk_bytes  INTEGER NOT NULL CHECK (disk_bytes >= 0),
    net_mode    TEXT NOT NULL DEFAULT 'tap' CHECK (net_mode IN ('tap', 'user')),
    guest_ip    TEXT UNIQUE,
    mac         TEXT UNIQUE,
    tap_name    TEXT,
    ssh_port    INTEGER CHECK (ssh_port IS NULL OR ssh_port BETWEEN 1 AND 65535),
    nat         INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1)),
    pid         INTEGER CHECK (pid IS NULL OR pid > 0),
    boot_id     TEXT,
    last_error  TEXT,
    spec        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    started_at  TEXT
);
CREATE INDEX vms_state ON vms (state);
CREATE INDEX vms_image_id ON vms (image_id);
CREATE INDEX vms_kernel_name ON vms (kernel_name);

CREATE TABLE operations (
    id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) >= 1),
    kind        TEXT NOT NULL,
    target      TEXT,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    stages      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(stages)),
    result      TEXT CHECK (result IS NULL OR json_valid(result)),
    error       TEXT CHECK (error IS NULL OR json_valid(error)),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX operations_state ON operations (state);
CREATE INDEX operations_finished_at ON operations (finished_at);
