"""Micro-batched scoring inside the job: pending score requests → one Serve call → output records.

Pure apart from the Serve calls it is given, so it is tested without Flink. Output records are
(topic, key, value) triples, what the job's Kafka sink writes.

When a call fails (`score_pending`, policy in `RetryPolicy`):
- Serve is down or overloaded (`RetryLater`, and an empty probe request fails too): every request is
  kept and retried with exponential backoff, however long the outage lasts; the job bounds what it
  keeps by backpressure (it stops reading Kafka), so nothing is lost and no state grows without bound.
- Serve answers, but not this batch: rejected (`Rejected`: 4xx, malformed reply) at once, or failing
  (`RetryLater` while the probe succeeds) `max_failures` times. The batch is split in halves, recursively,
  until the users Serve will not score are alone; every other user is scored, and each user left over
  becomes one dead letter (reason `unscorable`, Serve's error, the request Serve refused, the event ids).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference.serve.client import Rejected, RetryLater
from streaming.events import UNSCORABLE, DeadLetter, dead_letter
from streaming.state import UserState

OutputRecord = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class PendingEvent:
    """An applied event whose scores are still owed: what the job keeps in keyed state until they are out."""

    user_id: str
    event_id: str
    event_kafka_ts: int  # the event's Kafka record timestamp (ms): start of event→score latency

    def to_bytes(self) -> bytes:
        return json.dumps([self.user_id, self.event_id, self.event_kafka_ts], separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> PendingEvent:
        user, event_id, kafka_ts = json.loads(raw)
        return PendingEvent(user, event_id, kafka_ts)


@dataclass(frozen=True)
class PendingScore:
    """A state waiting for scores: the user's state (its newest when the call is made) and one event's times."""

    state: UserState
    event_id: str
    event_kafka_ts: int

    def event(self) -> PendingEvent:
        return PendingEvent(self.state.user_id, self.event_id, self.event_kafka_ts)


def with_states(pending: list[PendingEvent], state_of: Callable[[str], UserState | None]) -> list[PendingScore]:
    """The pending events with their users' newest states (a user without a state is skipped: TTL expired)."""
    return [PendingScore(state, item.event_id, item.event_kafka_ts) for item in pending
            if (state := state_of(item.user_id)) is not None]


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
                            now_ms: Callable[[], int] | None = None) -> list[OutputRecord]:
    """One scores record per user group (scored on its newest state), listing every event it covers."""
    newest = [group[-1] for group in groups]
    records = score_records(newest, response, topic, now_ms)
    out = []
    for group, (rec_topic, key, value) in zip(groups, records, strict=True):
        body = json.loads(value)
        body["covered"] = [[p.event_id, p.event_kafka_ts] for p in group]
        body["event_kafka_ts"] = min(p.event_kafka_ts for p in group)
        out.append((rec_topic, key, json.dumps(body, separators=(",", ":")).encode()))
    return out


def score_records(pending: list[PendingScore], response: dict[str, Any], topic: str,
                  now_ms: Callable[[], int] | None = None) -> list[OutputRecord]:
    """One scores record per pending state, keyed by user, naming the model version that scored it."""
    emit_ts = (now_ms or (lambda: int(time.time() * 1000)))()
    records = []
    for item, result in zip(pending, response["results"], strict=True):
        body = {"user_id": item.state.user_id, "version": item.state.version, "event_id": item.event_id,
                "items": result["items"], "scores": result["scores"],
                "model_version": response["model_version"],
                "knowledge_version": response.get("knowledge_version"),
                **{key: result[key] for key in ("reasons", "intents") if key in result},
                "event_ts": item.state.last_event_ts, "event_kafka_ts": item.event_kafka_ts, "emit_ts": emit_ts,
                # how many of the user's events its inferred behaviours have not seen (nearline freshness)
                "events_since_inference": item.state.events - item.state.inferred_at_events}
        records.append((topic, item.state.user_id.encode(), json.dumps(body, separators=(",", ":")).encode()))
    return records


