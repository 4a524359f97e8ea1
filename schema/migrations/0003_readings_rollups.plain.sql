-- Plain PostgreSQL: the roll-ups are views over date_bin with the same relation names and
-- columns as the TimescaleDB continuous aggregates, so application code never branches.
-- Only good/uncertain readings (quality < 2) feed the statistics; n_bad counts the rest.
CREATE VIEW readings_1m AS
SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       sensor_id,
       min(CASE WHEN quality < 2 THEN value END) AS min_value,
       max(CASE WHEN quality < 2 THEN value END) AS max_value,
       avg(CASE WHEN quality < 2 THEN value END) AS avg_value,
       (array_agg(value ORDER BY ts DESC) FILTER (WHERE quality < 2 AND value IS NOT NULL))[1]
           AS last_value,
       count(CASE WHEN quality < 2 THEN value END) AS n,
       sum(CASE WHEN quality >= 2 THEN 1 ELSE 0 END) AS n_bad
FROM readings
GROUP BY 1, 2;

CREATE VIEW readings_1h AS
SELECT date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       sensor_id,
       min(CASE WHEN quality < 2 THEN value END) AS min_value,
       max(CASE WHEN quality < 2 THEN value END) AS max_value,
       avg(CASE WHEN quality < 2 THEN value END) AS avg_value,
       (array_agg(value ORDER BY ts DESC) FILTER (WHERE quality < 2 AND value IS NOT NULL))[1]
           AS last_value,
       count(CASE WHEN quality < 2 THEN value END) AS n,
       sum(CASE WHEN quality >= 2 THEN 1 ELSE 0 END) AS n_bad
FROM readings
GROUP BY 1, 2;
