"""Run the parts together on one machine: the Flink job as its own process, and a monitor of its outputs.

Used by `reaseq stream …`, `make demo`, the integration tests and `reaseq bench stream`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streaming.config import StreamConfig
from streaming.scoring import covered_events
from streaming.state import newer
from streaming.topics import TopicsConfig


class JobProcess:
    """The Flink job in a child process (its own session, so a kill takes its JVM down with it)."""

    def __init__(self, cfg: StreamConfig, work_dir: Path) -> None:
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.work_dir / "job.log"

    def start(self) -> JobProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "job-config.json"
        config_path.write_text(self.cfg.to_json())
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child process
        self.proc = subprocess.Popen([sys.executable, "-m", "streaming.job", str(config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=_job_env(self.cfg))
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean cancel, no final checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _job_env(cfg: StreamConfig) -> dict[str, str]:
    env = dict(os.environ)
    if cfg.metrics_port is not None:
        from streaming.job import prometheus_reporter_jar

        # PyFlink's launcher appends HADOOP_CLASSPATH to the JVM's classpath: how the reporter is found
        env["HADOOP_CLASSPATH"] = os.pathsep.join(filter(None, [str(prometheus_reporter_jar()),
                                                                env.get("HADOOP_CLASSPATH")]))
    site = [p for p in sys.path if p.endswith("site-packages")]
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *site, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest completed checkpoint (a chk-N folder with _metadata) under a checkpoint dir."""
    candidates = [p.parent for p in Path(checkpoint_dir).glob("*/chk-*/_metadata")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])))


@dataclass
class MonitorStats:
    """What the job has written so far, as a read_committed consumer sees it."""

    states: int = 0
    scores: int = 0  # events answered by a scores record (a record may answer several events of one user)
    dead_letters: int = 0  # inputs accounted for by dead letters (a letter may name several events)
    dead_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies_ms: list[int] = field(default_factory=list)
    version_regressions: int = 0
    refreshes: int = 0  # state records made by a behaviour refresh (no new event)
    staleness: list[int] = field(default_factory=list)  # events_since_inference of the scores records

    def staleness_p99(self) -> float | None:
        return float(np.percentile(np.asarray(self.staleness[-20000:]), 99)) if self.staleness else None

    def latency_percentiles(self) -> tuple[float, float]:
        if not self.latencies_ms:
            return float("nan"), float("nan")
        values = np.asarray(self.latencies_ms[-20000:])
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))


class OutputMonitor:
    """Consumes the output topics (read_committed) in a thread: counts, latency, latest state per user."""

    def __init__(self, bootstrap_servers: str, topics: TopicsConfig, keep_records: bool = False,
                 watch_states: bool = True) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.keep_records = keep_records
        # the user-state topic carries one record per event: a throughput bench skips it to keep the
        # monitor's own CPU (it shares the machine with what it measures) small
        self.watch_states = watch_states
        self.stats = MonitorStats()
        self.latest_state: dict[str, dict[str, Any]] = {}
        self.latest_scores: dict[str, dict[str, Any]] = {}
        self.records: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
        self._seen_version: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-monitor", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> OutputMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from kafka import KafkaConsumer

        watched = [self.topics.user_scores, self.topics.dead_letter]
        if self.watch_states:
            watched.append(self.topics.user_state)
        consumer = KafkaConsumer(*watched, bootstrap_servers=self.bootstrap_servers, isolation_level="read_committed",
                                 auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                 fetch_max_wait_ms=50)
        try:
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=100, max_records=5000)
                now = int(time.time() * 1000)
                with self._lock:
                    for partition, messages in batches.items():
                        for message in messages:
                            self._observe(partition.topic, message.key, message.value, now)
        finally:
            consumer.close()

    def _observe(self, topic: str, key: bytes, value: bytes, now_ms: int) -> None:
        if self.keep_records:
            self.records[topic].append((key, value))
        if topic == self.topics.dead_letter:
            letter = json.loads(value)
            # a letter of valid events Serve would not score accounts for each of them
            self.stats.dead_letters += max(1, len(letter.get("event_ids") or ()))
            self.stats.dead_reasons[letter["reason"]] += 1
            return
        body = json.loads(value)
        user = body["user_id"]
        if topic == self.topics.user_state:
            self.stats.states += 1
            seen = self._seen_version.get(user)
            if newer(body["version"], seen):
                self._seen_version[user] = body["version"]
                previous = self.latest_state.get(user)
                if previous is not None and previous.get("last_event_id") == body.get("last_event_id"):
                    self.stats.refreshes += 1
                self.latest_state[user] = body
            elif body["version"] < (seen or 0):
                self.stats.version_regressions += 1
        else:
            self._observe_scores(body, now_ms)

    def _observe_scores(self, body: dict[str, Any], now_ms: int) -> None:
        """Count a scores record (a subclass may look at it too)."""
        covered = covered_events(body)
        self.stats.scores += len(covered)
        self.stats.staleness.append(body.get("events_since_inference", 0))
        self.stats.latencies_ms.extend(max(0, now_ms - ts) for _, ts in covered)
        previous = self.latest_scores.get(body["user_id"])
        if previous is None or body["version"] >= previous["version"]:
            self.latest_scores[body["user_id"]] = body

    def staleness(self, since: int = 0) -> list[int]:
        """`events_since_inference` of the scores records seen, from the `since`-th on."""
        with self._lock:
            return self.stats.staleness[since:]

    def snapshot(self) -> MonitorStats:
        with self._lock:
            stats = self.stats
            return MonitorStats(stats.states, stats.scores, stats.dead_letters, dict(stats.dead_reasons),
                                list(stats.latencies_ms[-20000:]), stats.version_regressions, stats.refreshes,
                                list(stats.staleness[-20000:]))


def consumer_lag(bootstrap_servers: str, topic: str, group_id: str) -> int | None:
    """Events not yet committed by the job's consumer group (committed on checkpoints)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="reaseq-lag")
        try:
            committed = admin.list_group_offsets(group_id).get(group_id, {})
        except Exception:  # no offsets committed yet (the group appears at the job's first checkpoint)
            committed = {}
        admin.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
        consumer.close()
    except Exception:  # lag is informative only; a broker hiccup must not stop the demo
        return None
    return int(sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()))


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """Current end offset of every partition of a topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()
