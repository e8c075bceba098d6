"""The PyFlink job: Kafka events → validate → per-user keyed state → micro-batched Ray Serve scoring → Kafka.

Graph (thread mode, one Python stage before and one after the shuffle):

  KafkaSource(reaseq.events, raw bytes)
    → Parse (ProcessFunction): Event, or a dead letter on a side output
    → keyBy(shard of user_id)
    → UserScoring (KeyedProcessFunction): per-user state in MapState (user → state, TTL), the
      pending score requests of the shard in ListState, flushed to the Ranker by size or time;
      a failed call keeps them and retries with backoff while Serve is down, and isolates the
      users Serve will not score into dead letters (streaming/scoring.py): no event is lost, no
      input stops the job, and a shard never blocks for good
    → one KafkaSink for reaseq.user-state, reaseq.user-scores and reaseq.dead-letter
      (EXACTLY_ONCE with a transactional id prefix, or AT_LEAST_ONCE in low-latency mode).

Keying by a shard of the user id (not the user id itself) lets the pending requests of many users
share one keyed ListState, so batches are big, checkpointed with the rest of the state, and ordered
per user (a user always maps to the same shard).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monitoring import metrics as names
from streaming.behavior import RefreshPolicy, behavior_request, events_since_inference, needs_refresh, with_inference
from streaming.events import REASONS, UNSCORABLE, DeadLetter, Event, dead_letter_key, parse_event
from streaming.scoring import PendingScore, RetryPolicy, ranker_request, score_pending, unscorable_letter
from streaming.state import DEFAULT_MAX_RECENT, UserState, apply_event
from streaming.topics import TopicsConfig

MODES = ("transactional", "low-latency")


@dataclass
class StreamConfig:
    """Everything the job needs, as data (`reaseq stream job --help` lists the knobs)."""

    bootstrap_servers: str
    serve_url: str
    known_items: list[str]
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    mode: str = "low-latency"
    checkpoint_dir: str = "/tmp/reaseq-checkpoints"
    checkpoint_interval_ms: int = 2000
    group_id: str = "reaseq-job"
    transactional_id_prefix: str = "reaseq-job"
    starting_offsets: str = "earliest"
    stopping_offsets: dict[int, int] | None = None  # bounded run (tests, benchmarks)
    shards: int = 4
    batch_size: int = 128
    max_wait_ms: int = 20
    # a failed scoring call (see streaming/scoring.py): retried after a backoff doubling from
    # retry_backoff_ms to retry_max_backoff_ms for as long as Serve is down; a batch that fails
    # max_batch_failures times while Serve answers (or that Serve rejects) is split to find the users
    # Serve will not score, which go to the dead-letter topic (reason `unscorable`). A shard holding
    # max_pending requests stops taking events until Serve takes some (backpressure on Kafka).
    retry_backoff_ms: int = 200
    retry_max_backoff_ms: int = 5_000
    max_batch_failures: int = 3
    max_pending: int = 2_048
    serve_timeout_s: float = 5.0
    top_k: int = 10
    coalesce: bool = True  # score only each user's newest state per batch (see streaming.scoring.coalesce)
    max_recent: int = DEFAULT_MAX_RECENT
    state_ttl_days: float = 30.0
    state_cache_size: int = 100_000  # users kept decoded in memory (write-through; keyed state stays the truth)
    parallelism: int = 1
    restore_from: str | None = None
    job_name: str = "reaseq-stream"
    extra_flink_config: dict[str, str] = field(default_factory=dict)
    # nearline behaviour inference: the BehaviorReasoner route, None = off;
    # a user is refreshed after `behavior_refresh_events` new events or `behavior_refresh_ms` (see
    # streaming/behavior.py); requests run in the background and never hold back a score
    behavior_url: str | None = None
    behavior_refresh_events: int = 5
    behavior_refresh_ms: int = 60_000
    behavior_batch_size: int = 64
    behavior_poll_ms: int = 50
    behavior_timeout_s: float = 10.0
    # extra Kafka client settings for the source and the sink (e.g. TLS: security.protocol, ssl.*)
    kafka_properties: dict[str, str] = field(default_factory=dict)
    # Flink's Prometheus reporter (job + Kafka connector metrics); None = off. It has no host option
    # and listens on all interfaces.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.shards < 1 or self.batch_size < 1:
            raise ValueError("shards and batch_size must be >= 1")
        if self.max_pending < self.batch_size:
            raise ValueError(f"max_pending ({self.max_pending}) must be >= batch_size ({self.batch_size})")
        self.retry_policy()
        RefreshPolicy(self.behavior_refresh_events, self.behavior_refresh_ms)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_backoff_ms, self.retry_max_backoff_ms, self.max_batch_failures)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def shard_of(user_id: str, shards: int) -> int:
    """Stable shard of a user id (crc32, same in every process and run)."""
    return zlib.crc32(user_id.encode()) % shards


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_events(env, cfg: StreamConfig, key_of: Callable[[Event], Any]):
    """The job's front: KafkaSource(events) → Parse, with dead letters on a side output.

    Returns ``(parsed, dead_tag)``: ``parsed`` carries ``(key_of(event), Event, Kafka timestamp)``
    tuples (pickled), ready for ``key_by(lambda v: v[0])``; ``parsed.get_side_output(dead_tag)`` are the
    dead letters as OUTPUT_TYPE rows. Take that side output after building the keyed operators: PyFlink
    adds a Python map for it, and the order operators are created in decides their generated ids (the
    ids checkpoints and savepoints are matched by).
    """
    from pyflink.common import Row, WatermarkStrategy
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext

    from streaming.kafka_io import OUTPUT_TYPE, RAW_TYPE, raw_kafka_source

    topics = cfg.topics
    known = frozenset(cfg.known_items)
    dead_tag = OutputTag("dead-letter", OUTPUT_TYPE)

    class Parse(ProcessFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            group = runtime_context.get_metrics_group()
            self.events_in = group.counter(names.EVENTS_IN)
            self.dead = {reason: group.counter(f"{names.DEAD_LETTERS}_{reason}") for reason in REASONS}

        def process_element(self, value, ctx):
            self.events_in.inc()
            result = parse_event(None if value[1] is None else bytes(value[1]), known, source_topic=topics.events)
            if isinstance(result, DeadLetter):
                self.dead[result.reason].inc()
                key = dead_letter_key(None if value[0] is None else bytes(value[0]))
                yield dead_tag, Row(topics.dead_letter, key, result.to_json())
                return
            yield key_of(result), result, int(value[4])

    source = raw_kafka_source(cfg.bootstrap_servers, topics.events, cfg.group_id, cfg.starting_offsets,
                              cfg.stopping_offsets, properties=cfg.kafka_properties)
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "events", type_info=RAW_TYPE)
    parsed = raw.process(Parse(), output_type=Types.PICKLED_BYTE_ARRAY()).name("parse")
    return parsed, dead_tag


def sink_outputs(outputs, cfg: StreamConfig) -> None:
    """The job's end: one KafkaSink for every OUTPUT_TYPE row (states, scores, dead letters)."""
    from streaming.kafka_io import keyed_kafka_sink

    sink = keyed_kafka_sink(cfg.bootstrap_servers, exactly_once=cfg.mode == "transactional",
                            transactional_id_prefix=cfg.transactional_id_prefix, properties=cfg.kafka_properties)
    outputs.sink_to(sink).name("outputs")


