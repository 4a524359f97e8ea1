-- TimescaleDB (>= 2.13): readings becomes a hypertable with daily chunks, compressed after
-- a day segmented by sensor, dropped after the retention period, and rolled up into
-- continuous aggregates with the same names and columns as the plain-PostgreSQL views.
-- Retention and compression ages are re-applied from settings after migrating
-- (hazardwatch.migrate.apply_policies); the figures here are the defaults.
SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'),
                         create_default_indexes => false, migrate_data => true,
                         if_not_exists => true);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('readings', compress_after => INTERVAL '1 day',
                              if_not_exists => true);
SELECT add_retention_policy('readings', drop_after => INTERVAL '90 days',
                            if_not_exists => true);

CREATE MATERIALIZED VIEW readings_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket,
       sensor_id,
       min(CASE WHEN quality < 2 THEN value END) AS min_value,
       max(CASE WHEN quality < 2 THEN value END) AS max_value,
       avg(CASE WHEN quality < 2 THEN value END) AS avg_value,
       last(CASE WHEN quality < 2 THEN value END, ts) AS last_value,
       count(CASE WHEN quality < 2 THEN value END) AS n,
       sum(CASE WHEN quality >= 2 THEN 1 ELSE 0 END) AS n_bad
FROM readings
GROUP BY bucket, sensor_id
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => true);

CREATE MATERIALIZED VIEW readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket,
       sensor_id,
       min(CASE WHEN quality < 2 THEN value END) AS min_value,
       max(CASE WHEN quality < 2 THEN value END) AS max_value,
       avg(CASE WHEN quality < 2 THEN value END) AS avg_value,
       last(CASE WHEN quality < 2 THEN value END, ts) AS last_value,
       count(CASE WHEN quality < 2 THEN value END) AS n,
       sum(CASE WHEN quality >= 2 THEN 1 ELSE 0 END) AS n_bad
FROM readings
GROUP BY bucket, sensor_id
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => true);

-- Roll-ups outlive the raw data they summarise.
SELECT add_retention_policy('readings_1m', drop_after => INTERVAL '400 days', if_not_exists => true);
SELECT add_retention_policy('readings_1h', drop_after => INTERVAL '5 years', if_not_exists => true);
