-- Collector workers' partitions (ingest/partitions.py, docs/architecture.md "Scaling").
-- The broker stamps each readings topic with partition k of P; worker i of N owns the
-- partitions with k % N = i and holds them here by lease, so two live processes never
-- evaluate rules for the same partition. A standby for the same worker slot waits until
-- expires_at has passed (or the holder released it on a clean stop).
CREATE TABLE ingest_partitions (
    partition   int PRIMARY KEY CHECK (partition >= 0),
    partitions  int NOT NULL CHECK (partitions > partition),   -- P when claimed
    workers     int NOT NULL CHECK (workers >= 1),
    worker      int NOT NULL CHECK (worker >= 0 AND worker < workers),
    owner       text NOT NULL,                                  -- host:pid:random
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
