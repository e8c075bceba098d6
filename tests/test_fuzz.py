"""Property-based fuzzing: the Serve apps' HTTP boundary, and the per-user state rule over any valid events.

Whatever is POSTed to the Ranker or the BehaviorReasoner route, the answer is a 200 reply with one result
per user or a 4xx with the reason in a JSON body; never a 5xx (which the stream's client would retry
forever), never a hang, and the replica keeps serving. Whatever valid events a user sends, its state's
version only goes up, its recent items and serialised size stay bounded, and its JSON round-trips.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inference.serve.protocol import MAX_QUOTE_CHARS, int_option, quote, users_of
from streaming.events import ACTIONS, MAX_EVENT_BYTES, MAX_ID_CHARS, MAX_TS, OVERSIZED, DeadLetter, Event, parse_event
from streaming.state import DEDUP_WINDOW, UserState, apply_event, newer

# ---------------------------------------------------------------------------------------------------------
# Strategies

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25)

KNOWN_ITEMS = [str(i) for i in range(1, 60)]  # ML-100K item ids, in every tiny artifact's catalogue
_long_text = st.integers(min_value=1_000, max_value=100_000).map(lambda n: "x" * n)
_numbers = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
            | st.sampled_from([0, -1, 1, 10**30, -(10**400), 1e308, 5e-324]))
_items = st.lists(st.sampled_from(KNOWN_ITEMS) | st.text(max_size=12) | _long_text, max_size=40)
_user = st.fixed_dictionaries({}, optional={
    "user_id": st.sampled_from(["u1", "u2", ""]) | st.text(max_size=40) | _long_text | _numbers | json_values,
    "recent_items": _items | st.lists(_numbers | json_values, max_size=4) | json_values,
    "inferred_items": _items | json_values,
    "extra": json_values,
})
# bodies shaped almost like {"users": [{"user_id": str, "recent_items": [str, ...]}, ...], "top_k": int}
near_requests = st.fixed_dictionaries({}, optional={
    "users": st.lists(_user | json_values, max_size=6) | json_values,
    "top_k": _numbers | json_values,
    "unknown": json_values,
})


def _valid_body(users: int = 2) -> bytes:
    return json.dumps({"users": [{"user_id": f"u{n}", "recent_items": KNOWN_ITEMS[n:n + 5]}
                                 for n in range(users)]}).encode()


_valid_raw = st.integers(min_value=0, max_value=4).map(_valid_body)
_bad_utf8 = st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])

# nesting far past json.loads' recursion limit, placed where a request has values; each template with the
# number of results its 200 reply must carry when the nesting there is acceptable
DEEP_TEMPLATES = [
    ("%s", 0),
    ('{"users": %s}', 0),
    ('{"users": [{"user_id": "u1", "recent_items": %s}]}', 1),
    ('{"users": [{"user_id": "u1", "extra": %s}]}', 1),
    ('{"users": [], "top_k": %s}', 0),
    ('{"users": [{"user_id": %s}]}', 1),
]


def _deep(template: str, depth: int) -> bytes:
    return (template % ("[" * depth + "]" * depth)).encode()


_deep_bodies = st.tuples(st.sampled_from(DEEP_TEMPLATES), st.integers(1, 5_000)).map(
    lambda t: (_deep(t[0][0], t[1]), t[0][1]))
# (body, the results a 200 must carry: None for as many as the body's users)
raw_bodies = st.tuples(
    st.binary(max_size=2_000)
    # a valid body cut anywhere
    | _valid_raw.flatmap(lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n]))
    # a valid body with invalid UTF-8 spliced in
    | _valid_raw.flatmap(lambda raw: st.tuples(st.integers(0, len(raw)), _bad_utf8).map(
        lambda cut: raw[:cut[0]] + cut[1] + raw[cut[0]:])),
    st.none()) | _deep_bodies


# ---------------------------------------------------------------------------------------------------------
# The Serve apps over HTTP

APPS = ("ranker", "behavior")
REPLICA_NAMES = {"ranker": "Ranker", "behavior": "BehaviorReasoner"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
MAX_REASON_CHARS = 500  # an error names the problem; it does not echo a megabyte of the request back


class ServedApps(NamedTuple):
    """The apps' URLs and the replica actors they started with, by app."""

    urls: dict[str, str]
    replicas: dict[str, set[str]]


