"""The Prometheus series names the running system exports, derived from monitoring/metrics.py.

Checked against a real scrape of the pipeline (tests/test_monitoring_e2e.py):
- Flink's Prometheus reporter exports an operator metric `<name>` as `flink_taskmanager_job_task_operator_<name>`,
  counters and PyFlink distributions alike as gauges (a distribution in thread mode is the last value
  recorded, so percentiles come from `quantile_over_time` over the scraped samples).
- Ray exports a Serve counter `<name>` as `ray_<name>_total` and a histogram as `ray_<name>_{bucket,sum,count}`.
Dashboards and rules also use a few series the engines export on their own (ENGINE_SERIES).
"""

from __future__ import annotations

import re

from monitoring import metrics as names

FLINK_OPERATOR = "flink_taskmanager_job_task_operator_"
RAY = "ray_"
# Serve metrics registered as histograms (ray.util.metrics.Histogram); the others are counters
SERVE_HISTOGRAMS = frozenset({names.RANKER_BATCH_REQUESTS, names.RANKER_BATCH_SECONDS, names.BEHAVIOR_BATCH_SECONDS})
# job metrics that are families: one series per suffix (e.g. reaseq_dead_letters_<reason>)
JOB_FAMILIES = frozenset({names.DEAD_LETTERS})

# Series the engines export themselves, by source; `local` ones appear when the pipeline runs on one machine.
ENGINE_SERIES: dict[str, dict[str, bool]] = {
    "flink": {
        "flink_jobmanager_job_numberOfCompletedCheckpoints": True,
        "flink_jobmanager_job_numberOfFailedCheckpoints": True,
        "flink_jobmanager_job_lastCheckpointDuration": True,
        "flink_jobmanager_job_numRestarts": True,
        "flink_jobmanager_job_uptime": True,
        FLINK_OPERATOR + "pendingRecords": True,  # Kafka source backlog: what the Flink autoscaler reads
        FLINK_OPERATOR + "KafkaSourceReader_KafkaConsumer_records_lag_max": True,
        "flink_taskmanager_job_task_busyTimeMsPerSecond": True,
        "flink_taskmanager_job_task_backPressuredTimeMsPerSecond": True,
    },
    "ray": {
        "ray_serve_deployment_queued_queries": True,
        "ray_serve_num_ongoing_requests_at_replicas": True,
        "ray_serve_deployment_replica_healthy": True,
        "ray_serve_autoscaling_target_replicas": True,
        "ray_node_gpus_utilization": False,  # only on nodes with a GPU
        "ray_node_gram_used": False,
    },
    "kafka": {  # Strimzi's Kafka Exporter (cluster only)
        "kafka_consumergroup_lag": False,
    },
    "prometheus": {"up": True},
}


def flink(name: str) -> str:
    """Exported name of a job (operator) metric."""
    return FLINK_OPERATOR + name


def serve(name: str) -> list[str]:
    """Exported names of a Serve metric."""
    if name in SERVE_HISTOGRAMS:
        return [f"{RAY}{name}_bucket", f"{RAY}{name}_sum", f"{RAY}{name}_count"]
    return [f"{RAY}{name}_total"]


def project_series() -> set[str]:
    """Every series name the project's own code exports (families excluded: see `family_prefixes`)."""
    out = {flink(n) for n in names.JOB_METRICS}
    for name in names.SERVE_METRICS:
        out.update(serve(name))
    return out


def family_prefixes() -> set[str]:
    """Prefixes of job metric families, exported as <prefix>_<member>."""
    return {flink(n) + "_" for n in JOB_FAMILIES}


def engine_series(local_only: bool = False) -> set[str]:
    return {s for group in ENGINE_SERIES.values() for s, local in group.items() if local or not local_only}


def known(series: str) -> bool:
    """Is `series` a name the system exports (exactly, or as a member of a declared family)?"""
    if series in project_series() or series in engine_series():
        return True
    return any(series.startswith(p) and re.fullmatch(r"[a-z0-9_]+", series[len(p):]) for p in family_prefixes())


def known_regex(pattern: str) -> bool:
    """Is a `__name__=~"…"` pattern a declared family (`<prefix>.+`) or does it match a known name?"""
    for prefix in family_prefixes():
        if pattern in (prefix + ".+", prefix + ".*", prefix + "[a-z0-9_]+"):
            return True
    return any(re.fullmatch(pattern, s) for s in project_series() | engine_series())
