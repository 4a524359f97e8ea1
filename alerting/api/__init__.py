"""The HTTP API (FastAPI) and the console's static files: see docs/alerting.md "HTTP API".

`create_app(settings)` builds the app; `hazardwatch serve` runs it beside the collector.
"""

from alerting.api.app import create_app

__all__ = ["create_app"]
