"""Grafana dashboards, generated from code: panels as data, series names from monitoring/exported.py.

`python -m deploy.generate` writes monitoring/dashboards/<uid>.json and the ConfigMap Grafana's sidecar
loads; tests check every query's series against the names the system exports, and
monitoring/render.py plots the same queries from a Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitoring import metrics as names
from monitoring.exported import FLINK_OPERATOR, flink

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DEAD_LETTERS_RE = f'{{__name__=~"{flink(names.DEAD_LETTERS)}_.+"}}'


@dataclass(frozen=True)
class Panel:
    """One time-series panel: a title, a unit and (PromQL, legend) targets."""

    title: str
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    description: str = ""
    stack: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _rate(name: str, window: str = "$__rate_interval") -> str:
    return f"sum(rate({flink(name)}[{window}]))"


PIPELINE_ROWS: tuple[Row, ...] = (
    Row("Ingestion", (
        Panel("Events in, states and scores out", (
            ("reaseq:events_in:rate1m", "events in"),
            ("reaseq:states_out:rate1m", "states out"),
            ("reaseq:scores_out:rate1m", "events scored")), unit="ops",
            description="Per second, from the job's counters (Flink reporter)."),
        Panel("Consumer lag (Kafka source backlog)", (
            ("reaseq:consumer_lag:records", "records not yet read"),
            ("sum(flink_taskmanager_job_task_operator_KafkaSourceReader_KafkaConsumer_records_lag_max)",
             "max lag per consumer")),
            description="The Flink autoscaler scales the job on this backlog and the operators' busy time."),
        Panel("Operator busy and back-pressured time", (
            ("max by (task_name) (flink_taskmanager_job_task_busyTimeMsPerSecond)", "busy {{task_name}}"),
            ("max by (task_name) (flink_taskmanager_job_task_backPressuredTimeMsPerSecond)",
             "back-pressured {{task_name}}")), unit="ms"),
    )),
    Row("Latency", (
        Panel("Event → score latency", (
            ("reaseq:event_to_score_ms:p50_5m", "p50 (5m)"),
            ("reaseq:event_to_score_ms:p99_5m", "p99 (5m)"),
            (f"max({flink(names.EVENT_TO_SCORE_MS)})", "latest")), unit="ms",
            description="Kafka timestamp of the event to the scores record; percentiles over scraped samples."),
        Panel("Score request latency (job → Serve)", (
            (f"max({flink(names.INFERENCE_LATENCY_MS)})", "latest batch"),
            (f"max(quantile_over_time(0.99, {flink(names.INFERENCE_LATENCY_MS)}[5m]))", "p99 (5m)")), unit="ms"),
        Panel("Pending score requests and batch size", (
            (f"sum({flink(names.PENDING_SCORES)})", "pending"),
            (f"max({flink(names.SCORE_BATCH_SIZE)})", "users per batch")), unit="short"),
    )),
    Row("Model serving", (
        Panel("Ranker batches and users scored", (
            ("sum(rate(ray_reaseq_ranker_batches_total[$__rate_interval]))", "forward passes"),
            ("sum(rate(ray_reaseq_ranker_users_scored_total[$__rate_interval]))", "users scored")), unit="ops"),
        Panel("Ranker forward pass", (
            ("histogram_quantile(0.5, sum by (le) (rate(ray_reaseq_ranker_batch_seconds_bucket[$__rate_interval])))",
             "p50"),
            ("reaseq:ranker_batch_seconds:p99_5m", "p99 (5m)")), unit="s"),
        Panel("Ranker state cache", (
            ("sum by (result) (rate(ray_reaseq_ranker_state_cache_total[$__rate_interval]))", "{{result}}"),),
            unit="ops", stack=True,
            description="hit: scored by one token's pass per new event; unchanged: no new event; miss: full pass."),
        Panel("Serve queue and replicas", (
            ("sum by (deployment) (ray_serve_deployment_queued_queries)", "queued {{deployment}}"),
            ("sum by (deployment) (ray_serve_num_ongoing_requests_at_replicas)", "ongoing {{deployment}}"),
            ("sum by (deployment) (ray_serve_deployment_replica_healthy)", "healthy replicas {{deployment}}")),
            description="Serve's autoscaler targets ongoing requests per replica (target_ongoing_requests)."),
        Panel("Inference errors", (
            (_rate(names.INFERENCE_ERRORS), "failed score requests (retried)"),), unit="ops"),
    )),
    Row("GPU", (
        Panel("GPU utilisation", (("avg by (instance) (ray_node_gpus_utilization)", "{{instance}}"),), unit="percent"),
        Panel("GPU memory used", (("sum by (instance) (ray_node_gram_used)", "{{instance}}"),), unit="decmbytes"),
    )),
    Row("Dead letters", (
        Panel("Dead letters by reason (since start)", (
            (f'sum by (reason) (label_replace({DEAD_LETTERS_RE}, "reason", "$1", "__name__", '
             f'"{flink(names.DEAD_LETTERS)}_(.+)"))', "{{reason}}"),), stack=True),
        Panel("Dead-letter ratio", (("reaseq:dead_letter_ratio:rate5m", "dead letters / events in"),),
              unit="percentunit"),
    )),
    Row("Knowledge and behaviour freshness", (
        Panel("Behaviour refreshes", (
            ("reaseq:behavior_refreshes:rate5m", "users refreshed"),
            (_rate(names.BEHAVIOR_REFRESH_ERRORS), "refresh errors")), unit="ops"),
        Panel("Behaviour staleness at score time", (
            ("reaseq:behavior_staleness_events:p99_15m", "p99 events since inference (15m)"),
            (f"max({flink(names.BEHAVIOR_REFRESH_LATENCY_MS)})", "refresh latency ms")), unit="short"),
        Panel("LLM calls from the stream (must stay 0)", ((_rate(names.LLM_CALLS), "calls/s"),), unit="ops"),
    )),
    Row("Checkpoints", (
        Panel("Checkpoints", (
            ("sum(flink_jobmanager_job_numberOfCompletedCheckpoints)", "completed"),
            ("sum(flink_jobmanager_job_numberOfFailedCheckpoints)", "failed"),
            ("sum(flink_jobmanager_job_numRestarts)", "job restarts"))),
        Panel("Last checkpoint duration", (("max(flink_jobmanager_job_lastCheckpointDuration)", "duration"),),
              unit="ms"),
    )),
)


def _panel(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict[str, Any]:
    return {
        "id": panel_id, "type": "timeseries", "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if panel.stack else 0,
            "stacking": {"mode": "normal" if panel.stack else "none"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(panel.targets)],
    }


def dashboard(uid: str, title: str, rows: tuple[Row, ...]) -> dict[str, Any]:
    """A Grafana dashboard (schemaVersion 39): one collapsed-free row per group, panels side by side."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        width = 24 // len(row.panels)
        for i, panel in enumerate(row.panels):
            panels.append(_panel(panel, next_id, i * width, y, width))
            next_id += 1
        y += 8
    return {
        "uid": uid, "title": title, "tags": ["reaseq"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": False, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def all_dashboards() -> dict[str, dict[str, Any]]:
    """uid → dashboard JSON."""
    return {"reaseq-pipeline": dashboard("reaseq-pipeline", "ReaSeq pipeline", PIPELINE_ROWS)}


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of a dashboard."""
    return [(p["title"], t["expr"]) for p in dash["panels"] if p.get("type") != "row" for t in p.get("targets", [])]


__all__ = ["FLINK_OPERATOR", "Panel", "Row", "all_dashboards", "dashboard", "queries"]
