"""Micro-batched scoring inside the job: pending score requests → one Serve call → output records.

Pure apart from the client call, so it is tested without Flink. Output records are
(topic, key, value) triples, what the job's Kafka sink writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streaming.state import UserState

OutputRecord = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class PendingScore:
    """A state waiting for scores: the user's state after one event, and that event's times."""

    state: UserState
    event_id: str
    event_kafka_ts: int  # the event's Kafka record timestamp (ms): start of event→score latency

    def to_bytes(self) -> bytes:
        """Compact form for keyed state: only what scoring and the scores record need."""
        s = self.state
        return json.dumps([s.user_id, s.version, s.last_event_ts, list(s.recent_items), list(s.inferred_items),
                           s.inferred_model_version, self.event_id, self.event_kafka_ts],
                          separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> PendingScore:
        user, version, event_ts, recent, inferred, inferred_version, event_id, kafka_ts = json.loads(raw)
        state = UserState(user_id=user, version=version, last_event_ts=event_ts, recent_items=tuple(recent),
                          inferred_items=tuple(inferred), inferred_model_version=inferred_version)
        return PendingScore(state, event_id, kafka_ts)


def ranker_request(pending: list[PendingScore]) -> list[dict[str, Any]]:
    """The users of one Serve request, one per pending state (in order)."""
    return [{"user_id": p.state.user_id, "recent_items": list(p.state.recent_items),
             "inferred_items": list(p.state.inferred_items)} for p in pending]


def score_records(pending: list[PendingScore], response: dict[str, Any], topic: str,
                  knowledge_version: str = "none", now_ms: Callable[[], int] | None = None) -> list[OutputRecord]:
    """One scores record per pending state, keyed by user, naming the model and knowledge versions."""
    emit_ts = (now_ms or (lambda: int(time.time() * 1000)))()
    records = []
    for item, result in zip(pending, response["results"], strict=True):
        body = {"user_id": item.state.user_id, "version": item.state.version, "event_id": item.event_id,
                "items": result["items"], "scores": result["scores"],
                "model_version": response["model_version"], "knowledge_version": knowledge_version,
                "event_ts": item.state.last_event_ts, "event_kafka_ts": item.event_kafka_ts, "emit_ts": emit_ts}
        records.append((topic, item.state.user_id.encode(), json.dumps(body, separators=(",", ":")).encode()))
    return records
