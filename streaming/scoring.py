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


def coalesce(pending: list[PendingScore]) -> list[list[PendingScore]]:
    """Group a batch's pending states by user, in first-seen order; the last of each group is the newest.

    Only each user's newest state is scored: its scores supersede those of the user's earlier states
    in the same batch, which nobody could have read yet (in transactional mode nothing of the batch
    is visible before the next checkpoint anyway). Every event stays covered by exactly one record.
    """
    groups: dict[str, list[PendingScore]] = {}
    for item in pending:
        groups.setdefault(item.state.user_id, []).append(item)
    return [sorted(group, key=lambda p: p.state.version) for group in groups.values()]


def covered_events(record: dict[str, Any]) -> list[tuple[str, int]]:
    """(event_id, event Kafka timestamp) of every event a scores record answers."""
    if "covered" in record:
        return [(event_id, ts) for event_id, ts in record["covered"]]
    return [(record["event_id"], record["event_kafka_ts"])]


def coalesced_score_records(groups: list[list[PendingScore]], response: dict[str, Any], topic: str,
                            knowledge_version: str = "none",
                            now_ms: Callable[[], int] | None = None) -> list[OutputRecord]:
    """One scores record per user group (scored on its newest state), listing every event it covers."""
    newest = [group[-1] for group in groups]
    records = score_records(newest, response, topic, knowledge_version, now_ms)
    out = []
    for group, (rec_topic, key, value) in zip(groups, records, strict=True):
        body = json.loads(value)
        body["covered"] = [[p.event_id, p.event_kafka_ts] for p in group]
        body["event_kafka_ts"] = min(p.event_kafka_ts for p in group)
        out.append((rec_topic, key, json.dumps(body, separators=(",", ":")).encode()))
    return out


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
