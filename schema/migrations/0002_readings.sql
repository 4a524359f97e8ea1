-- Narrow readings table. (sensor_id, ts) is unique so a redelivered message is a no-op.
-- quality: OPC-style 0 good, 1 uncertain, 2 bad, 3 sensor fault, 4 maintenance.
CREATE TABLE readings (
    ts         timestamptz NOT NULL,
    sensor_id  int NOT NULL,
    value      float8,                                  -- null: the gateway had no value
    quality    smallint NOT NULL DEFAULT 0 CHECK (quality BETWEEN 0 AND 4),
    PRIMARY KEY (sensor_id, ts)
);
-- No index on ts alone: every query is per sensor and a second index costs every insert.
