"""MQTT collectors: decode, validate, normalise, batch, store, dead-letter."""
