-- The collector layout the broker's persistent sessions were made for (ingest/partitions.py
-- claim_layout, docs/architecture.md "Scaling"). A worker's MQTT session (client id
-- <client_id>-w<i>, or <client_id> unpartitioned) keeps its shared subscriptions for
-- session_expiry_s after the worker stops, and mosquitto keeps queueing readings to it.
-- Starting another layout (fewer workers, partitioning switched on or off, another client
-- id) would leave such sessions queueing readings nobody reads; a worker whose layout
-- differs from this row refuses to start until the old layout is drained and the row reset
-- (`hazardwatch partitions layout --reset`). At most one row.
CREATE TABLE ingest_layout (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    partitions  int NOT NULL CHECK (partitions >= 0),               -- 0: unpartitioned
    workers     int NOT NULL CHECK (workers >= 1),
    client_id   text NOT NULL,                                       -- the base MQTT client id
    recorded_at timestamptz NOT NULL DEFAULT now()
);
