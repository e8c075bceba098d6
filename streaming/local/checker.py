"""An outside checker: what the job wrote (read as a read_committed consumer) against what was sent.

- every sent event's effect is present exactly once: covered by one scores record, or named by a dead letter
  (lost: by none; duplicated: by more than one);
- every malformed input is accounted for by a dead letter without event ids;
- a user's versions never go down, in the order a reader sees them;
- per fault: recovery time (from the kill to the first scores record emitted after it) and the worst
  event→score latency of the events sent around it (score time = when the checker's consumer saw it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from streaming.scoring import covered_events
from streaming.topics import TopicsConfig


@dataclass(frozen=True)
class Output:
    """One record a read_committed consumer saw."""

    topic: str
    partition: int
    offset: int
    seen_ms: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Fault:
    """One injected fault: what was killed and when (epoch seconds)."""

    name: str
    killed: tuple[str, ...]
    at: float
    restarted_at: float | None = None


@dataclass
class CheckReport:
    """The checker's verdict."""

    events_in: int
    malformed_in: int
    scored: int
    dead_lettered: int
    malformed_dead_lettered: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # outputs for events nobody sent
    version_regressions: int = 0

    @property
    def passed(self) -> bool:
        return (not self.lost and not self.duplicated and not self.unknown and self.version_regressions == 0
                and self.malformed_dead_lettered == self.malformed_in)

    def summary(self) -> dict[str, Any]:
        return {"events_in": self.events_in, "malformed_in": self.malformed_in, "scored": self.scored,
                "dead_lettered": self.dead_lettered, "malformed_dead_lettered": self.malformed_dead_lettered,
                "lost": len(self.lost), "duplicated": len(self.duplicated), "unknown": len(self.unknown),
                "version_regressions": self.version_regressions, "passed": self.passed,
                "examples": {"lost": self.lost[:5], "duplicated": self.duplicated[:5], "unknown": self.unknown[:5]}}


def check(sent: set[str], malformed: int, outputs: list[Output], topics: TopicsConfig) -> CheckReport:
    """Compare the outputs with the sent event ids and the number of malformed inputs sent."""
    answered: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    malformed_letters = 0
    regressions = 0
    seen_version: dict[str, int] = {}
    for output in sorted(outputs, key=lambda o: (o.topic, o.partition, o.offset)):
        body = output.body
        if output.topic == topics.dead_letter:
            ids = body.get("event_ids") or ()
            if ids:
                dead.update(ids)
            else:
                malformed_letters += 1
            continue
        if output.topic == topics.user_scores:
            answered.update(event_id for event_id, _ in covered_events(body))
        if output.topic in (topics.user_scores, topics.user_state):
            key = f"{output.topic}/{body['user_id']}"
            if body["version"] < seen_version.get(key, -1):
                regressions += 1
            seen_version[key] = max(body["version"], seen_version.get(key, -1))
    effects = answered + dead
    return CheckReport(
        events_in=len(sent), malformed_in=malformed, scored=sum(1 for e in sent if answered[e]),
        dead_lettered=sum(1 for e in sent if dead[e]), malformed_dead_lettered=malformed_letters,
        lost=sorted(e for e in sent if effects[e] == 0), duplicated=sorted(e for e in sent if effects[e] > 1),
        unknown=sorted(e for e in effects if e not in sent), version_regressions=regressions)


def fault_effects(faults: list[Fault], outputs: list[Output], sent_ms: dict[str, int], topics: TopicsConfig,
                  window_s: float = 10.0) -> list[dict[str, Any]]:
    """Per fault: seconds from the kill to the first scores record emitted after it, and the worst
    event→score latency (ms) of the events sent from `window_s` before the kill to `window_s` after its
    recovery."""
    scores = [o for o in outputs if o.topic == topics.user_scores]
    seen_at: dict[str, int] = {}
    for output in scores:
        for event_id, _ in covered_events(output.body):
            seen_at.setdefault(event_id, output.seen_ms)
    effects = []
    for fault in faults:
        kill_ms = int(fault.at * 1000)
        after = [o.body.get("emit_ts", o.seen_ms) for o in scores if o.body.get("emit_ts", o.seen_ms) > kill_ms]
        recovered_ms = min(after) if after else None
        recovery_s = None if recovered_ms is None else round((recovered_ms - kill_ms) / 1000, 2)
        high = (recovered_ms or kill_ms) + window_s * 1000
        around = [seen_at[e] - ts for e, ts in sent_ms.items()
                  if kill_ms - window_s * 1000 <= ts <= high and e in seen_at]
        effects.append({"fault": fault.name, "killed": list(fault.killed), "at": fault.at,
                        "restarted_at": fault.restarted_at, "recovery_s": recovery_s,
                        "worst_latency_ms": max(around) if around else None, "events_around": len(around)})
    return effects


def consumer_from_ends(bootstrap_servers: str, topics: tuple[str, ...]):
    """A read_committed KafkaConsumer of every partition of `topics`, positioned at their current ends."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100, request_timeout_ms=30_000)
    partitions = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic)
                                                                                or ())]
    consumer.assign(partitions)
    for partition, offset in consumer.end_offsets(partitions).items():
        consumer.seek(partition, offset)
    return consumer


class TopicReader:
    """A read_committed consumer of `topics` from their ends at its start, in a thread: each record (parsed
    JSON) goes to `observe` under the reader's lock. Earlier runs' outputs are not this run's."""

    def __init__(self, bootstrap_servers: str, topics: tuple[str, ...]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic_names = topics
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._consumer = None

    def start(self):
        self._consumer = consumer_from_ends(self.bootstrap_servers, self.topic_names)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def observe(self, topic: str, partition: int, offset: int, seen_ms: int, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        consumer = self._consumer
        try:
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=200, max_records=5000)
                now = int(time.time() * 1000)
                with self._lock:
                    for partition, messages in batches.items():
                        for message in messages:
                            self.observe(partition.topic, partition.partition, message.offset, now,
                                         json.loads(message.value))
        finally:
            consumer.close()


class OutputReader(TopicReader):
    """Every record of the job's three output topics, with when it was seen."""

    def __init__(self, bootstrap_servers: str, topics: TopicsConfig) -> None:
        super().__init__(bootstrap_servers, (topics.user_scores, topics.user_state, topics.dead_letter))
        self.topics = topics
        self.outputs: list[Output] = []
        self.per_topic: dict[str, int] = defaultdict(int)

    def observe(self, topic: str, partition: int, offset: int, seen_ms: int, body: dict[str, Any]) -> None:
        self.outputs.append(Output(topic, partition, offset, seen_ms, body))
        self.per_topic[topic] += 1

    def stop(self) -> list[Output]:
        super().stop()
        return self.snapshot()

    def snapshot(self) -> list[Output]:
        with self._lock:
            return list(self.outputs)

    def answered(self) -> set[str]:
        """Event ids covered so far by scores or dead letters."""
        done: set[str] = set()
        for output in self.snapshot():
            if output.topic == self.topics.user_scores:
                done.update(e for e, _ in covered_events(output.body))
            elif output.topic == self.topics.dead_letter:
                done.update(output.body.get("event_ids") or ())
        return done