def build_job(env, cfg: StreamConfig) -> None:
    """Add the job's operators to a StreamExecutionEnvironment (call env.execute to run)."""
    from pyflink.common import Row
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, StateTtlConfig

    from inference.knowledge.backends import llm_calls_made
    from inference.serve.client import BehaviorClient, RankerClient
    from streaming.kafka_io import OUTPUT_TYPE

    topics = cfg.topics
    shards = cfg.shards
    parsed, dead_tag = parse_events(env, cfg, lambda event: shard_of(event.user_id, shards))

    class UserScoring(KeyedProcessFunction):
        """Per-user state and the shard's pending score requests.

        Keyed state is the source of truth (checkpointed). Two in-memory helpers only save state
        round trips: a write-through cache of user states (this instance is the only writer of its
        keys; empty after a restore, then filled from MapState) and per-shard counters of pending
        requests and armed timers (after a restore they start at zero: the restored timers still fire
        and flush whatever the restored ListState holds).
        """

        def open(self, runtime_context: RuntimeContext) -> None:
            users = MapStateDescriptor("users", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
            if cfg.state_ttl_days > 0:
                from pyflink.common.time import Time

                ttl = (StateTtlConfig.new_builder(Time.milliseconds(int(cfg.state_ttl_days * 86_400_000)))
                       .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite).build())
                users.enable_time_to_live(ttl)
            self.users = runtime_context.get_map_state(users)
            self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
            self.cache: dict[str, UserState] = {}
            self.pending_counts: dict[int, int] = {}
            self.armed: dict[int, int] = {}
            # one attempt per call: the operator retries with backoff itself, without blocking on sleeps
            self.client = RankerClient(cfg.serve_url, timeout_s=cfg.serve_timeout_s, retries=0)
            self.retry = cfg.retry_policy()
            self.failures: dict[int, int] = {}  # shard → failed flushes in a row while Serve answered probes
            self.retries: dict[int, int] = {}  # shard → failed flushes in a row (sets the backoff)
            group = runtime_context.get_metrics_group()
            self.m_duplicates = group.counter(names.EVENTS_DUPLICATE)
            self.m_states = group.counter(names.STATES_OUT)
            self.m_scores = group.counter(names.SCORES_OUT)
            self.m_batches = group.counter(names.SCORE_BATCHES)
            self.m_errors = group.counter(names.INFERENCE_ERRORS)
            self.m_unscorable = group.counter(f"{names.DEAD_LETTERS}_{UNSCORABLE}")
            # No Python gauges here: in thread mode Flink's reporter thread would call into the embedded
            # interpreter while the task thread runs it, and a scrape crashes the JVM (SIGSEGV in pemja).
            # Counters and distributions are Java objects updated from the task thread.
            # LLM requests this process made, counted in the backends themselves (must stay 0):
            self.m_llm = group.counter(names.LLM_CALLS)
            self.llm_calls_seen = llm_calls_made()
            self.m_batch_size = group.distribution(names.SCORE_BATCH_SIZE)
            self.m_latency = group.distribution(names.INFERENCE_LATENCY_MS)
            self.m_event_to_score = group.distribution(names.EVENT_TO_SCORE_MS)
            self.m_pending = group.distribution(names.PENDING_SCORES)  # the last value is exported
            self.m_staleness = group.distribution(names.BEHAVIOR_STALENESS_EVENTS)
            self.behavior = None
            if cfg.behavior_url:
                from concurrent.futures import ThreadPoolExecutor

                self.behavior = BehaviorClient(cfg.behavior_url, timeout_s=cfg.behavior_timeout_s)
                self.policy = RefreshPolicy(cfg.behavior_refresh_events, cfg.behavior_refresh_ms)
                # one background thread: a refresh request never blocks the element or timer that sent it
                self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="behavior")
                self.wanted: dict[int, dict[str, int]] = {}  # shard → users to refresh (in arrival order)
                self.in_flight: dict[int, tuple] = {}  # shard → (future, started, {user: events seen})
                self.polling: set[int] = set()
                self.m_refreshes = group.counter(names.BEHAVIOR_REFRESHES)
                self.m_refresh_errors = group.counter(names.BEHAVIOR_REFRESH_ERRORS)
                self.m_refresh_latency = group.distribution(names.BEHAVIOR_REFRESH_LATENCY_MS)

        def close(self) -> None:
            if getattr(self, "behavior", None) is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)

        def _state(self, user_id: str) -> UserState | None:
            state = self.cache.get(user_id)
            if state is None:
                raw = self.users.get(user_id)
                state = UserState.from_json(raw) if raw is not None else None
            return state

        def process_element(self, value, ctx):
            _, event, kafka_ts = value
            state, changed = apply_event(self._state(event.user_id), event, cfg.max_recent)
            if not changed:
                self.m_duplicates.inc()
                return
            encoded = state.to_json()
            self.users.put(event.user_id, encoded)
            if len(self.cache) >= cfg.state_cache_size:
                self.cache.clear()
            self.cache[event.user_id] = state
            self.m_states.inc()
            yield Row(topics.user_state, event.user_id.encode(), encoded)
            self.pending.add(PendingScore(state, event.event_id, kafka_ts).to_bytes())
            self.m_staleness.update(events_since_inference(state))
            shard = ctx.get_current_key()
            if self.behavior is not None:
                if needs_refresh(state, self.policy, _now_ms()):
                    self.wanted.setdefault(shard, {})[event.user_id] = state.events
                yield from self._behavior_step(ctx, shard)
            count = self.pending_counts.get(shard, 0) + 1
            self.pending_counts[shard] = count
            if count >= cfg.batch_size and not self.retries.get(shard):
                yield from self._flush(ctx, shard)
            elif shard not in self.armed:
                self._arm(ctx, shard, cfg.max_wait_ms)
            while self.pending_counts.get(shard, 0) >= cfg.max_pending:
                # backpressure: this shard holds all it may; wait for Serve instead of taking more events
                time.sleep(self.retry.delay_ms(self.retries.get(shard, 1)) / 1000)
                yield from self._flush(ctx, shard)

        def _arm(self, ctx, shard: int, delay_ms: int) -> None:
            due = ctx.timer_service().current_processing_time() + delay_ms
            ctx.timer_service().register_processing_time_timer(due)
            self.armed[shard] = due

        def on_timer(self, timestamp, ctx):
            shard = ctx.get_current_key()
            due = self.armed.get(shard) == timestamp
            if due:
                del self.armed[shard]
            if self.behavior is not None:
                self.polling.discard(shard)
                yield from self._behavior_step(ctx, shard)
            if due or not self.retries.get(shard):  # while backing off, only the backoff timer retries
                yield from self._flush(ctx, shard)

        def _behavior_step(self, ctx, shard: int):
            """Apply a finished refresh of this shard, send the next one, keep polling while work is left.

            In-flight and wanted refreshes live only in memory: after a restore a user is asked again on
            its next event (the refresh rule still holds), so nothing needs checkpointing.
            """
            flight = self.in_flight.get(shard)
            if flight is not None and flight[0].done():
                del self.in_flight[shard]
                future, started, asked = flight
                try:
                    response = future.result()
                except Exception:  # any failure: count it; the user is asked again on a later event
                    self.m_refresh_errors.inc()
                else:
                    self.m_refresh_latency.update(int((time.perf_counter() - started) * 1000))
                    now = _now_ms()
                    for result in response["results"]:
                        user = result.get("user_id")
                        state = self._state(user) if user in asked else None
                        if state is None or not result.get("items"):
                            continue
                        state = with_inference(state, result["items"], response["model_version"], asked[user], now)
                        encoded = state.to_json()
                        self.users.put(user, encoded)
                        self.cache[user] = state
                        self.m_refreshes.inc()
                        self.m_states.inc()
                        yield Row(topics.user_state, user.encode(), encoded)
            wanted = self.wanted.get(shard)
            if shard not in self.in_flight and wanted:
                users = list(wanted)[:cfg.behavior_batch_size]
                for user in users:
                    del wanted[user]
                # the newest state of each user (events may have arrived while it waited), if still behind
                states = [s for s in (self._state(u) for u in users) if s is not None and events_since_inference(s) > 0]
                if states:
                    self.in_flight[shard] = (self.executor.submit(self.behavior.infer, behavior_request(states)),
                                             time.perf_counter(), {s.user_id: s.events for s in states})
            if (shard in self.in_flight or self.wanted.get(shard)) and shard not in self.polling:
                due = ctx.timer_service().current_processing_time() + cfg.behavior_poll_ms
                ctx.timer_service().register_processing_time_timer(due)
                self.polling.add(shard)

        def _flush(self, ctx, shard: int):
            yield from self._flush_once(ctx, shard)
            self.m_pending.update(sum(self.pending_counts.values()))
            calls = llm_calls_made()
            if calls != self.llm_calls_seen:
                self.m_llm.inc(calls - self.llm_calls_seen)
                self.llm_calls_seen = calls

        def _flush_once(self, ctx, shard: int):
            raw = list(self.pending.get() or [])
            if not raw:
                self.pending_counts[shard] = 0
                return
            pending = [PendingScore.from_bytes(r) for r in raw]
            started = time.perf_counter()
            result = score_pending(pending, lambda newest: self.client.score(ranker_request(newest), top_k=cfg.top_k),
                                   self.client.probe, self.failures.get(shard, 0), self.retry, topics.user_scores,
                                   cfg.coalesce)
            if result.error:
                self.m_errors.inc()
            if result.records:
                self.m_latency.update(int((time.perf_counter() - started) * 1000 / result.calls))
                self.m_batches.inc()
                self.m_batch_size.update(len(result.records))
            for record in result.records:
                yield Row(*record)
            for group, error in result.unscorable:
                letter = unscorable_letter(group, error, topics.events)
                self.m_unscorable.inc()
                yield Row(topics.dead_letter, dead_letter_key(group[-1].state.user_id.encode()), letter.to_json())
            unanswered = {id(p) for p in result.kept} | {id(p) for group, _ in result.unscorable for p in group}
            scored = [p for p in pending if id(p) not in unanswered]
            now = _now_ms()
            for item in scored:
                self.m_event_to_score.update(max(0, now - item.event_kafka_ts))
            self.m_scores.inc(len(scored))
            if not result.kept:
                self.pending.clear()
                self.pending_counts[shard] = 0
                self.failures.pop(shard, None)
                self.retries.pop(shard, None)
                return
            if len(result.kept) < len(pending):
                self.pending.update([p.to_bytes() for p in result.kept])
            self.pending_counts[shard] = len(result.kept)
            self.retries[shard] = self.retries.get(shard, 0) + 1
            if result.counted:
                self.failures[shard] = self.failures.get(shard, 0) + 1
            if shard not in self.armed:
                self._arm(ctx, shard, self.retry.delay_ms(self.retries[shard]))

    scored = (parsed.key_by(lambda v: v[0], key_type=Types.INT())
              .process(UserScoring(), output_type=OUTPUT_TYPE).name("user-state-and-scores"))
    sink_outputs(scored.union(parsed.get_side_output(dead_tag)), cfg)


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
    """Build and start the job on a local Flink mini-cluster; returns the JobClient when not waiting."""
    from pyflink.datastream import StreamExecutionEnvironment

    from streaming.jvm_deps import resolve_jars
    from streaming.kafka_io import flink_configuration

    Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    extra = dict(cfg.extra_flink_config)
    if cfg.metrics_port is not None:
        extra.update(prometheus_reporter_config(cfg.metrics_port))
    conf = flink_configuration(resolve_jars(), checkpoint_dir=cfg.checkpoint_dir,
                               checkpoint_interval_ms=cfg.checkpoint_interval_ms, thread_mode=True,
                               parallelism=cfg.parallelism, restore_from=cfg.restore_from, extra=extra)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    build_job(env, cfg)
    if wait:
        env.execute(cfg.job_name)
        return None
    return env.execute_async(cfg.job_name)


def main(argv: list[str] | None = None) -> int:
    """Run the job in this process from a JSON config file (what `reaseq stream job` starts)."""
    import argparse

    from streaming.topics import TopicsConfig as _Topics

    parser = argparse.ArgumentParser(prog="python -m streaming.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="JSON file with the StreamConfig fields")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.config).read_text())
    data["topics"] = _Topics(**data.get("topics", {}))
    if data.get("stopping_offsets"):
        data["stopping_offsets"] = {int(k): int(v) for k, v in data["stopping_offsets"].items()}
    run_job(StreamConfig(**data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
