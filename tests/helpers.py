"""Helpers shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from ranking.train import TrainConfig
from streaming.pipeline import JobProcess

# A ranker that trains in seconds: the integration tests need a real artifact, not a good one.
TINY_RANKER = TrainConfig(epochs=1, batch_size=256, model={"max_len": 20, "dim": 16, "layers": 1, "heads": 1})


def wait_for(predicate: Callable[[], bool], job: JobProcess, timeout: float, what: str) -> None:
    """Poll until `predicate` holds; fail with the job's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert job.running(), f"job exited while waiting for {what}:\n{job.log_tail()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{job.log_tail()}")


def send_raw(bootstrap_servers: str, topic: str, values: list[bytes]) -> None:
    """Produce raw (possibly malformed) values, keyed bad-0, bad-1, … in order."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    for n, value in enumerate(values):
        producer.send(topic, key=f"bad-{n}".encode(), value=value)
    producer.flush()
    producer.close()

# A behaviour model that trains in seconds (K=5 slots, 2 steps): real artifact, not a good one.
TINY_BEHAVIOR_CONFIG = {"epochs": 1, "batch_size": 256, "cuts_per_user": 2, "holdout": 2,
                        "model": {"max_history": 20, "slots": 5, "dim": 16, "layers": 1, "heads": 1},
                        "sampling": {"slots": 5, "steps": 2}}
