"""Event validation (every dead-letter reason) and the per-user state update rule."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.events import (
    ACTIONS,
    BAD_JSON,
    BAD_VALUE,
    MAX_EVENT_BYTES,
    MISSING_FIELD,
    NOT_UTF8,
    OVERSIZED,
    REASONS,
    UNKNOWN_ITEM,
    UNPARSEABLE,
    WRONG_TYPE,
    DeadLetter,
    Event,
    dead_letter_key,
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


def test_oversized_original_is_kept_truncated_with_its_length_and_sha256():
    raw = b'{"pad": "' + b"x" * 2_000_000 + b'"}'
    letter = parse_event(raw, known_items={"50"})
    assert isinstance(letter, DeadLetter) and letter.reason == OVERSIZED and letter.truncated
    assert letter.original() == raw[:MAX_EVENT_BYTES]
    assert letter.original_size == len(raw) and letter.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert len(letter.to_json()) < 2 * MAX_EVENT_BYTES  # far below the sink's 1 MB request limit


# Inputs that once raised out of the parser (and so stopped the job) or would break the state or the sink
HOSTILE = {
    "nested 5 KB": (b"[" * 5000, BAD_JSON),
    "nested object in a field": (_raw(extra=json.loads("[" * 40 + "]" * 40)), BAD_JSON),
    "int over 4300 digits": (b'{"ts": ' + b"9" * 5000 + b"}", BAD_JSON),
    "NaN value": (_raw().replace(b'"value": 4', b'"value": NaN'), BAD_JSON),
    "Infinity value": (_raw().replace(b'"value": 4', b'"value": -Infinity'), BAD_JSON),
    "value overflows to inf": (_raw().replace(b'"value": 4', b'"value": 1e400'), BAD_VALUE),
    "value int beyond float": (_raw().replace(b'"value": 4', b'"value": ' + b"9" * 400), BAD_VALUE),
    "ts beyond a Java long": (_raw(ts=2**63), BAD_VALUE),
    "negative ts": (_raw(ts=-1), BAD_VALUE),
    "lone surrogate user id": (_raw().replace(b'"u1"', b'"\\ud800"'), BAD_VALUE),
    "lone surrogate event id": (b'{"event_id": "\\udfff", "user_id": "u1", "item_id": "50",'
                                b' "action": "rate", "ts": 1}', BAD_VALUE),
    "user id of 5 KB": (_raw(user_id="u" * 5000), BAD_VALUE),
    "empty value": (b"", BAD_JSON),
    "null (tombstone)": (None, BAD_JSON),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + _raw(), BAD_JSON),
    "JSON null": (b"null", BAD_JSON),
    "empty user id": (_raw(user_id=""), BAD_VALUE),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_become_dead_letters(name):
    raw, reason = HOSTILE[name]
    letter = parse_event(raw, known_items={"50"})
    assert isinstance(letter, DeadLetter), letter
    assert letter.reason == reason, letter.detail
    assert letter.original() == (raw or b"")
    letter.to_json().decode("ascii")  # writable: plain ASCII JSON whatever the input


def _check_total(raw: bytes) -> None:
    result = parse_event(raw, known_items={"50", "7"})
    if isinstance(result, Event):
        # a valid event survives every step downstream: its ids encode as Kafka keys, it re-parses the same
        # and a state built from it serialises
        result.user_id.encode("utf-8")
        assert parse_event(result.to_json(), {"50", "7"}) == result
        state, _ = apply_event(None, result)
        json.loads(state.to_json())
    else:
        assert isinstance(result, DeadLetter) and result.reason in REASONS and result.reason != UNPARSEABLE
        assert result.original() == raw[:MAX_EVENT_BYTES] and result.original_size == len(raw)
        json.loads(result.to_json())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=MAX_EVENT_BYTES + 64))
def test_any_bytes_become_an_event_or_a_dead_letter(raw):
    _check_total(raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "event_id": st.text(max_size=300) | _json_values, "user_id": st.text(max_size=300) | _json_values,
    "item_id": st.sampled_from(["50", "7", "nope"]) | _json_values,
    "action": st.sampled_from(sorted(ACTIONS)) | _json_values,
    "ts": st.integers(min_value=-(2**70), max_value=2**70) | _json_values,
    "value": st.floats() | st.integers(min_value=-(10**400), max_value=10**400) | _json_values,
    "extra": _json_values}))
def test_any_json_object_becomes_an_event_or_a_dead_letter(payload):
    # allow_nan: NaN and Infinity tokens as Python's encoder writes them; surrogates stay \u escapes
    _check_total(json.dumps(payload, allow_nan=True).encode())


def test_dead_letter_keys_stay_bounded():
    assert dead_letter_key(None) == b"" and dead_letter_key(b"user-1") == b"user-1"
    long_key = b"k" * 2_000_000
    assert dead_letter_key(long_key) == b"sha256:" + hashlib.sha256(long_key).hexdigest().encode()


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


def test_pending_events_round_trip_and_are_scored_at_their_users_newest_state():
    from streaming.scoring import PendingEvent, ranker_request, score_records, with_states

    state = None
    for n, item in enumerate(["1", "2"]):
        state, _ = apply_event(state, _event(n, item))
    kept = [PendingEvent.from_bytes(PendingEvent(u, e, ts).to_bytes()) for u, e, ts in [("u1", "e1", 1234),
                                                                                          ("gone", "e9", 1)]]
    assert kept[0] == PendingEvent("u1", "e1", 1234)
    [pending] = with_states(kept, {"u1": state}.get)  # a user whose state expired has nothing to score
    assert pending.state is state and pending.event() == kept[0]
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


def test_live_line_shows_refreshes_and_staleness_once_the_refresh_runs():
    from streaming.pipeline import MonitorStats
    from streaming.runner import progress_line

    quiet = progress_line(10, 100, MonitorStats(states=10, scores=10, latencies_ms=[5, 7]), 0, 1.0)
    assert "refreshes" not in quiet
    busy = MonitorStats(states=12, scores=10, latencies_ms=[5, 7], refreshes=2, staleness=[0] * 98 + [4, 9])
    line = progress_line(10, 100, busy, 0, 1.0)
    assert "refreshes 2" in line and "staleness p99 4 events" in line
