"""Ordered schema migrations of the host registry (deploy/registry.py).

``MIGRATIONS[i]`` takes a database from ``PRAGMA user_version = i`` to ``i + 1``. A released
migration is never edited: add a new one at the end. Each runs in one transaction together with
the ``user_version`` bump, so a crash leaves the file at the old or the new version, never between.

Telemetry is stored as one compact row per device window (deduplicated by ``(device, seq)``);
the per-(class, variant) roll-ups are computed from those rows on demand (see
``Registry.class_stats``), so aggregates can be recomputed with any window filter and never drift.
"""

from __future__ import annotations

V1 = """
CREATE TABLE hardware_classes (
    id TEXT PRIMARY KEY,                 -- "<hardware_class>/<runtime>": "rpi4b-cpu/ai-edge-litert"
    hardware_class TEXT NOT NULL,        -- agent.board.hardware.HardwareInfo.hardware_class()
    board TEXT NOT NULL,
    board_family TEXT NOT NULL,
    accelerator TEXT NOT NULL,           -- "cpu" | "edgetpu"
    runtime TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hardware_class TEXT REFERENCES hardware_classes(id),
    board TEXT,
    accelerator TEXT,
    runtime TEXT,
    runtime_version TEXT,
    last_seen REAL,
    online INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    source_path TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    float_metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE variants (
    id TEXT PRIMARY KEY,                 -- content hash of (source, recipe, data)
    model TEXT NOT NULL REFERENCES models(name),
    recipe TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,                -- of the .tflite bytes; telemetry names models by it
    size INTEGER NOT NULL,
    quantization TEXT NOT NULL,
    accuracy REAL,                       -- host accuracy in [0, 1] when labels exist
    agreement REAL,                      -- top-1 agreement with the float model in [0, 1]
    snr_db REAL,
    operators TEXT NOT NULL DEFAULT '[]',
    min_runtime TEXT NOT NULL DEFAULT '[]',
    conversion_s REAL,
    available INTEGER NOT NULL DEFAULT 1,
    unavailable_reason TEXT
);
CREATE INDEX variants_sha ON variants(sha256);
CREATE INDEX variants_model ON variants(model);
CREATE TABLE releases (
    name TEXT PRIMARY KEY,
    counter INTEGER NOT NULL
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL REFERENCES devices(id),
    class_id TEXT,                       -- the device's class when deployed
    variant TEXT NOT NULL REFERENCES variants(id),
    release INTEGER NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT,                        -- NULL while running; committed | rolled_back | rejected
    reason TEXT
);
CREATE INDEX deployments_class ON deployments(class_id, variant);
CREATE TABLE telemetry_windows (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    class_id TEXT,
    model_sha256 TEXT,
    ts REAL NOT NULL,
    inferences INTEGER NOT NULL,
    errors INTEGER NOT NULL DEFAULT 0,
    p50_ms REAL,
    p95_ms REAL,
    rss_mb REAL,
    peak_rss_mb REAL,
    mj_per_inference REAL,
    energy_measured INTEGER,
    temp_c REAL,
    throttled INTEGER,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_class ON telemetry_windows(class_id, model_sha256, ts);
"""

V2 = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    class_id TEXT NOT NULL,
    action TEXT NOT NULL,                -- deploy | wait | promote | infeasible
    variant TEXT,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX decisions_model ON decisions(model, class_id, id);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    variant TEXT NOT NULL REFERENCES variants(id),
    class_id TEXT,
    state TEXT NOT NULL,
    waves TEXT NOT NULL DEFAULT '[]',
    counts TEXT NOT NULL DEFAULT '{}',
    plan TEXT NOT NULL DEFAULT '{}',     -- deploy.fleet.rollout_plan.RolloutPlan.to_dict()
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE rollout_devices (
    rollout INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device TEXT NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL,                 -- notified | committed | failed | rolled_back
    reason TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (rollout, device)
);
ALTER TABLE telemetry_windows ADD COLUMN window_s REAL;
"""

# energy_basis: "net" when mj_per_inference is the window's net-of-idle figure, "gross" when the
# device could not separate the model from idle (then it is the whole board's energy).
V3 = """
ALTER TABLE telemetry_windows ADD COLUMN energy_basis TEXT;
"""

# Who drives the loop of a model (deploy/fleet/lease.py): on SQLite the row is the lease (it
# expires unless renewed); on PostgreSQL an advisory lock is, and the row says who holds it.
V4 = """
CREATE TABLE leases (
    name TEXT PRIMARY KEY,               -- "loop/<model>"
    holder TEXT NOT NULL,                -- "<host>:<pid>:<random>"
    acquired REAL NOT NULL,
    expires REAL NOT NULL
);
"""

# Retention (deploy/fleet/retention.py): raw windows older than the policy are folded into one
# row per (class, model, hour) and deleted. Sums, not means, so a late window folds in exactly:
# mean p95 = p95_wsum / p95_w (inference-weighted), likewise p50 and energy (net and gross).
# '' stands for an unknown class or model (a key column cannot be NULL on PostgreSQL).
V5 = """
CREATE INDEX telemetry_ts ON telemetry_windows(ts);
CREATE TABLE telemetry_hourly (
    class_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    hour INTEGER NOT NULL,               -- floor(ts / 3600): the hour's start is hour * 3600
    windows INTEGER NOT NULL,
    served_windows INTEGER NOT NULL,     -- windows with inferences > 0
    inferences INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    p50_wsum REAL NOT NULL, p50_w INTEGER NOT NULL,
    p95_wsum REAL NOT NULL, p95_w INTEGER NOT NULL,
    p95_max_ms REAL,
    rss_max_mb REAL,
    peak_rss_max_mb REAL,
    mj_net_wsum REAL NOT NULL, mj_net_w INTEGER NOT NULL,
    mj_gross_wsum REAL NOT NULL, mj_gross_w INTEGER NOT NULL,
    energy_windows INTEGER NOT NULL,
    energy_measured_windows INTEGER NOT NULL,
    hot_windows INTEGER NOT NULL,
    throttled_windows INTEGER NOT NULL,
    temp_max_c REAL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    PRIMARY KEY (class_id, model_sha256, hour)
);
"""

MIGRATIONS: tuple[str, ...] = (V1, V2, V3, V4, V5)
SCHEMA_VERSION = len(MIGRATIONS)
