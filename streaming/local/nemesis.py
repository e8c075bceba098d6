"""Faults under load: a steady replay at a fixed rate into the local cluster while a nemesis SIGKILLs its
processes on a schedule, then the outside checker (checker.py) compares the outputs with the inputs.

Faults (each kills with SIGKILL and restarts the killed processes `restart_after_s` later, as a
supervisor would): `taskmanager` (one TaskManager), `kafka-leader` (the broker leading most partitions of
the events topic), `ray-worker` (the Ray worker node, its Serve replica with it), `jobmanager` (the JobManager: needs
the cluster's JobManager HA, on by default; a restarted JobManager recovers the job from ZooKeeper and
the latest checkpoint), and combinations joined with `+` (e.g. `taskmanager+kafka-leader`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from streaming.local.checker import CheckReport, Fault, OutputReader, check, fault_effects
from streaming.local.cluster import LocalCluster

FAULTS = ("taskmanager", "kafka-leader", "ray-worker", "jobmanager")


def parse_faults(spec: str) -> list[str]:
    """'taskmanager,kafka-leader,taskmanager+ray-worker' → the schedule's faults, each checked."""
    faults = [f.strip() for f in spec.split(",") if f.strip()]
    for fault in faults:
        unknown = [part for part in fault.split("+") if part not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault {'+'.join(unknown)!r} in {spec!r}: choose from {', '.join(FAULTS)} "
                             "(join several with +)")
    return faults


def leader_of_most(leaders: dict[int, int]) -> int:
    """The broker id that leads the most partitions ({partition: leader}); the lowest id on a tie."""
    counts = Counter(leaders.values())
    return min(counts, key=lambda broker: (-counts[broker], broker))


