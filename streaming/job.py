"""The PyFlink job graph: Kafka events → validate → per-user keyed state → background Ray Serve calls → Kafka.

Graph (thread mode, one Python stage, after the shuffle; the operator in streaming/operators.py,
configuration in streaming/config.py):

  KafkaSource(reaseq.events, raw bytes, with the shard of the JSON's user_id read in Java)
    → keyBy(shard), in Java
    → UserScoring (KeyedProcessFunction): the event, or a dead letter (streaming/events.py); per-user
      state in MapState (TTL), the shard's owed scores in ListState; one Ranker call in flight per
      shard while events keep flowing (its batch grows with the load), the nearline behaviour refresh
      beside it; a failed call is retried with backoff while Serve is down, and the users Serve will
      not score become dead letters (streaming/scoring.py)
    → one KafkaSink for reaseq.user-state, reaseq.user-scores and reaseq.dead-letter
      (EXACTLY_ONCE with a transactional id prefix, or AT_LEAST_ONCE in low-latency mode).

Keying by a shard of the user id (not the user id itself) lets the owed scores of many users share
one keyed ListState, so batches are big, checkpointed with the rest of the state, and ordered per user
(a user always maps to the same shard).
"""

from __future__ import annotations

from pathlib import Path

from streaming.config import MODES, StreamConfig, shard_of

__all__ = ["MODES", "StreamConfig", "build_job", "main", "run_job", "shard_of"]


def build_job(env, cfg: StreamConfig) -> None:
    """Add the job's operators to a StreamExecutionEnvironment (call env.execute to run)."""
    from pyflink.common import WatermarkStrategy

    from streaming.kafka_io import OUTPUT_TYPE, SHARDED_TYPE, keyed_by_shard, keyed_kafka_sink, raw_kafka_source
    from streaming.operators import UserScoring

    source = raw_kafka_source(cfg.bootstrap_servers, cfg.topics.events, cfg.group_id, cfg.starting_offsets,
                              cfg.stopping_offsets, properties=cfg.kafka_properties, shards=cfg.shards)
    sharded = env.from_source(source, WatermarkStrategy.no_watermarks(), "events", type_info=SHARDED_TYPE)
    outputs = keyed_by_shard(sharded).process(UserScoring(cfg), output_type=OUTPUT_TYPE).name("user-state-and-scores")
    sink = keyed_kafka_sink(cfg.bootstrap_servers, exactly_once=cfg.mode == "transactional",
                            transactional_id_prefix=cfg.transactional_id_prefix, properties=cfg.kafka_properties)
    outputs.sink_to(sink).name("outputs")


def prometheus_reporter_jar() -> Path:
    """Flink's Prometheus reporter jar, shipped in PyFlink's plugins folder."""
    import pyflink

    jars = sorted((Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus").glob("*.jar"))
    if not jars:
        raise FileNotFoundError("flink-metrics-prometheus jar not found in PyFlink's plugins/metrics-prometheus")
    return jars[0]


def prometheus_reporter_config(port: int) -> dict[str, str]:
    """Flink settings that turn the Prometheus reporter on (the jar must be on the classpath)."""
    return {"metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
            "metrics.reporter.prom.port": str(port)}


def run_job(cfg: StreamConfig, wait: bool = True):
    """Build and start the job: on its own local mini-cluster (`flink_cluster: local`), or inside the Flink
    cluster that runs this driver (`application`: every Flink setting, jar and checkpoint location is the
    cluster's). Returns the JobClient when not waiting."""
    from pyflink.datastream import StreamExecutionEnvironment

    if cfg.flink_cluster == "application":
        env = StreamExecutionEnvironment.get_execution_environment()
    else:
        env = StreamExecutionEnvironment.get_execution_environment(local_configuration(cfg))
    build_job(env, cfg)
    if wait:
        env.execute(cfg.job_name)
        return None
    return env.execute_async(cfg.job_name)


def local_configuration(cfg: StreamConfig):
    """The mini-cluster's configuration: jars resolved from the POM, checkpoints, restarts, loopback."""
    from streaming.jvm_deps import resolve_jars
    from streaming.kafka_io import flink_configuration, is_uri

    if not is_uri(cfg.checkpoint_dir):
        Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    extra = dict(cfg.extra_flink_config)
    if cfg.metrics_port is not None:
        extra.update(prometheus_reporter_config(cfg.metrics_port))
    return flink_configuration(resolve_jars(), checkpoint_dir=cfg.checkpoint_dir,
                               checkpoint_interval_ms=cfg.checkpoint_interval_ms, thread_mode=True,
                               parallelism=cfg.parallelism, restore_from=cfg.restore_from, extra=extra)


def main(argv: list[str] | None = None) -> int:
    """Run the job in this process from a JSON config file (what `reaseq stream job` starts)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m streaming.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="JSON file with the StreamConfig fields")
    args = parser.parse_args(argv)
    run_job(StreamConfig.from_json(Path(args.config).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
