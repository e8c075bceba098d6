"""`reaseq bench stream`: the pipeline's throughput and latency beside what Kafka alone does, on one broker.

One run starts one embedded Kafka and one local Ray Serve (the ranker artifact given, never trained
here) and repeats `runs` rounds; each round measures, in this order:

(a) Kafka passthrough ceilings on that broker:
    - a plain kafka-python consume→produce loop (acks=all) copying N pre-produced events to another topic;
    - Kafka's own ProducerPerformance (N records of 200 B, --throughput -1, acks=all) and
      ConsumerPerformance reading them back, run as `java -cp <kafka-tools jar>:<broker jars> <class>`.
(b) the pipeline's maximum sustained events/s with scoring: N ML-100K events pre-produced to fresh
    topics, then the Flink job started (JobProcess); events/s between the first and the last scores
    record the OutputMonitor sees (read_committed), and from job start, with the start-up apart.
(c) event→score latency (monitor arrival − the event's Kafka timestamp) at fixed replay rates for a
    fixed time each, on the same, now warm job and topics; only the events of a step count for it,
    and a step "kept up" when every event it sent was scored within the settle time.

(b) and (c) run for every (design, mode). Medians over rounds and every run go to
bench/results/stream.json; `markdown_table` renders the summary.

Kafka's perf tools are in `org.apache.kafka:kafka-tools`, which is not among the broker jars; the
bench resolves it with Maven into the jar cache once. kafka-tools 4.4.0 is not on Maven Central
(kafka_2.13 4.4.0 is), so it falls back to 4.3.1, which runs against the 4.4.0 client jars.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.cpu import ROLES, cpu_by_role, java_below, per_event_us
from bench.results import RESULTS_DIR
from bench.results import write_result as write_json
from bench.stages import python_stage_costs
from streaming.config import MODES, StreamConfig
from streaming.pipeline import JobProcess, OutputMonitor
from streaming.scoring import covered_events
from streaming.topics import TopicsConfig, ensure_topics

RESULT_NAME = "stream.json"
# What the job scores with, each a row of the tables (the job itself is the same):
# - noop: a no-op Ranker (NoopRanker below: same protocol, fixed items, no model): the plumbing ceiling;
# - ranker: the Ray Serve Ranker;
# - ranker+refresh: the Ranker, and the nearline behaviour refresh through the BehaviorReasoner.
DESIGNS = ("noop", "ranker", "ranker+refresh")


def _pom_property(name: str) -> str | None:
    """A version property pinned in streaming/jvm/pom.xml (None where the package is installed without the
    repository's JVM sources, e.g. in the images: the CLI must still start there)."""
    import xml.etree.ElementTree as ElementTree

    from streaming.jvm_deps import POM_PATH

    if not POM_PATH.is_file():
        return None
    root = ElementTree.parse(POM_PATH).getroot()
    found = root.find(f"{{http://maven.apache.org/POM/4.0.0}}properties/{{http://maven.apache.org/POM/4.0.0}}{name}")
    return found.text.strip() if found is not None and found.text else None


PERF_TOOLS_FALLBACK_VERSION = _pom_property("kafka-tools.version")  # pinned in streaming/jvm/pom.xml
AP_LOADER_VERSION = _pom_property("ap-loader.version")  # async-profiler for --profile-dir, pinned there too
PERF_RECORD_SIZE = 200
JAVA_TOOL_OPTS = ("-Xmx512m", "-Duser.language=en", "-Duser.country=US", "-Djava.awt.headless=true")


@dataclass
class StreamBenchOptions:
    """What `reaseq bench stream` measures (`--help` lists them)."""

    events: int = 20_000
    runs: int = 3
    rates: tuple[float, ...] = (500.0, 1000.0, 2000.0)
    step_seconds: float = 20.0
    settle_seconds: float = 10.0
    modes: tuple[str, ...] = MODES
    designs: tuple[str, ...] = DESIGNS
    artifact: str = "ml-100k"
    behavior_artifact: str = "ml-100k"
    event_bytes: int = 200
    checkpoint_interval_ms: int = 2000
    timeout_seconds: float = 300.0
    perf_tools: bool = True
    job_settings: dict[str, Any] = field(default_factory=dict)  # StreamConfig fields (shards, batch_size, …)
    flink_conf: dict[str, str] = field(default_factory=dict)  # extra Flink configuration for the job
    work_dir: Path | None = None
    out: Path = Path("bench/results")
    profile_dir: Path | None = None  # async-profiler on the job's JVM in round 1 of each design and mode,
    # from a third of (b) on (past the JIT warm-up) for profile_seconds
    profile_seconds: float = 10.0

    def validate(self) -> None:
        if self.events < 1 or self.runs < 1:
            raise ValueError("--events and --runs must be >= 1")
        if any(r <= 0 for r in self.rates) or self.step_seconds <= 0:
            raise ValueError("--rates and --step-seconds must be > 0")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        for design in self.designs:
            if design not in DESIGNS:
                raise ValueError(f"unknown design {design!r}; choose from {DESIGNS}")
        fixed = {"bootstrap_servers", "serve_url", "known_items", "topics", "mode", "checkpoint_dir",
                 "checkpoint_interval_ms", "group_id", "transactional_id_prefix", "extra_flink_config", "job_name",
                 # a bounded or restored job would measure something else; the reporter binds all interfaces
                 "stopping_offsets", "restore_from", "metrics_port"}
        unknown = set(self.job_settings) - (set(StreamConfig.__dataclass_fields__) - fixed)
        if unknown:
            raise ValueError(f"--job-set cannot set {sorted(unknown)} (not a StreamConfig field, or set by the bench)")


# -- pure helpers (unit-tested) ------------------------------------------------------------------------

_PRODUCER_FINAL = re.compile(
    r"(?P<records>\d+) records sent, (?P<records_per_s>[\d.]+) records/sec \((?P<mb_per_s>[\d.]+) MB/sec\), "
    r"(?P<avg_latency_ms>[\d.]+) ms avg latency, (?P<max_latency_ms>[\d.]+) ms max latency, "
    r"(?P<p50_ms>\d+) ms 50th, (?P<p95_ms>\d+) ms 95th, (?P<p99_ms>\d+) ms 99th, (?P<p999_ms>\d+) ms 99.9th")

_CONSUMER_FIELDS = {"data.consumed.in.MB": "mb", "MB.sec": "mb_per_s", "data.consumed.in.nMsg": "records",
                    "nMsg.sec": "records_per_s", "rebalance.time.ms": "rebalance_ms", "fetch.time.ms": "fetch_ms",
                    "fetch.MB.sec": "fetch_mb_per_s", "fetch.nMsg.sec": "fetch_records_per_s"}


def parse_producer_perf(output: str) -> dict[str, float]:
    """The summary line of ProducerPerformance ('N records sent, X records/sec (… MB/sec), … 99.9th.')."""
    matches = list(_PRODUCER_FINAL.finditer(output))
    if not matches:
        raise ValueError(f"no ProducerPerformance summary line in:\n{output[-2000:]}")
    found = matches[-1].groupdict()
    return {key: (int(value) if key == "records" else float(value)) for key, value in found.items()}


def parse_consumer_perf(output: str) -> dict[str, float]:
    """ConsumerPerformance's CSV-like header ('start.time, end.time, …') and the data line under it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("start.time"):
            header = [h.strip() for h in line.split(",")]
            values = [v.strip() for v in lines[i + 1].split(",")]
            if len(values) != len(header):
                break
            row = dict(zip(header, values, strict=True))
            parsed: dict[str, float] = {}
            for name, key in _CONSUMER_FIELDS.items():
                if name in row:
                    parsed[key] = int(row[name]) if key == "records" else float(row[name])
            if "records_per_s" not in parsed:
                break
            return parsed
    raise ValueError(f"no ConsumerPerformance result line in:\n{output[-2000:]}")


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are there (None when there are none)."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> list[float | None]:
    """Linear-interpolated percentiles (numpy's default, as the OutputMonitor uses); None when empty."""
    if not values:
        return [None for _ in qs]
    import numpy as np

    return [float(np.percentile(np.asarray(values, dtype=float), q)) for q in qs]


def rate_between(arrivals_ms: Sequence[int]) -> float | None:
    """Events/s between the first and the last arrival.

    Records that arrived with the first one (the first poll, or the first committed transaction) are
    not counted: they were produced before the window opened. None with fewer than two distinct times.
    """
    if not arrivals_ms:
        return None
    first, last = min(arrivals_ms), max(arrivals_ms)
    if last <= first:
        return None
    later = sum(1 for a in arrivals_ms if a > first)
    return later / ((last - first) / 1000.0)


def encode_event(event: Any, size: int = 0) -> bytes:
    """An event's JSON, padded to `size` bytes with an unknown field ('pad', ignored by the job)."""
    body = asdict(event)
    raw = json.dumps(body, separators=(",", ":")).encode()
    room = size - len(raw) - len(',"pad":""')
    if room <= 0:
        return raw
    return json.dumps({**body, "pad": "x" * room}, separators=(",", ":")).encode()


def retag(event: Any, cycle: int) -> Any:
    """The event with a distinct event_id for the `cycle`-th pass over the data (the job dedups by id)."""
    from dataclasses import replace

    return event if cycle == 0 else replace(event, event_id=f"{event.event_id}~{cycle}")


def take_events(events: Sequence[Any], start: int, count: int) -> list[Any]:
    """`count` events from position `start` of an endless, id-retagged repetition of `events`."""
    n = len(events)
    return [retag(events[i % n], i // n) for i in range(start, start + count)]


# -- markdown ------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def markdown_table(result: dict[str, Any]) -> str:
    """Three tables: Kafka ceilings, pipeline throughput (with ratios), latency at fixed rates."""
    kafka = result["kafka"]
    runs = result["options"]["runs"]
    n = result["options"]["events"]
    lines = [f"**Kafka passthrough on the same broker** ({n:,} events, median of {runs} run(s))", "",
             "| measurement | events/s | all runs |", "|---|---:|---|"]
    loop = kafka["kafka_python_loop"]
    lines.append(f"| kafka-python consume→produce loop (acks=all, {loop.get('event_bytes', '?')} B) | "
                 f"{_fmt(loop.get('median_events_per_s'))} | "
                 f"{', '.join(_fmt(r.get('events_per_s')) for r in loop['runs'])} |")
    tools = kafka.get("perf_tools", {})
    version = tools.get("version") or "n/a"
    for key, label, rate_key in (("producer_perf", f"ProducerPerformance {version} (200 B, acks=all)",
                                  "records_per_s"),
                                 ("consumer_perf", f"ConsumerPerformance {version} (incl. group join)",
                                  "records_per_s"),
                                 ("consumer_perf", f"ConsumerPerformance {version} (fetch only)",
                                  "fetch_records_per_s")):
        part = kafka.get(key) or {}
        if not part.get("runs"):
            lines.append(f"| {label} | – | {tools.get('note', 'not run')} |")
            continue
        lines.append(f"| {label} | {_fmt(part.get('median_' + rate_key))} | "
                     f"{', '.join(_fmt(r.get(rate_key)) for r in part['runs'])} |")

    lines += ["", "**Pipeline, maximum sustained throughput with scoring** (pre-produced events, fresh job)", "",
              "| design | mode | events/s first→last score | events/s from job start | start-up s | "
              "÷ kafka-python loop | ÷ ProducerPerformance | all runs (first→last) |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in result["pipeline"]:
        all_runs = ", ".join("error" if r.get("error") else _fmt(r.get("events_per_s")) for r in row["runs"])
        lines.append(f"| {row['design']} | {row['mode']} | {_fmt(row.get('median_events_per_s'))} | "
                     f"{_fmt(row.get('median_events_per_s_from_start'))} | {_fmt(row.get('median_startup_s'), 1)} | "
                     f"{_fmt(row.get('ratio_to_kafka_python_loop'), 2)} | "
                     f"{_fmt(row.get('ratio_to_producer_perf'), 2)} | {all_runs} |")

    lines += ["", "**Where the cores went during (b)**: CPU µs per event by process, from the first scores to the last "
              "(/proc; the bench process holds the producer and the output monitor)", "",
              "| design | mode | " + " | ".join(ROLES) + " | total | behaviour staleness p99 (events) |",
              "|---|---|" + "---:|" * (len(ROLES) + 2)]
    for row in result["pipeline"]:
        cpu = row.get("median_cpu_us_per_event") or {}
        total = sum(v for v in cpu.values() if v is not None) if cpu else None
        lines.append(f"| {row['design']} | {row['mode']} | " + " | ".join(_fmt(cpu.get(r)) for r in ROLES) +
                     f" | {_fmt(total)} | {_fmt(row.get('median_staleness_events_p99'), 1)} |")

    stages = result.get("python_stages_us")
    if stages:
        python_total = sum(stages.values())
        lines += ["", "**The job's CPU per event, by stage** (µs; the Python stages timed outside Flink on the same "
                  "events, the rest is the job's CPU from the table above minus them: Flink, PyFlink's Java↔Python "
                  "crossings, the Kafka source and sink, the HTTP client)", "",
                  "| design | mode | " + " | ".join(stages) + " | Flink, crossings, Kafka clients, HTTP | job total |",
                  "|---|---|" + "---:|" * (len(stages) + 2)]
        for row in result["pipeline"]:
            job = (row.get("median_cpu_us_per_event") or {}).get("job")
            rest = None if job is None else job - python_total
            lines.append(f"| {row['design']} | {row['mode']} | " + " | ".join(_fmt(v, 1) for v in stages.values()) +
                         f" | {_fmt(rest)} | {_fmt(job)} |")

    profiled = [(row, r["profile"]) for row in result["pipeline"] for r in row["runs"]
                if r.get("profile", {}).get("components")]
    if profiled:
        names = list(dict.fromkeys(name for _, p in profiled for name in p["components"]))
        lines += ["", "**The job's JVM, sampled by async-profiler during (b), round 1** (share of CPU samples per "
                  "part of the job, by the innermost frame that names one; flame graphs beside the JSON)", "",
                  "| part | " + " | ".join(f"{row['design']}, {row['mode']}" for row, _ in profiled) + " |",
                  "|---|" + "---:|" * len(profiled)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{p['components'].get(name, 0):.0%}" for _, p in profiled) + " |")

    secs = result["options"]["step_seconds"]
    lines += ["", f"**Event→score latency at fixed rates** ({secs:g} s per step, warm job; "
              f"checkpoint interval {result['options']['checkpoint_interval_ms']} ms)", "",
              "| design | mode | target events/s | sent events/s | p50 ms | p99 ms | kept up | drain s | "
              "p99 all runs | staleness p99 (events) |", "|---|---|---:|---:|---:|---:|---|---:|---|---:|"]
    for row in result["latency"]:
        kept = f"{row['kept_up_runs']}/{len(row['runs'])}"
        all_p99 = ", ".join("error" if r.get("error") else _fmt(r.get("p99_ms")) for r in row["runs"])
        lines.append(f"| {row['design']} | {row['mode']} | {row['rate']:,.0f} | {_fmt(row.get('median_sent_rate'))} | "
                     f"{_fmt(row.get('median_p50_ms'))} | {_fmt(row.get('median_p99_ms'))} | {kept} | "
                     f"{_fmt(row.get('median_drain_s'), 1)} | {all_p99} | "
                     f"{_fmt(row.get('median_staleness_events_p99'), 1)} |")
    lines += ["", f"machine: {result['machine']}; {result['cpu_count']} CPUs; load average at start "
              f"{result['loadavg_start']}, at end {result.get('loadavg_end')}; model {result.get('model_version')}",
              f"command: `{result.get('command', '')}`"]
    tuned = {**result["options"].get("job_settings", {}), **result["options"].get("flink_conf", {})}
    if tuned:
        lines.append("job settings: " + ", ".join(f"{k}={v}" for k, v in tuned.items()))
    return "\n".join(lines)


def write_result(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """bench/results/stream.json, with commit and machine (the result names its own command)."""
    return write_json(result, RESULT_NAME, out_dir, command=result.get("command"))


# -- summaries -----------------------------------------------------------------------------------------

def summarize(result: dict[str, Any]) -> None:
    """Add medians over runs and the (b)/(a) ratios to a result holding every run."""
    kafka = result["kafka"]
    loop = kafka["kafka_python_loop"]
    loop["median_events_per_s"] = median(r.get("events_per_s") for r in loop["runs"])
    producer = kafka["producer_perf"]
    producer["median_records_per_s"] = median(r.get("records_per_s") for r in producer["runs"])
    consumer = kafka["consumer_perf"]
    consumer["median_records_per_s"] = median(r.get("records_per_s") for r in consumer["runs"])
    consumer["median_fetch_records_per_s"] = median(r.get("fetch_records_per_s") for r in consumer["runs"])
    for row in result["pipeline"]:
        ok = [r for r in row["runs"] if not r.get("error")]
        row["median_events_per_s"] = median(r.get("events_per_s") for r in ok)
        row["median_events_per_s_from_start"] = median(r.get("events_per_s_from_start") for r in ok)
        row["median_startup_s"] = median(r.get("startup_s") for r in ok)
        row["ratio_to_kafka_python_loop"] = ratio(row["median_events_per_s"], loop["median_events_per_s"])
        row["ratio_to_producer_perf"] = ratio(row["median_events_per_s"], producer["median_records_per_s"])
        row["median_cpu_us_per_event"] = {role: median(r.get("cpu_us_per_event", {}).get(role) for r in ok)
                                          for role in ROLES}
        if any("staleness_events_p99" in r for r in ok):
            row["median_staleness_events_p99"] = median(r.get("staleness_events_p99") for r in ok)
    for row in result["latency"]:
        ok = [r for r in row["runs"] if not r.get("error")]
        row["median_p50_ms"] = median(r.get("p50_ms") for r in ok)
        row["median_p99_ms"] = median(r.get("p99_ms") for r in ok)
        row["median_sent_rate"] = median(r.get("sent_rate") for r in ok)
        row["median_drain_s"] = median(r.get("drain_s") for r in ok)
        row["kept_up_runs"] = sum(1 for r in ok if r.get("kept_up"))
        if any("staleness_events_p99" in r for r in ok):
            row["median_staleness_events_p99"] = median(r.get("staleness_events_p99") for r in ok)


# -- the parts that touch Kafka, Flink, Serve ------------------------------------------------------------

class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[bench stream {time.monotonic() - self.started:7.1f}s] {message}", file=self.out, flush=True)


class ScoreTimes(OutputMonitor):
    """The OutputMonitor of scores and dead letters (not states), remembering when each event's first scores
    record arrived."""

    def __init__(self, bootstrap_servers: str, topics: TopicsConfig) -> None:
        super().__init__(bootstrap_servers, topics, watch_states=False)
        self.first_seen: dict[str, tuple[int, int]] = {}  # event_id → (arrival ms, event→score ms)
        self.duplicates = 0

    def _observe_scores(self, body: dict[str, Any], now_ms: int) -> None:
        super()._observe_scores(body, now_ms)
        for event_id, kafka_ts in covered_events(body):
            if event_id in self.first_seen:
                self.duplicates += 1
            else:
                self.first_seen[event_id] = (now_ms, max(0, now_ms - kafka_ts))

    def seen(self, event_ids: Sequence[str]) -> list[tuple[int, int]]:
        with self._lock:
            return [self.first_seen[e] for e in event_ids if e in self.first_seen]

    def count(self, event_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for e in event_ids if e in self.first_seen)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 4) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="reaseq-bench")
    try:
        for name in names:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1, "configs": {}}},
                                timeout_ms=30_000)
        admin.wait_for_topics(list(names), timeout_ms=30_000)
    finally:
        admin.close()


def new_producer(bootstrap: str):
    """The replay's producer settings: idempotent, acks=all, linger 5 ms, 64 KiB batches."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                         batch_size=64 * 1024, client_id="reaseq-bench")


def send_records(producer, topic: str, records: Sequence[tuple[bytes, bytes]], rate: float | None) -> float:
    """Send (key, value) records, paced at `rate`/s (None: at once), flushed; returns the seconds it took."""
    start = time.monotonic()
    for i, (key, value) in enumerate(records):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.send(topic, key=key, value=value)
    producer.flush()
    return time.monotonic() - start


def kafka_python_loop(bootstrap: str, records: Sequence[tuple[bytes, bytes]], timeout_s: float) -> dict[str, Any]:
    """Pre-produce the records, then copy them topic → topic with a plain consume→produce loop."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streaming.pipeline import end_offsets

    tag = _tag()
    source, target = f"bench-loop-in-{tag}", f"bench-loop-out-{tag}"
    create_topics(bootstrap, [source, target])
    producer = new_producer(bootstrap)
    try:
        send_records(producer, source, records, None)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50, client_id="reaseq-bench-loop")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=64 * 1024,
                             client_id="reaseq-bench-loop")
    try:
        consumer.assign([TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source))])
        copied = 0
        start = time.monotonic()
        deadline = start + timeout_s
        while copied < len(records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"kafka-python loop copied {copied} of {len(records)} in {timeout_s:.0f} s")
            for messages in consumer.poll(timeout_ms=100, max_records=5000).values():
                for message in messages:
                    producer.send(target, key=message.key, value=message.value)
                copied += len(messages)
        producer.flush()
        seconds = time.monotonic() - start
    finally:
        producer.close()
        consumer.close()
    landed = sum(end_offsets(bootstrap, target).values())
    return {"events": copied, "landed": landed, "seconds": round(seconds, 3), "events_per_s": copied / seconds}


