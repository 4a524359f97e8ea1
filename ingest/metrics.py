"""Prometheus metrics of the ingest path (served on /metrics by the app)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # *_created series double the output and nobody graphs them

MESSAGES = Counter("hw_ingest_messages_total", "MQTT messages received", ["dialect"])
READINGS_RECEIVED = Counter("hw_ingest_readings_received_total", "Readings decoded from messages")
READINGS_STORED = Counter("hw_ingest_readings_stored_total", "Readings newly stored")
READINGS_DUPLICATE = Counter("hw_ingest_readings_duplicate_total",
                             "Readings already stored (redelivery) or repeated in a batch")
READINGS_REJECTED = Counter("hw_ingest_readings_rejected_total", "Readings refused")
REJECTIONS = Counter("hw_ingest_rejections_total",
                     "Problems found, by reason (a refused message counts once)", ["reason"])
DEAD_LETTERS = Counter("hw_ingest_dead_letters_total", "Messages kept in dead_letters")
BATCH_READINGS = Histogram("hw_ingest_batch_readings", "Readings per stored batch",
                           buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000))
WRITE_SECONDS = Histogram("hw_ingest_write_seconds", "Batch transaction time (COPY to commit)",
                          buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STAGE_SECONDS = Histogram(
    "hw_ingest_stage_seconds",
    "Wall time of each stage of a batch: finalize (columns), evaluate (rules), wait (for "
    "the batch before it to copy), copy (readings), wait_previous (for the batch before it "
    "to commit), side_effects (gateways, dead letters), rules_write (warnings, alarms, "
    "events), commit, ack",
    ["stage"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
LAG_SECONDS = Histogram("hw_ingest_lag_seconds", "Broker receipt to commit, per message",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
EVENT_LAG = Gauge("hw_ingest_event_lag_seconds", "Commit time minus the newest reading's own time")
WRITE_YIELDS = Counter("hw_ingest_write_yields_total",
                       "Batches that rolled back their COPY to let the batch before them finish "
                       "(it failed after its own COPY and met this one's rows); written again")
WRITE_FAILURES = Counter("hw_ingest_write_failures_total", "Batch writes that failed and were retried")
CONNECTED = Gauge("hw_ingest_mqtt_connected", "1 while the collector is connected to the broker")
INFLIGHT = Gauge("hw_ingest_inflight_messages", "Messages received and not yet acknowledged")
