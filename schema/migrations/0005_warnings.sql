-- Warnings (预警): one row per episode per site and cause. Alarms (报警): the sensor
-- conditions inside a warning. Written by the rule engine in the same transaction as the
-- readings that caused them; the lifecycle columns (acknowledge, close, shelve) are driven
-- by alerting.

CREATE TABLE warnings (
    id              bigserial PRIMARY KEY,
    site_id         int NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    cause           text NOT NULL,                      -- rule pack cause name
    kind            text NOT NULL CHECK (kind IN ('process', 'sensor_fault', 'data_interruption')),
    level           smallint NOT NULL CHECK (level BETWEEN 1 AND 4),  -- 1 blue .. 4 red
    active          boolean NOT NULL DEFAULT true,      -- some condition holds now
    acknowledged    boolean NOT NULL DEFAULT false,
    opened_at       timestamptz NOT NULL,               -- event time of the first condition
    raised_at       timestamptz NOT NULL DEFAULT now(), -- processing time it was raised
    updated_at      timestamptz NOT NULL DEFAULT now(),
    cleared_at      timestamptz,                        -- event time of the last clear
    closed_at       timestamptz,
    count           int NOT NULL DEFAULT 1,             -- activations within the episode
    peak_value      float8,
    peak_sensor_id  int REFERENCES sensors (id) ON DELETE SET NULL,
    detail          jsonb NOT NULL DEFAULT '{}'
);
-- One open (not closed) warning per site and cause: repeats update it.
CREATE UNIQUE INDEX warnings_one_open ON warnings (site_id, cause) WHERE closed_at IS NULL;
CREATE INDEX warnings_open_level ON warnings (level DESC, raised_at) WHERE closed_at IS NULL;

CREATE TABLE alarms (
    id          bigserial PRIMARY KEY,
    warning_id  bigint NOT NULL REFERENCES warnings (id) ON DELETE CASCADE,
    sensor_id   int REFERENCES sensors (id) ON DELETE CASCADE,
    gateway_id  int REFERENCES gateways (id) ON DELETE CASCADE,
    condition   text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    raised_at   timestamptz NOT NULL,                  -- event time
    cleared_at  timestamptz,
    value       float8,
    peak_value  float8,
    detail      jsonb NOT NULL DEFAULT '{}',
    CHECK ((sensor_id IS NULL) <> (gateway_id IS NULL))
);
-- One active alarm per warning, source and condition (a condition may feed two causes).
CREATE UNIQUE INDEX alarms_one_active_sensor ON alarms (warning_id, sensor_id, condition)
    WHERE active AND sensor_id IS NOT NULL;
CREATE UNIQUE INDEX alarms_one_active_gateway ON alarms (warning_id, gateway_id, condition)
    WHERE active AND gateway_id IS NOT NULL;
CREATE INDEX alarms_warning ON alarms (warning_id);
CREATE INDEX alarms_sensor ON alarms (sensor_id, raised_at DESC);