def kafka_version(broker_dir: Path) -> str | None:
    """The Kafka version of the broker jars (from kafka-clients-<version>.jar)."""
    for jar in sorted(Path(broker_dir).glob("kafka-clients-*.jar")):
        return jar.name[len("kafka-clients-"):-len(".jar")]
    return None


def resolve_perf_tools(broker_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Find or fetch (Maven, once, into the jar cache) the kafka-tools jar holding the perf tools.

    Tries the broker's version first, then PERF_TOOLS_FALLBACK_VERSION. Returns {jar, version, note};
    jar is None when neither could be had (the bench then runs without them and says why).
    """
    from streaming.jvm_deps import default_cache_dir, fetch_jar

    present = [p for p in Path(broker_dir).glob("kafka-tools-*.jar") if not p.name.startswith("kafka-tools-api")]
    if present:
        jar = present[0]
        return {"jar": str(jar), "version": jar.name[len("kafka-tools-"):-len(".jar")], "note": "broker jars"}
    cache = (cache_dir or default_cache_dir()) / "jvm"
    wanted = [v for v in (kafka_version(broker_dir), PERF_TOOLS_FALLBACK_VERSION) if v]
    failures = []
    for version in dict.fromkeys(wanted):  # a cached one first: no Maven (and no failed look-up) per run
        jar = cache / f"kafka-tools-{version}" / f"kafka-tools-{version}.jar"
        if jar.is_file():
            note = f"cached {jar}" + (f" (kafka-tools {wanted[0]} not cached)" if version != wanted[0] else "")
            return {"jar": str(jar), "version": version, "note": note}
    for version in dict.fromkeys(wanted):
        jar = cache / f"kafka-tools-{version}" / f"kafka-tools-{version}.jar"
        failure = fetch_jar(f"org.apache.kafka:kafka-tools:{version}", jar)
        if failure is None:
            note = "fetched with Maven"
            if version != wanted[0]:
                note += f"; kafka-tools {wanted[0]} is not on Maven Central, so {version}"
            return {"jar": str(jar), "version": version, "note": note}
        failures.append(failure)
        if failure == "mvn not on PATH":
            break
    return {"jar": None, "version": None, "note": "perf tools unavailable (" + "; ".join(failures) + ")"}


def run_java_tool(classpath: str, main_class: str, args: Sequence[str], timeout_s: float) -> str:
    from streaming.jvm_deps import require_java

    command = [require_java(), *JAVA_TOOL_OPTS, "-cp", classpath, main_class, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{main_class} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def kafka_perf_tools(bootstrap: str, classpath: str, events: int, timeout_s: float) -> tuple[dict, dict]:
    """ProducerPerformance into a fresh topic, then ConsumerPerformance reading the same records."""
    topic = f"bench-perf-{_tag()}"
    create_topics(bootstrap, [topic])
    produced = run_java_tool(classpath, "org.apache.kafka.tools.ProducerPerformance",
                             ["--topic", topic, "--num-records", str(events), "--record-size", str(PERF_RECORD_SIZE),
                              "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all"],
                             timeout_s)
    consumed = run_java_tool(classpath, "org.apache.kafka.tools.ConsumerPerformance",
                             ["--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(events),
                              "--group", f"bench-perf-{_tag()}"], timeout_s)
    return parse_producer_perf(produced), parse_consumer_perf(consumed)


class NoopRanker:
    """The Ranker protocol with no model behind it (fixed items for everyone), on 127.0.0.1: what the job
    costs when scoring is free — the plumbing ceiling. A bench stand-in, never used by the product."""

    def __enter__(self) -> NoopRanker:
        import http.server
        import threading

        items = [str(i) for i in range(1, 11)]
        scores = [1.0 - i / 10 for i in range(len(items))]

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                results = [{"user_id": u.get("user_id"), "items": items, "scores": scores}
                           for u in body.get("users", [])]
                reply = json.dumps({"model_version": "noop", "results": results}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rank"
        self.thread = threading.Thread(target=self.server.serve_forever, name="noop-ranker", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Profiler:
    """async-profiler on the job's JVM for a while, from a thread, when `--profile-dir` is given."""

    def __init__(self, shared: _Shared, job: JobProcess, name: str) -> None:
        self.opts, self.job, self.name = shared.opts, job, name
        self.started = False
        self.thread: threading.Thread | None = None
        self.outcome: dict[str, Any] = {}

    def start(self) -> None:
        self.started = True
        if self.opts.profile_dir is None or self.job.proc is None:
            return
        self.thread = threading.Thread(target=self._run, name="profiler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from bench.jvm_profile import components, profile_jvm, resolve_ap_loader

        try:
            jar = resolve_ap_loader(AP_LOADER_VERSION or "")
            jvm = java_below(self.job.proc.pid)
            if jar is None or jvm is None:
                self.outcome = {"error": "no async-profiler jar" if jar is None else "the job's JVM was not found"}
                return
            stem = Path(self.opts.profile_dir) / f"job-{self.name}"
            collapsed, html = profile_jvm(jar, jvm, self.opts.profile_seconds, stem)
            self.outcome = {"html": str(html), "collapsed": str(collapsed), "seconds": self.opts.profile_seconds,
                            "components": components(collapsed.read_text())}
        except Exception as error:  # a profile is extra: the measurement stands without it
            self.outcome = {"error": f"{type(error).__name__}: {error}"}

    def result(self) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join(self.opts.profile_seconds + 180)
        return self.outcome


@dataclass
class _Shared:
    """What every pipeline run needs: the broker, Serve, the events, the options."""

    bootstrap: str
    serve_url: str
    behavior_url: str
    noop_url: str
    known_items: list[str]
    events: list[Any]
    opts: StreamBenchOptions
    work: Path
    log: Callable[[str], None]


def _records(events: Sequence[Any], size: int) -> list[tuple[bytes, bytes]]:
    return [(e.user_id.encode(), encode_event(e, size)) for e in events]


def _wait(predicate: Callable[[], bool], job: JobProcess, timeout_s: float, status: Callable[[], str],
          log: Callable[[str], None], fail_on_timeout: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while not predicate():
        if not job.running():
            raise RuntimeError(f"the Flink job exited early; tail of {job.log_path}:\n{job.log_tail(30)}")
        if time.monotonic() > deadline:
            if fail_on_timeout:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s: {status()}")
            return False
        if time.monotonic() - last > 5:
            log(status())
            last = time.monotonic()
        time.sleep(0.2)
    return True


def pipeline_run(shared: _Shared, design: str, mode: str, round_no: int) -> tuple[dict, list[dict]]:
    """(b) on a fresh job and topics, then (c) on the same warm job; returns (throughput, latency steps)."""
    opts, log = shared.opts, shared.log
    tag = _tag()
    topics = TopicsConfig(events=f"bench-ev-{tag}", user_state=f"bench-st-{tag}", user_scores=f"bench-sc-{tag}",
                          dead_letter=f"bench-dl-{tag}")
    ensure_topics(shared.bootstrap, topics)
    work = shared.work / f"{design}-{mode}-{round_no}"
    cfg = StreamConfig(bootstrap_servers=shared.bootstrap,
                       serve_url=shared.noop_url if design == "noop" else shared.serve_url,
                       behavior_url=shared.behavior_url if design == "ranker+refresh" else None,
                       known_items=shared.known_items, topics=topics, mode=mode,
                       checkpoint_dir=str(work / "checkpoints"), checkpoint_interval_ms=opts.checkpoint_interval_ms,
                       group_id=f"bench-{tag}", transactional_id_prefix=f"bench-{tag}",
                       job_name=f"reaseq-bench-{design}-{mode}",
                       extra_flink_config=dict(opts.flink_conf), **opts.job_settings)
    first = take_events(shared.events, 0, opts.events)
    first_ids = [e.event_id for e in first]
    producer = new_producer(shared.bootstrap)
    monitor = ScoreTimes(shared.bootstrap, topics)
    job = JobProcess(cfg, work)
    steps: list[dict] = []
    monitor_started = False
    try:
        seconds = send_records(producer, topics.events, _records(first, opts.event_bytes), None)
        log(f"{design}/{mode} round {round_no}: {len(first):,} events pre-produced in {seconds:.1f} s; "
            "starting the job")
        monitor.start()
        monitor_started = True
        job_start_ms = time.time() * 1000
        job.start()
        cpu_from: list = []  # (events scored, CPU by role) when the first scores arrive: start-up left out
        profiler = _Profiler(shared, job, f"{design}-{mode}".replace("+", "-")) if round_no == 1 else None

        def all_scored() -> bool:
            scored = monitor.count(first_ids)
            if scored and not cpu_from:
                cpu_from.extend([scored, cpu_by_role(job.proc.pid if job.proc else None)])
            if profiler is not None and not profiler.started and scored >= len(first_ids) // 3:
                profiler.start()  # past the JVM's warm-up (JIT) at the start
            return scored >= len(first_ids)

        _wait(all_scored, job, opts.timeout_seconds,
              lambda: f"{design}/{mode} (b): scored {monitor.count(first_ids):,}/{len(first_ids):,} "
                      f"({time.time() - job_start_ms / 1000:.0f} s since the job started)", log)
        cpu_us = per_event_us(cpu_from[1], cpu_by_role(job.proc.pid if job.proc else None),
                              len(first_ids) - cpu_from[0])
        arrivals = [a for a, _ in monitor.seen(first_ids)]
        first_ms, last_ms = min(arrivals), max(arrivals)
        throughput = {"events": len(first), "scored": len(arrivals), "dead_letters": monitor.snapshot().dead_letters,
                      "startup_s": round((first_ms - job_start_ms) / 1000, 2),
                      "seconds_first_to_last": round((last_ms - first_ms) / 1000, 3),
                      "events_per_s": rate_between(arrivals),
                      "events_per_s_from_start": len(arrivals) / ((last_ms - job_start_ms) / 1000),
                      "cpu_us_per_event": cpu_us, "job_log": str(job.log_path)}
        if profiler is not None and profiler.thread is not None:
            throughput["profile"] = profiler.result()
        if design == "ranker+refresh":
            throughput["staleness_events_p50"], throughput["staleness_events_p99"] = percentiles(monitor.staleness())
        log(f"{design}/{mode} (b): {_fmt(throughput['events_per_s'])} events/s first→last score, "
            f"{_fmt(throughput['events_per_s_from_start'])} from job start (start-up {throughput['startup_s']} s)")
        position = len(first)
        for rate in opts.rates:
            count = max(1, int(rate * opts.step_seconds))
            step = take_events(shared.events, position, count)
            position += count
            ids = [e.event_id for e in step]
            records = _records(step, opts.event_bytes)
            log(f"{design}/{mode} (c): {count:,} events at {rate:g}/s")
            stale_from = len(monitor.staleness())
            sent_s = send_records(producer, topics.events, records, rate)
            sent_end_ms = time.time() * 1000
            kept_up = _wait(lambda ids=ids: monitor.count(ids) >= len(ids), job, opts.settle_seconds,
                            lambda ids=ids: f"settling: scored {monitor.count(ids):,}/{len(ids):,}", log,
                            fail_on_timeout=False)
            within_settle = monitor.count(ids)
            if not kept_up:  # let the backlog drain so the next step starts from an empty pipeline
                _wait(lambda ids=ids: monitor.count(ids) >= len(ids), job, opts.timeout_seconds,
                      lambda ids=ids: f"draining the backlog: scored {monitor.count(ids):,}/{len(ids):,}", log,
                      fail_on_timeout=False)
            seen = monitor.seen(ids)  # late ones too: their latency is what not keeping up costs
            latencies = [lat for _, lat in seen]
            p50, p99 = percentiles(latencies)
            step_result = {"rate": rate, "sent": len(records), "sent_seconds": round(sent_s, 3),
                           "sent_rate": len(records) / sent_s, "scored_within_settle": within_settle,
                           "kept_up": kept_up, "p50_ms": p50, "p99_ms": p99,
                           "mean_ms": statistics.fmean(latencies) if latencies else None,
                           "max_ms": max(latencies) if latencies else None,
                           "drain_s": round((max(a for a, _ in seen) - sent_end_ms) / 1000, 2) if seen else None,
                           "scored_total": len(seen)}
            if design == "ranker+refresh":
                step_result["staleness_events_p50"], step_result["staleness_events_p99"] = percentiles(
                    monitor.staleness(stale_from))
            steps.append(step_result)
            log(f"{design}/{mode} (c) {rate:g}/s: p50 {_fmt(p50)} ms, p99 {_fmt(p99)} ms, "
                f"{'kept up' if kept_up else 'did NOT keep up'} ({within_settle:,}/{len(ids):,} within settle)")
        throughput["duplicates"] = monitor.duplicates
        return throughput, steps
    finally:
        job.stop()
        if monitor_started:
            monitor.stop()
        producer.close()


def _versions(broker_dir: Path) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"kafka_broker": kafka_version(broker_dir)}
    for package in ("apache-flink", "kafka-python", "ray"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def run_stream_bench(opts: StreamBenchOptions, progress: TextIO = sys.stderr) -> dict[str, Any]:
    """Everything once on one broker and one Serve, `opts.runs` rounds; every run plus medians."""
    opts.validate()
    from inference.serve.local import LocalServe
    from ranking.data import load_dataset
    from ranking.experiment import machine_description
    from streaming.jvm_deps import resolve_jars
    from streaming.kafka_broker import EmbeddedKafka
    from streaming.replay import interactions_to_events

    log = Progress(progress)
    started = time.time()
    jars = resolve_jars()
    dataset = load_dataset("ml-100k")
    events = interactions_to_events(dataset.interactions)
    sample = _records(take_events(events, 0, min(opts.events, 1000)), opts.event_bytes)
    result: dict[str, Any] = {
        "benchmark": "stream", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_description(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "options": {**asdict(opts), "work_dir": str(opts.work_dir) if opts.work_dir else None, "out": str(opts.out),
                    "profile_dir": str(opts.profile_dir) if opts.profile_dir else None},
        "versions": _versions(jars.broker_dir), "dataset": "ml-100k",
        "event_bytes_mean": round(statistics.fmean(len(v) for _, v in sample), 1),
        "kafka": {"kafka_python_loop": {"runs": [], "event_bytes": opts.event_bytes},
                  "producer_perf": {"runs": []}, "consumer_perf": {"runs": []}},
        "pipeline": [{"design": d, "mode": m, "runs": []} for d in opts.designs for m in opts.modes],
        "latency": [{"design": d, "mode": m, "rate": r, "runs": []}
                    for d in opts.designs for m in opts.modes for r in opts.rates],
        "errors": [],
    }
    stage_events = _records(take_events(events, 0, min(opts.events, 20_000)), opts.event_bytes)
    result["python_stages_us"] = python_stage_costs([v for _, v in stage_events], frozenset(dataset.items.item_id))
    log(f"the job's Python per event, outside Flink (µs): {result['python_stages_us']}")
    tools = resolve_perf_tools(jars.broker_dir) if opts.perf_tools else {"jar": None, "version": None,
                                                                          "note": "skipped (--no-perf-tools)"}
    result["kafka"]["perf_tools"] = tools
    log(f"Kafka perf tools: {tools['note']}")
    work = Path(opts.work_dir or tempfile.mkdtemp(prefix="reaseq-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        log(f"starting the embedded Kafka and Ray Serve ({opts.artifact}); work dir {work}")
        behavior = opts.behavior_artifact if "ranker+refresh" in opts.designs else None
        with EmbeddedKafka() as kafka, LocalServe(opts.artifact, behavior_artifact=behavior) as served, \
                NoopRanker() as noop:
            result["model_version"] = served.model_version
            result["behavior_model_version"] = served.behavior_version or None
            result["bootstrap"] = kafka.bootstrap_servers
            shared = _Shared(kafka.bootstrap_servers, served.url, served.behavior_url, noop.url,
                             list(dataset.items.item_id), events, opts, work, log)
            for round_no in range(1, opts.runs + 1):
                log(f"round {round_no}/{opts.runs}: (a) Kafka passthrough")
                _kafka_round(result, shared, tools, jars.broker_classpath)
                for design in opts.designs:
                    for mode in opts.modes:
                        _pipeline_round(result, shared, design, mode, round_no)
            failed = bool(result["errors"])
    except BaseException:
        failed = True
        raise
    finally:
        if failed or opts.work_dir:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summarize(result)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.time() - started, 1)
    return result


def _kafka_round(result: dict[str, Any], shared: _Shared, tools: dict[str, Any], broker_classpath: str) -> None:
    kafka, opts, log = result["kafka"], shared.opts, shared.log
    records = _records(take_events(shared.events, 0, opts.events), opts.event_bytes)
    try:
        loop = kafka_python_loop(shared.bootstrap, records, opts.timeout_seconds)
        log(f"(a) kafka-python loop: {loop['events']:,} events in {loop['seconds']:.2f} s = "
            f"{loop['events_per_s']:,.0f}/s")
    except (RuntimeError, TimeoutError, OSError) as exc:
        loop = {"error": str(exc)}
        result["errors"].append(f"kafka-python loop: {exc}")
    kafka["kafka_python_loop"]["runs"].append(loop)
    if not tools.get("jar"):
        return
    classpath = os.pathsep.join([tools["jar"], broker_classpath])
    try:
        produced, consumed = kafka_perf_tools(shared.bootstrap, classpath, opts.events, opts.timeout_seconds)
        log(f"(a) ProducerPerformance {produced['records_per_s']:,.0f} records/s; ConsumerPerformance "
            f"{consumed['records_per_s']:,.0f}/s ({consumed.get('fetch_records_per_s', 0):,.0f}/s fetch only)")
    except (RuntimeError, ValueError, subprocess.TimeoutExpired, OSError) as exc:
        produced = consumed = {"error": str(exc)}
        result["errors"].append(f"Kafka perf tools: {exc}")
    kafka["producer_perf"]["runs"].append(produced)
    kafka["consumer_perf"]["runs"].append(consumed)


def _pipeline_round(result: dict[str, Any], shared: _Shared, design: str, mode: str, round_no: int) -> None:
    row = next(r for r in result["pipeline"] if r["design"] == design and r["mode"] == mode)
    steps_rows = {r["rate"]: r for r in result["latency"] if r["design"] == design and r["mode"] == mode}
    try:
        throughput, steps = pipeline_run(shared, design, mode, round_no)
    except (RuntimeError, TimeoutError, OSError) as exc:
        message = f"{design}/{mode} round {round_no}: {exc}"
        shared.log(message)
        result["errors"].append(message)
        row["runs"].append({"error": str(exc)})
        for rate_row in steps_rows.values():
            rate_row["runs"].append({"error": "no job"})
        return
    row["runs"].append(throughput)
    for step in steps:
        steps_rows[step["rate"]]["runs"].append(step)


# -- command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `reaseq bench stream`."""
    defaults = StreamBenchOptions()
    parser.add_argument("--events", type=int, default=defaults.events,
                        help=f"events for the throughput runs and the Kafka loop (default {defaults.events})")
    parser.add_argument("--runs", type=int, default=defaults.runs, help="rounds; medians are reported (default 3)")
    parser.add_argument("--rates", type=float, nargs="+", default=list(defaults.rates),
                        help="replay rates for the latency steps, events/s (default 500 1000 2000)")
    parser.add_argument("--step-seconds", type=float, default=defaults.step_seconds,
                        help="seconds per latency step (default 20)")
    parser.add_argument("--settle-seconds", type=float, default=defaults.settle_seconds,
                        help="after a step, how long every event may take to be scored to count as kept up "
                             "(default 10)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(defaults.modes),
                        help="output modes (default both)")
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(defaults.designs),
                        help="what the job scores with: noop (a no-op Ranker, the plumbing ceiling), ranker "
                             "(the Serve Ranker), ranker+refresh (and the nearline behaviour refresh); default all")
    parser.add_argument("--behavior-artifact", default=defaults.behavior_artifact,
                        help="behaviour artifact for ranker+refresh (default: latest ml-100k); never trained here")
    parser.add_argument("--artifact", default=defaults.artifact,
                        help="ranker artifact for Serve (default: latest ml-100k); the bench never trains")
    parser.add_argument("--event-bytes", type=int, default=defaults.event_bytes,
                        help="pad each event's JSON to this size with an ignored field (default 200; 0 = none)")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=defaults.checkpoint_interval_ms)
    parser.add_argument("--timeout-seconds", type=float, default=defaults.timeout_seconds,
                        help="give up on one measurement after this long (default 300)")
    parser.add_argument("--job-set", metavar="FIELD=VALUE", action="append", default=[],
                        help="a StreamConfig field for the job, e.g. batch_size=256 or max_wait_ms=10 (repeatable)")
    parser.add_argument("--flink-conf", metavar="KEY=VALUE", action="append", default=[],
                        help="extra Flink configuration for the job, e.g. python.fn-execution.bundle.time=10 "
                             "(repeatable)")
    parser.add_argument("--no-perf-tools", dest="perf_tools", action="store_false",
                        help="skip Kafka's ProducerPerformance/ConsumerPerformance")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep job logs and checkpoints here")
    parser.add_argument("--out", type=Path, default=defaults.out, help="folder for stream.json")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="profile the job's JVM (async-profiler: Java, JNI and the embedded Python) during the "
                             "first throughput run of each design and mode; flame graphs (HTML) and collapsed stacks "
                             "go here, the share of each part of the job into the results")
    parser.add_argument("--profile-seconds", type=float, default=defaults.profile_seconds)


def split_setting(text: str) -> tuple[str, str]:
    """'key=value' → (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_job_settings(items: Sequence[str]) -> dict[str, Any]:
    """'field=value' items → StreamConfig fields, each value typed like the field's default."""
    defaults = StreamConfig(bootstrap_servers="", serve_url="", known_items=[])
    settings: dict[str, Any] = {}
    for item in items:
        name, value = split_setting(item)
        if name not in StreamConfig.__dataclass_fields__:
            raise ValueError(f"--job-set: StreamConfig has no field {name!r}")
        current = getattr(defaults, name)
        if isinstance(current, bool):
            settings[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int | float):
            settings[name] = type(current)(value)
        else:
            settings[name] = value
    return settings


def options_from_args(args: argparse.Namespace) -> StreamBenchOptions:
    return StreamBenchOptions(events=args.events, runs=args.runs, rates=tuple(args.rates),
                              step_seconds=args.step_seconds, settle_seconds=args.settle_seconds,
                              modes=tuple(dict.fromkeys(args.modes)), designs=tuple(dict.fromkeys(args.designs)),
                              artifact=args.artifact, behavior_artifact=args.behavior_artifact,
                              event_bytes=args.event_bytes,
                              checkpoint_interval_ms=args.checkpoint_interval_ms, timeout_seconds=args.timeout_seconds,
                              perf_tools=args.perf_tools, job_settings=parse_job_settings(args.job_set),
                              flink_conf=dict(split_setting(s) for s in args.flink_conf), work_dir=args.work_dir,
                              profile_dir=args.profile_dir, profile_seconds=args.profile_seconds,
                              out=Path(args.out))


def main_from_args(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the bench, print the tables (stdout) and write bench/results/stream.json; 1 if a run failed."""
    try:
        opts = options_from_args(args)
        opts.validate()
        result = run_stream_bench(opts)
        if opts.profile_dir is not None:
            from bench.jvm_profile import plot_components

            plot_components(result, Path(opts.profile_dir) / "components.png")
    except ValueError as exc:
        print(f"reaseq bench stream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nreaseq bench stream: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    result["command"] = command or "reaseq " + shlex.join(sys.argv[1:])
    print(markdown_table(result))
    path = write_result(result, opts.out)
    print(f"\nwall time {result['wall_seconds']:.0f} s; JSON: {path}")
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return main_from_args(parser.parse_args(argv), command="python -m bench.stream " + shlex.join(argv))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