@pytest.fixture(scope="module")
def apps(tmp_path_factory, ml100k, ml100k_sequences):
    """Ray Serve on 127.0.0.1 (a free port) with both apps on tiny artifacts, the Ranker knowledge-aware
    (it reads inferred items and gives KG reasons); stopped after the module."""
    from inference.serve.local import LocalServe
    from tests.helpers import tiny_ranker_and_behavior

    ranker, behavior = tiny_ranker_and_behavior(ml100k, ml100k_sequences, tmp_path_factory.mktemp("artifacts"))
    with LocalServe(str(ranker.path), behavior_artifact=str(behavior.path)) as served:
        yield ServedApps({"ranker": served.url, "behavior": served.behavior_url}, _replicas())


def _replicas() -> dict[str, set[str]]:
    """The Serve replica actors alive now, by app: a replica that died and was replaced changes its name."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {app: {n for n in names if "REPLICA" in n and f"#{replica}#" in n} for app, replica in REPLICA_NAMES.items()}


def _post(url: str, raw: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # a hang fails the test as a timeout
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _assert_answered(url: str, raw: bytes, users: int | None = None) -> int:
    """The app answers `raw` with a reply for every user (200) or a 4xx naming the reason, never a 5xx;
    the status. `users`: the results a 200 must carry (None: as many as the body's users)."""
    status, reply = _post(url, raw)
    assert status < 500, f"HTTP {status} for {raw[:300]!r}: {reply[:300]!r}"
    payload = json.loads(reply)
    if status == 200:
        expected = len(json.loads(raw)["users"]) if users is None else users
        assert isinstance(payload["model_version"], str), payload
        assert isinstance(payload["results"], list) and len(payload["results"]) == expected, payload
        assert all(isinstance(r, dict) and isinstance(r["items"], list) for r in payload["results"]), payload
    else:
        assert 400 <= status < 500, (status, reply[:300])
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"], payload
        assert len(payload["error"]) <= MAX_REASON_CHARS, payload["error"][:MAX_REASON_CHARS]
    return status


def _assert_still_serving(apps: ServedApps, app: str) -> None:
    """The same replica as at the start answers a valid request."""
    status, reply = _post(apps.urls[app], _valid_body(3))
    assert status == 200, reply[:300]
    assert [r["user_id"] for r in json.loads(reply)["results"]] == ["u0", "u1", "u2"]
    assert _replicas()[app] == apps.replicas[app] != set()


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
@FUZZ
@given(body=json_values)
@example(body={"users": []})  # the client's probe: no model pass, so nothing for the pass metrics to count
def test_any_json_is_answered_with_a_reply_or_a_reason(apps, app, body):
    _assert_answered(apps.urls[app], json.dumps(body, allow_nan=True).encode())


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
@FUZZ
@given(body=near_requests)
@example(body={"users": [{"user_id": "u1", "recent_items": ["1"]}], "top_k": 0})
@example(body={"users": [{"user_id": "u1", "recent_items": ["1"]}], "top_k": False})
@example(body={"users": [{"user_id": "u1", "recent_items": ["1"]}], "top_k": "x" * 1_000_000})
@example(body={"users": [{"user_id": "u1", "recent_items": ["1"]}], "top_k": float("nan")})
@example(body={"users": [{"user_id": "u1", "recent_items": ["1"] * 5_000, "inferred_items": ["2"] * 5_000}]})
@example(body={"users": [{"user_id": "\ud800", "recent_items": ["\udfff", "1"]}, {"user_id": "\ud800"}]})
@example(body={"users": [{"user_id": "same", "recent_items": ["1", "2"]}, {"user_id": "same", "recent_items": ["3"]},
                         {"user_id": "same", "recent_items": ["1", "2", "3"]}]})
def test_near_valid_requests_are_answered_with_a_reply_or_a_reason(apps, app, body):
    status = _assert_answered(apps.urls[app], json.dumps(body, allow_nan=True).encode())
    top_k = body.get("top_k")
    if app == "ranker" and top_k is not None and not (type(top_k) is int and top_k >= 1):
        assert status == 400, body  # a bad top_k (0, false, "3", …) is refused, not replaced by the default


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
@FUZZ
@given(case=raw_bodies)
@example(case=(b"", None))
@example(case=(b"\xff\xfe{}", None))
@example(case=(b'{"users": [], "top_k": ' + b"9" * 5_000 + b"}", None))  # an int json.loads will not convert
@example(case=(b"[" * 100_000, None))  # json.loads raises RecursionError, not ValueError
@example(case=(_deep('{"users": [{"user_id": "u1", "extra": %s}]}', 2_000), 1))
def test_any_bytes_are_answered_with_a_reply_or_a_reason(apps, app, case):
    _assert_answered(apps.urls[app], *case)


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
def test_nesting_around_the_recursion_limit_is_answered_with_a_reply_or_a_reason(apps, app):
    import sys

    limit = sys.getrecursionlimit()
    for template, users in DEEP_TEMPLATES:
        # every depth where json.loads starts to fail, however deep the replica's stack is when it parses
        for depth in range(limit - 150, limit + 30, 3):
            _assert_answered(apps.urls[app], _deep(template, depth), users)


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
def test_the_replicas_survive_the_fuzzing_and_answer_a_valid_request(apps, app):
    # runs after the fuzzing above (pytest keeps file order): a replica that died would have a new name
    assert _assert_answered(apps.urls[app], b"[" * 100_000) == 400
    assert _assert_answered(apps.urls[app], b'{"users": []}') == 200  # the client's probe
    _assert_still_serving(apps, app)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.floats() | st.text(), lambda inner: st.lists(inner, max_size=6)
                    | st.dictionaries(st.text(min_size=20), inner, max_size=6), max_leaves=60))