@dataclass(frozen=True)
class RetryPolicy:
    """How the job retries a failed scoring call and when it gives up on a batch (see the module doc)."""

    backoff_ms: int = 200
    max_backoff_ms: int = 5_000
    max_failures: int = 3  # failures of one batch while Serve answers probes, before the batch is split

    def __post_init__(self) -> None:
        if self.backoff_ms < 1 or self.max_backoff_ms < self.backoff_ms or self.max_failures < 1:
            raise ValueError("need 1 <= backoff_ms <= max_backoff_ms and max_failures >= 1")

    def delay_ms(self, retries: int) -> int:
        """Wait before retry number `retries` (1, 2, …): doubling from backoff_ms up to max_backoff_ms."""
        return min(self.max_backoff_ms, self.backoff_ms * 2 ** min(max(0, retries - 1), 30))


@dataclass
class FlushResult:
    """What one flush of a shard's pending requests came to."""

    records: list[OutputRecord]  # scores records
    unscorable: list[tuple[list[PendingScore], str]]  # user groups Serve will not score, with its error
    kept: list[PendingScore]  # still pending: Serve unavailable, retry later
    counted: bool = False  # kept although Serve answered the probe: counts towards max_failures
    calls: int = 0  # scoring calls made (the probe not counted)
    error: str = ""  # the first call's error, if it failed


def score_pending(pending: list[PendingScore], score: Callable[[list[PendingScore]], dict[str, Any]],
                  serve_alive: Callable[[], bool], failures: int, policy: RetryPolicy, topic: str,
                  now_ms: Callable[[], int] | None = None) -> FlushResult:
    """Score a shard's pending requests with `score` (one Serve call per list of newest states).

    `failures` is how many times in a row this shard's batch failed while Serve answered probes.
    Never raises a Serve error: every pending request ends scored, unscorable or kept.
    """
    groups = coalesce(pending)
    try:
        response = score([g[-1] for g in groups])
        return FlushResult(coalesced_score_records(groups, response, topic, now_ms), [], [], calls=1)
    except Rejected as error:
        first: Rejected | RetryLater = error
    except RetryLater as error:
        if not serve_alive():  # down or overloaded: wait for it, whatever the batch holds
            return FlushResult([], [], pending, counted=False, calls=1, error=str(error))
        if failures + 1 < policy.max_failures:
            return FlushResult([], [], pending, counted=True, calls=1, error=str(error))
        first = error
    result = FlushResult([], [], [], calls=1, error=str(first))
    _isolate(groups, first, score, serve_alive, topic, now_ms, result)
    return result


def _isolate(groups: list[list[PendingScore]], error: Exception, score: Callable[[list[PendingScore]], dict[str, Any]],
             serve_alive: Callable[[], bool], topic: str, now_ms: Callable[[], int] | None,
             result: FlushResult) -> None:
    """`groups` failed together with `error`: split them until what Serve will not score stands alone."""
    if result.kept:  # Serve went down meanwhile: keep the rest for later rather than blame its users
        result.kept.extend(p for g in groups for p in g)
        return
    if len(groups) == 1:
        result.unscorable.append((groups[0], f"{type(error).__name__}: {error}"))
        return
    middle = len(groups) // 2
    for part in (groups[:middle], groups[middle:]):
        if result.kept:
            result.kept.extend(p for g in part for p in g)
            continue
        result.calls += 1
        try:
            response = score([g[-1] for g in part])
        except Rejected as failure:
            _isolate(part, failure, score, serve_alive, topic, now_ms, result)
        except RetryLater as failure:
            if serve_alive():
                _isolate(part, failure, score, serve_alive, topic, now_ms, result)
            else:
                result.kept.extend(p for g in part for p in g)
        else:
            result.records.extend(coalesced_score_records(part, response, topic, now_ms))


def unscorable_letter(group: list[PendingScore], error: str, source_topic: str) -> DeadLetter:
    """The dead letter of a user's events that Serve will not score: its error, the refused request, the events."""
    request = json.dumps(ranker_request([group[-1]])[0], separators=(",", ":")).encode()
    return dead_letter(request, UNSCORABLE, error, source_topic, tuple(p.event_id for p in group))
