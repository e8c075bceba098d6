"""The job's per-event Python work, stage by stage, timed outside Flink on the same events.

Each stage runs the job's own functions (streaming/events.py, state.py, scoring.py) over real
ML-100K events as the job's operator calls them, and reports µs per event (median of `repeats`). With
the job's total CPU per event from `reaseq bench stream`, the rest is Flink, PyFlink's Java↔Python
crossings, the Kafka source and sink.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from streaming.events import parse_event
from streaming.scoring import PendingEvent, coalesce, coalesced_score_records, ranker_request, with_states
from streaming.state import UserState, apply_event


def _time_us(run: Callable[[], Any], events: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e6 / events)
    return round(statistics.median(samples), 2)


def python_stage_costs(raw_events: Sequence[bytes], known_items: frozenset[str], batch_size: int = 1024,
                       repeats: int = 5) -> dict[str, float]:
    """µs per event of: parse, state (update + JSON encode), pending (encode + decode), scoring
    bookkeeping (request build, coalescing, records), with batches of `batch_size` events."""
    n = len(raw_events)
    parsed = [parse_event(raw, known_items) for raw in raw_events]

    def parse() -> None:
        for raw in raw_events:
            parse_event(raw, known_items)

    states: dict[str, UserState] = {}

    def state() -> None:
        states.clear()
        for event in parsed:
            new, _ = apply_event(states.get(event.user_id), event)
            new.to_json()
            states[event.user_id] = new

    state()
    pending = [PendingEvent(e.user_id, e.event_id, 0) for e in parsed]

    def owed() -> None:
        for item in pending:
            PendingEvent.from_bytes(item.to_bytes())

    def scoring() -> None:
        for start in range(0, n, batch_size):
            batch = with_states(pending[start:start + batch_size], states.get)
            groups = coalesce(batch)
            json.dumps(ranker_request([g[-1] for g in groups]))
            response = {"model_version": "v", "results": [{"items": ["1"] * 10, "scores": [0.5] * 10}
                                                          for _ in groups]}
            coalesced_score_records(groups, response, "scores", lambda: 0)

    return {"parse": _time_us(parse, n, repeats), "state": _time_us(state, n, repeats),
            "owed_scores": _time_us(owed, n, repeats), "scoring_bookkeeping": _time_us(scoring, n, repeats)}
