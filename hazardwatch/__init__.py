"""hazardwatch: IoT risk monitoring and early warning for work-safety supervision."""

__version__ = "0.1.0"