def events_topic_leaders(cluster: LocalCluster) -> dict[int, int]:
    """{partition: leader broker id} of the events topic."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers, client_id="reaseq-nemesis")
    try:
        described = admin.describe_topics([cluster.layout.topics().events])[0]
        return {p["partition_index"]: p["leader_id"] for p in described["partitions"]}
    finally:
        admin.close()


def victims(cluster: LocalCluster, fault: str, rng: random.Random) -> list[str]:
    """The members a fault kills."""
    names: list[str] = []
    for part in fault.split("+"):
        if part == "taskmanager":
            names.append(rng.choice([m.name for m in cluster.members("taskmanager")]))
        elif part == "kafka-leader":
            names.append(f"kafka-{leader_of_most(events_topic_leaders(cluster))}")
        elif part == "ray-worker":
            names.append(rng.choice([m.name for m in cluster.members("ray-worker")]))
        elif part == "jobmanager":
            if not cluster.layout.ha:
                raise ValueError("killing the JobManager loses the job without JobManager HA: start the cluster "
                                 "with HA (the default) or leave the jobmanager fault out")
            names.append("jobmanager")
    return names


@dataclass
class NemesisRun:
    """What a run did and found."""

    faults: list[Fault] = field(default_factory=list)
    sent: int = 0
    malformed: int = 0
    undelivered: int = 0  # sends the producer gave up on (acks=all could not be had): not in Kafka
    report: CheckReport | None = None
    effects: list[dict[str, Any]] = field(default_factory=list)
    settle_s: float | None = None
    log: list[str] = field(default_factory=list)
    revived: list[str] = field(default_factory=list)  # members that exited by themselves and were started again


def run(cluster: LocalCluster, events: list, rate: float, schedule: list[str], first_fault_s: float,
        fault_every_s: float, restart_after_s: float = 5.0, settle_timeout_s: float = 240.0, malformed_every: int = 97,
        seed: int = 1, progress: Callable[[str], None] = print) -> NemesisRun:
    """Replay `events` at `rate`/s (every `malformed_every`-th record a malformed one), inject the faults of
    `schedule` from `first_fault_s` on, one every `fault_every_s`, wait until every event is answered (or
    `settle_timeout_s`), and check the outputs."""
    from kafka import KafkaProducer

    topics = cluster.layout.topics()
    rng = random.Random(seed)
    result = NemesisRun()
    # the job drops an event id it has already applied (a replay): each run's events get ids of their own
    run_id = f"n{int(time.time())}"
    events = [replace(event, event_id=f"{run_id}:{event.event_id}") for event in events]
    reader = OutputReader(cluster.bootstrap_servers, topics).start()
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=5, retries=2**31 - 1, request_timeout_ms=15_000, delivery_timeout_ms=300_000)
    sent_ms: dict[str, int] = {}
    undelivered: list[str] = []
    lock = threading.Lock()

    def delivered(event_id: str):
        def on_success(metadata) -> None:
            with lock:
                sent_ms[event_id] = metadata.timestamp
        return on_success

    def failed(event_id: str):
        def on_error(error) -> None:  # never in Kafka: not expected in the outputs, but reported
            with lock:
                undelivered.append(event_id)
        return on_error

    def say(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        result.log.append(line)
        progress(line)

    start = time.monotonic()
    next_fault_at = start + first_fault_s
    pending_restarts: list[tuple[float, Fault]] = []
    faults = iter(schedule)

    last_revive = start

    def revive_crashed() -> None:  # what the pods' restart policy does in the deployment
        for name in cluster.revive(exclude={n for _, fault in pending_restarts for n in fault.killed}):
            result.revived.append(name)
            say(f"restarted {name}: it exited by itself")

    def restart(fault: Fault) -> None:
        for name in fault.killed:
            cluster.start(name)
        say(f"restarted {', '.join(fault.killed)}")
        result.faults.append(Fault(fault.name, fault.killed, fault.at, time.time()))

    try:
        for index, event in enumerate(events):
            due = start + index / rate
            while (now := time.monotonic()) < due:
                time.sleep(min(0.01, due - now))
            if index % malformed_every == malformed_every - 1:
                producer.send(topics.events, key=b"nemesis-malformed", value=b"{not json")
                result.malformed += 1
            future = producer.send(topics.events, key=event.user_id.encode(), value=event.to_json())
            future.add_callback(delivered(event.event_id))
            future.add_errback(failed(event.event_id))
            result.sent += 1
            now = time.monotonic()
            if now >= next_fault_at:
                fault_name = next(faults, None)
                if fault_name is not None:
                    killed = victims(cluster, fault_name, rng)
                    at = time.time()
                    for name in killed:
                        cluster.kill(name)
                    say(f"fault {fault_name}: SIGKILL {', '.join(killed)}")
                    pending_restarts.append((now + restart_after_s, Fault(fault_name, tuple(killed), at)))
                next_fault_at = now + fault_every_s
            for due_at, fault in list(pending_restarts):
                if now >= due_at:
                    pending_restarts.remove((due_at, fault))
                    restart(fault)
            if now - last_revive >= 2.0:
                last_revive = now
                revive_crashed()
        producer.flush(timeout=300)
    finally:  # whatever happened, nothing stays killed
        for _, fault in pending_restarts:
            restart(fault)
    producer.close()
    say(f"sent {result.sent} events and {result.malformed} malformed records; waiting for every answer")
    settle_start = time.monotonic()
    with lock:
        sent_ids = set(sent_ms)
        result.undelivered = len(undelivered)
    while time.monotonic() - settle_start < settle_timeout_s:
        missing = len(sent_ids - reader.answered())
        if missing == 0:
            result.settle_s = round(time.monotonic() - settle_start, 1)
            break
        revive_crashed()
        time.sleep(2)
    time.sleep(3)  # let a duplicate, if any, arrive too
    outputs = reader.stop()
    result.report = check(sent_ids, result.malformed, outputs, topics)
    result.effects = fault_effects(result.faults, outputs, sent_ms, topics)
    say(f"checked: {result.report.summary()}")
    return result
