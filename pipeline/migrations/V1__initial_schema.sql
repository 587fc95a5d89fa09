-- V1: the plan's storage (SEED.md, "Storage (entity-relationship)") plus `templates`, the
-- shared cluster index's key. Applied by refinery at start (pipeline/src/postgres/mod.rs);
-- never edit an applied migration, add V2__... instead.
--
-- Differences from the plan, and why:
--   * ids are TEXT where the system's ids are text (cluster ids `c<16 hex>`, the enforcer's
--     32-hex event ids, policy ids);
--   * embeddings are made once per *template*, not per event, so `vectors` is keyed by the
--     template id (vector_id = template_id) instead of pointing at one event;
--   * `templates` maps every template id a replica assigned to its cluster; its primary key
--     is what makes two replicas racing on one template end with one cluster;
--   * clusters keep the evidence (dependency, failure_mode) the clustering rules compare.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE clusters (
    cluster_id      TEXT PRIMARY KEY,
    -- unit-length mean of the cluster's template vectors (multilingual-e5-small: 384)
    centroid_vector vector(384) NOT NULL,
    template_count  INTEGER NOT NULL DEFAULT 0,
    error_count     BIGINT NOT NULL DEFAULT 0,
    severity        REAL NOT NULL DEFAULT 0,
    dependency      TEXT,
    failure_mode    TEXT,
    create_time     TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_time     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the founding template
    description     TEXT NOT NULL DEFAULT ''
);
-- Nearest-cluster search for new templates and "clusters similar to this message":
-- cosine distance (`<=>`), approximate, incremental inserts.
CREATE INDEX clusters_centroid_hnsw ON clusters USING hnsw (centroid_vector vector_cosine_ops);
-- The evidence shortcut: the oldest cluster with the same dependency and failure mode.
CREATE INDEX clusters_evidence ON clusters (dependency, failure_mode, create_time, cluster_id)
    WHERE dependency IS NOT NULL AND failure_mode IS NOT NULL;

CREATE TABLE templates (
    -- schemas::text::template_id_of(template), the u64 bit-cast to BIGINT
    template_id  BIGINT PRIMARY KEY,
    template     TEXT NOT NULL,
    cluster_id   TEXT NOT NULL REFERENCES clusters (cluster_id) ON DELETE CASCADE,
    dependency   TEXT,
    failure_mode TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX templates_cluster ON templates (cluster_id);

CREATE TABLE vectors (
    vector_id   BIGINT PRIMARY KEY REFERENCES templates (template_id) ON DELETE CASCADE,
    vector_data vector(384) NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX vectors_hnsw ON vectors USING hnsw (vector_data vector_cosine_ops);

CREATE TABLE error_events (
    event_id      TEXT PRIMARY KEY,
    trace_id      TEXT NOT NULL,
    span_id       TEXT NOT NULL,
    request_path  TEXT NOT NULL,
    method        TEXT NOT NULL,
    service_name  TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    error_message TEXT NOT NULL,
    stack_trace   TEXT NOT NULL DEFAULT '',
    "timestamp"   TIMESTAMPTZ NOT NULL,
    route         TEXT NOT NULL DEFAULT '',
    template_id   BIGINT,
    cluster_id    TEXT REFERENCES clusters (cluster_id) ON DELETE SET NULL
);
-- Retention deletes by time.
CREATE INDEX error_events_timestamp ON error_events ("timestamp");
CREATE INDEX error_events_cluster ON error_events (cluster_id);

CREATE TABLE cluster_members (
    cluster_id       TEXT NOT NULL REFERENCES clusters (cluster_id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL REFERENCES error_events (event_id) ON DELETE CASCADE,
    similarity_score REAL,
    joined_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, event_id)
);

CREATE TABLE policies (
    policy_id     TEXT PRIMARY KEY,
    -- no foreign key: an operator may force a policy on a cluster no replica has seen
    cluster_id    TEXT NOT NULL,
    policy_type   TEXT NOT NULL,
    severity      REAL NOT NULL,
    policy_config JSONB NOT NULL,
    create_time   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expire_time   TIMESTAMPTZ NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE INDEX policies_cluster ON policies (cluster_id);

CREATE TABLE metrics (
    metric_id    BIGSERIAL PRIMARY KEY,
    cluster_id   TEXT REFERENCES clusters (cluster_id) ON DELETE CASCADE,
    metric_name  TEXT NOT NULL,
    metric_value DOUBLE PRECISION NOT NULL,
    "timestamp"  TIMESTAMPTZ NOT NULL DEFAULT now(),
    labels       JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX metrics_cluster_time ON metrics (cluster_id, "timestamp");