def test_a_refused_option_is_quoted_within_bounds(value):
    reason = int_option({"top_k": value}, "top_k", 10)
    if value is None:
        assert reason == 10
    else:  # never an integer here: every value is refused, with a reason of bounded length
        assert isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS
    assert len(quote(value)) <= MAX_QUOTE_CHARS


def test_a_wide_deep_value_is_cut_to_the_quote_limit():
    wide = {f"{'k' * 50}{i}": {f"{'j' * 50}{n}": {"x" * 70: ["y" * 70] * 5} for n in range(5)} for i in range(5)}
    assert len(quote(wide)) == MAX_QUOTE_CHARS and quote(wide).endswith("...")


@settings(max_examples=300, deadline=None)
@given(body=near_requests | json_values)
def test_users_of_returns_the_users_or_a_reason(body):
    users = users_of(body)
    if isinstance(users, str):
        assert users
        return
    assert isinstance(body, dict) and isinstance(body["users"], list) and len(users) == len(body["users"])
    for user in users:
        assert isinstance(user["user_id"], str)
        assert all(isinstance(i, str) for i in (*user["recent_items"], *user["inferred_items"]))


# ---------------------------------------------------------------------------------------------------------
# Per-user state over any valid events

# every id the parser accepts: 1..MAX_ID_CHARS characters, no lone surrogate (hypothesis' text has none)
_ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
valid_events = st.builds(
    Event,
    event_id=st.sampled_from(["e1", "e2", "e3"]) | _ids,  # a few ids repeat: replays
    user_id=st.sampled_from(["u1", "u2", "u3"]) | _ids,
    item_id=st.sampled_from(KNOWN_ITEMS) | _ids,
    action=st.sampled_from(sorted(ACTIONS)),
    ts=st.integers(min_value=0, max_value=MAX_TS),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)

# json.dumps writes each character as at most 12 ASCII bytes (an astral one as two \uXXXX escapes)
_ID_JSON = 2 + 12 * MAX_ID_CHARS
_INT_JSON = len(str(MAX_TS))  # version and counts cannot outgrow a Java long either


def state_size_bound(max_recent: int, dedup_window: int = DEDUP_WINDOW) -> int:
    """Most bytes a state made by apply_event from parser-accepted events can serialise to."""
    empty = len(UserState(user_id="").to_json())
    counts = sum(len(json.dumps(action)) + 1 + _INT_JSON + 1 for action in ACTIONS)
    return (empty + 2 * _ID_JSON  # user_id, last_event_id
            + (max_recent + dedup_window) * (_ID_JSON + 1)  # recent_items, recent_event_ids (and commas)
            + 2 * _INT_JSON + counts)  # version, last_event_ts, counts


