"""Warning lifecycle, escalation, notification outbox, HTTP API and console."""
