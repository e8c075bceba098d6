"""Replay a dataset's interactions as events, in timestamp order, keyed by user, at a chosen rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pandas as pd

from streaming.events import Event


@dataclass(frozen=True)
class ReplayConfig:
    """Pace: a fixed events/s, or a speed-up of the data's own clock (one of them; rate wins)."""

    rate: float | None = 1000.0
    speedup: float | None = None
    limit: int | None = None
    action: str = "rate"


def interactions_to_events(interactions: pd.DataFrame, limit: int | None = None) -> list[Event]:
    """Events in timestamp order (ties in file order); ids are stable so replays are recognisable."""
    frame = interactions.assign(_order=range(len(interactions))).sort_values(["timestamp", "_order"], kind="stable")
    if limit is not None:
        frame = frame.head(limit)
    return [
        Event(f"{row.user_id}-{row.item_id}-{row.timestamp}", str(row.user_id), str(row.item_id), "rate",
              int(row.timestamp) * 1000, float(row.rating))
        for row in frame.itertuples(index=False)
    ]


def paced(events: Iterable[Event], cfg: ReplayConfig, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """Yield events no faster than the configured pace."""
    start = clock()
    first_ts: int | None = None
    for count, event in enumerate(events):
        if cfg.rate:
            due = start + count / cfg.rate
        elif cfg.speedup:
            first_ts = event.ts if first_ts is None else first_ts
            due = start + (event.ts - first_ts) / 1000.0 / cfg.speedup
        else:
            due = start
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        yield event


def replay(events: Iterable[Event], bootstrap_servers: str, topic: str, cfg: ReplayConfig,
           progress: Callable[[int], None] | None = None) -> int:
    """Send events with an idempotent producer (acks=all), keyed by user; returns how many were sent."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=5, batch_size=64 * 1024, client_id="reaseq-replay")
    sent = 0
    try:
        for event in paced(events, cfg):
            producer.send(topic, key=event.user_id.encode(), value=event.to_json())
            sent += 1
            if progress and sent % 1000 == 0:
                progress(sent)
        producer.flush()
    finally:
        producer.close()
    if progress:
        progress(sent)
    return sent
