"""Event validation (every dead-letter reason) and the per-user state update rule."""

from __future__ import annotations

import json

import pytest

from streaming.events import (
    BAD_JSON,
    BAD_VALUE,
    MISSING_FIELD,
    NOT_UTF8,
    OVERSIZED,
    UNKNOWN_ITEM,
    WRONG_TYPE,
    DeadLetter,
    Event,
    parse_event,
)
from streaming.state import UserState, apply_event, newer

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "50", "action": "rate", "ts": 1000, "value": 4}


def _raw(**changes) -> bytes:
    payload = {**GOOD, **changes}
    return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()


def test_good_event_parses_and_ignores_unknown_fields():
    event = parse_event(_raw(extra="ignored"), known_items={"50"})
    assert event == Event("e1", "u1", "50", "rate", 1000, 4.0)
    assert parse_event(event.to_json(), {"50"}) == event


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", BAD_JSON),
    (b"[1, 2]", BAD_JSON),
    (b"\xff\xfe{}", NOT_UTF8),
    (b'{"pad": "' + b"x" * 9000 + b'"}', OVERSIZED),
    (_raw(item_id=...), MISSING_FIELD),
    (_raw(ts=None), MISSING_FIELD),
    (_raw(ts="1000"), WRONG_TYPE),
    (_raw(user_id=7), WRONG_TYPE),
    (_raw(ts=True), WRONG_TYPE),
    (_raw(value="high"), WRONG_TYPE),
    (_raw(action="like"), BAD_VALUE),
    (_raw(item_id="99999"), UNKNOWN_ITEM),
])
def test_each_bad_kind_becomes_a_dead_letter_with_reason_and_original_bytes(raw, reason):
    result = parse_event(raw, known_items={"50"}, source_topic="reaseq.events")
    assert isinstance(result, DeadLetter)
    assert result.reason == reason
    assert result.original() == raw
    assert result.detail and result.source_topic == "reaseq.events"
    assert json.loads(result.to_json())["reason"] == reason


def _event(n: int, item: str = "1", action: str = "view") -> Event:
    return Event(f"e{n}", "u1", item, action, 1000 + n)


def test_state_reflects_events_in_order_and_versions_increase():
    state = None
    for n, item in enumerate(["1", "2", "3"]):
        state, changed = apply_event(state, _event(n, item, "click" if n else "view"))
        assert changed
    assert state.recent_items == ("1", "2", "3")
    assert state.counts == {"view": 1, "click": 2}
    assert state.version == 3 and state.last_event_id == "e2" and state.last_event_ts == 1002


def test_replayed_event_leaves_state_unchanged():
    state, _ = apply_event(None, _event(1))
    again, changed = apply_event(state, _event(1))
    assert not changed and again == state


def test_recent_items_are_bounded():
    state = None
    for n in range(10):
        state, _ = apply_event(state, _event(n, str(n)), max_recent=4)
    assert state.recent_items == ("6", "7", "8", "9") and state.version == 10


def test_state_json_round_trip_carries_every_field():
    from dataclasses import fields

    state, _ = apply_event(None, _event(1))
    assert UserState.from_json(state.to_json()) == state
    assert set(json.loads(state.to_json())) == {f.name for f in fields(UserState)}


def test_consumers_keep_only_newer_versions():
    assert newer(1, None) and newer(3, 2)
    assert not newer(2, 2) and not newer(1, 2)


def test_pending_score_round_trip_keeps_what_scoring_needs():
    from streaming.scoring import PendingScore, ranker_request, score_records

    state = None
    for n, item in enumerate(["1", "2"]):
        state, _ = apply_event(state, _event(n, item))
    pending = PendingScore.from_bytes(PendingScore(state, "e1", 1234).to_bytes())
    assert ranker_request([pending]) == [{"user_id": "u1", "recent_items": ["1", "2"], "inferred_items": []}]
    response = {"model_version": "v1", "results": [{"items": ["9", "8"], "scores": [0.9, 0.8]}]}
    [(topic, key, value)] = score_records([pending], response, "scores", now_ms=lambda: 2000)
    body = json.loads(value)
    assert (topic, key) == ("scores", b"u1")
    assert body["version"] == 2 and body["event_id"] == "e1" and body["event_kafka_ts"] == 1234
    assert body["items"] == ["9", "8"] and body["model_version"] == "v1" and body["emit_ts"] == 2000
    assert body["event_ts"] == 1001


def test_coalescing_scores_each_users_newest_state_and_covers_every_event():
    from streaming.scoring import PendingScore, coalesce, coalesced_score_records, covered_events

    def pending(user: str, n: int) -> PendingScore:
        return PendingScore(UserState(user_id=user, version=n, recent_items=(str(n),)), f"{user}-{n}", 100 + n)

    batch = [pending("a", 1), pending("b", 1), pending("a", 2), pending("a", 3)]
    groups = coalesce(batch)
    assert [[p.event_id for p in g] for g in groups] == [["a-1", "a-2", "a-3"], ["b-1"]]
    response = {"model_version": "v", "results": [{"items": ["x"], "scores": [1.0]}, {"items": ["y"], "scores": [0.5]}]}
    records = [json.loads(v) for _, _, v in coalesced_score_records(groups, response, "t")]
    assert [r["version"] for r in records] == [3, 1]
    assert covered_events(records[0]) == [("a-1", 101), ("a-2", 102), ("a-3", 103)]
    assert records[0]["event_kafka_ts"] == 101  # latency counted from the oldest event it answers
