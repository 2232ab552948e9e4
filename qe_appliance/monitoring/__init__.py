"""Measurement: latency histograms per MCP method and per tool, Prometheus and JSON exports, alerts and the
dashboard's data (see monitor.Monitor)."""

from qe_appliance.monitoring.monitor import Monitor

__all__ = ["Monitor"]
