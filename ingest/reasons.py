"""Every reason ingest gives for refusing data. Stable codes: enterprises script against them.

MESSAGE reasons refuse a whole message; READING reasons refuse one reading and keep its
good neighbours. OUT_OF_RANGE is the exception that is stored anyway (quality bad, so
the sensor fault is on record) and still reported.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # whole message
    OVERSIZE = "oversize"                      # payload larger than ingest.max_payload_bytes
    UNDECODABLE = "undecodable"                # not UTF-8 JSON
    SCHEMA = "schema"                          # JSON of the wrong shape (field named in detail)
    TOO_MANY_READINGS = "too_many_readings"    # more than ingest.max_readings_per_message
    BAD_TOPIC = "bad_topic"                    # topic outside the contract
    UNKNOWN_GATEWAY = "unknown_gateway"        # gateway not in the registry (listed as pending)
    # one reading
    UNKNOWN_TAG = "unknown_tag"                # tag not registered for the enterprise (pending)
    FOREIGN_TAG = "foreign_tag"                # tag registered to another enterprise only
    NOT_A_NUMBER = "not_a_number"              # NaN, ±Inf, a string or other non-number
    BAD_TIMESTAMP = "bad_timestamp"            # unparseable, before 2000, or epoch seconds
    FUTURE_TIMESTAMP = "future_timestamp"      # more than ingest.max_future_s ahead
    BAD_QUALITY = "bad_quality"                # quality code not an integer 0..4
    OUT_OF_RANGE = "out_of_range"              # outside the sensor's physical range: stored bad


MESSAGE_REASONS = frozenset(
    {Reason.OVERSIZE, Reason.UNDECODABLE, Reason.SCHEMA, Reason.TOO_MANY_READINGS,
     Reason.BAD_TOPIC, Reason.UNKNOWN_GATEWAY}
)
STORED_ANYWAY = frozenset({Reason.OUT_OF_RANGE})

# OPC-style quality codes carried in readings.quality
Q_GOOD, Q_UNCERTAIN, Q_BAD, Q_SENSOR_FAULT, Q_MAINTENANCE = 0, 1, 2, 3, 4
