"""Metric names and helpers, Grafana dashboards, Prometheus rules (a leaf: anyone may import it)."""