@settings(max_examples=300, deadline=None)
@given(event=valid_events)
@example(event=Event("\U0010ffff" * MAX_ID_CHARS, "u1", "\U0010ffff" * MAX_ID_CHARS, "rate", MAX_TS, -1e308))
@example(event=Event(*["\U0010ffff" * MAX_ID_CHARS] * 3, "view", 0))  # every field in limits, the whole too big
def test_every_valid_event_parses_back_unless_the_record_is_oversized(event):
    raw = event.to_json()
    parsed = parse_event(raw)
    if len(raw) > MAX_EVENT_BYTES:
        assert isinstance(parsed, DeadLetter) and parsed.reason == OVERSIZED
    else:
        assert parsed == event


_worst = [Event(f"{n:03d}" + "\U0010ffff" * (MAX_ID_CHARS - 3), "\U0010ffff" * MAX_ID_CHARS,
                "\U0010ffff" * MAX_ID_CHARS, action, MAX_TS) for n, action in enumerate(sorted(ACTIONS) * 16)]


@settings(max_examples=300, deadline=None)
@given(events=st.lists(valid_events, max_size=80), max_recent=st.integers(min_value=1, max_value=8))
@example(events=_worst, max_recent=8)  # the longest ids, more events than the dedup window remembers
def test_state_invariants_hold_for_any_sequence_of_valid_events(events, max_recent):
    states: dict[str, UserState] = {}
    applied: dict[str, list[Event]] = {}  # per user, the events that changed its state (the reference)
    bound = state_size_bound(max_recent)
    for event in events:
        before = states.get(event.user_id)
        after, changed = apply_event(before, event, max_recent=max_recent)
        mine = applied.setdefault(event.user_id, [])
        assert changed == (event.event_id not in [e.event_id for e in mine[-DEDUP_WINDOW:]])
        if changed:
            mine.append(event)
            assert after.version == (before.version if before else 0) + 1
            assert newer(after.version, before.version if before else None)
        else:
            assert after == before and not newer(after.version, before.version)
        assert after.version == len(mine) == after.events
        assert after.recent_items == tuple(e.item_id for e in mine[-max_recent:])
        assert len(after.recent_items) <= max_recent
        assert after.last_event_ts == max(e.ts for e in mine)
        raw = after.to_json()
        assert len(raw) <= bound, (len(raw), bound)
        assert UserState.from_json(raw) == after
        states[event.user_id] = after


@settings(max_examples=200, deadline=None)
@given(events=st.lists(valid_events, min_size=1, max_size=30), data=st.data())
def test_consumers_keeping_newer_versions_end_at_each_users_last_state(events, data):
    # the low-latency mode delivers states at least once, in any order: `newer` must still settle on the last
    last: dict[str, UserState] = {}
    emitted: list[UserState] = []
    for event in events:
        state, changed = apply_event(last.get(event.user_id), event)
        last[event.user_id] = state
        if changed:
            emitted.append(state)
    duplicated = data.draw(st.lists(st.sampled_from(emitted), max_size=10))
    kept: dict[str, UserState] = {}
    for state in data.draw(st.permutations(emitted + duplicated)):
        seen = kept.get(state.user_id)
        if newer(state.version, seen.version if seen else None):
            kept[state.user_id] = state
    assert kept == last


_texts = st.text(max_size=300)
user_states = st.builds(
    UserState,
    user_id=_texts,
    recent_items=st.lists(_texts, max_size=5).map(tuple),
    counts=st.dictionaries(st.sampled_from(sorted(ACTIONS)), st.integers(min_value=0, max_value=MAX_TS)),
    version=st.integers(min_value=0, max_value=MAX_TS),
    last_event_id=_texts,
    last_event_ts=st.integers(min_value=0, max_value=MAX_TS),
    recent_event_ids=st.lists(_texts, max_size=5).map(tuple),
    inferred_items=st.lists(_texts, max_size=5).map(tuple),
    inferred_model_version=_texts,
    inferred_at_events=st.integers(min_value=0, max_value=MAX_TS),
    inferred_at_ms=st.integers(min_value=0, max_value=MAX_TS),
)


@settings(max_examples=300, deadline=None)
@given(state=user_states)
def test_any_user_state_round_trips_through_its_json(state):
    raw = state.to_json()
    raw.decode("ascii")  # a Kafka value any consumer can read, whatever the characters
    assert UserState.from_json(raw) == state
    assert UserState.from_json(raw.decode()) == state
