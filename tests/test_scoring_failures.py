"""What the job does when Serve fails (streaming/scoring.py), without the engines: retry while Serve is down,
split a batch to isolate the users Serve will not score, dead-letter only those, never raise."""

from __future__ import annotations

import json

import pytest

from inference.serve.client import Rejected, RetryLater
from streaming.events import UNSCORABLE
from streaming.scoring import PendingScore, RetryPolicy, score_pending, unscorable_letter
from streaming.state import UserState

POLICY = RetryPolicy(backoff_ms=100, max_backoff_ms=1_000, max_failures=3)


def _pending(users: list[str]) -> list[PendingScore]:
    out, versions = [], {}
    for n, user in enumerate(users):
        versions[user] = versions.get(user, 0) + 1
        state = UserState(user_id=user, recent_items=("1", "2"), version=versions[user], last_event_ts=n)
        out.append(PendingScore(state, f"e{n}", 1_000 + n))
    return out


class FakeServe:
    """Scores every user except those it rejects (4xx) or fails on (5xx); down = nothing answers."""

    def __init__(self, reject: set[str] = frozenset(), fail: set[str] = frozenset(), down: bool = False) -> None:
        self.reject, self.fail, self.down = set(reject), set(fail), down
        self.calls: list[list[str]] = []

    def score(self, newest: list[PendingScore]) -> dict:
        users = [p.state.user_id for p in newest]
        self.calls.append(users)
        if self.down:
            raise RetryLater("ConnectionRefusedError: [Errno 111] Connection refused")
        if self.reject & set(users):
            raise Rejected(f"HTTP 400: cannot score {sorted(self.reject & set(users))}")
        if self.fail & set(users):
            raise RetryLater("HTTP 500: model error")
        return {"model_version": "v1", "results": [{"user_id": u, "items": ["9"], "scores": [1.0]} for u in users]}

    def alive(self) -> bool:
        return not self.down


def _flush(serve: FakeServe, pending: list[PendingScore], failures: int = 0):
    return score_pending(pending, serve.score, serve.alive, failures, POLICY, "scores")


def _scored_events(result) -> list[str]:
    return [event for _, _, value in result.records for event, _ in json.loads(value)["covered"]]


def test_all_scored_in_one_call():
    serve = FakeServe()
    result = _flush(serve, _pending(["a", "b", "a"]))
    assert sorted(_scored_events(result)) == ["e0", "e1", "e2"] and not result.kept and not result.unscorable
    assert serve.calls == [["a", "b"]]


def test_rejected_user_is_isolated_and_everyone_else_is_scored():
    users = [f"u{n}" for n in range(16)]
    serve = FakeServe(reject={"u11"})
    pending = _pending([*users, "u11"])  # u11 has two events
    result = _flush(serve, pending)
    assert not result.kept
    assert [(group[-1].state.user_id, [p.event_id for p in group]) for group, _ in result.unscorable] == \
        [("u11", ["e11", "e16"])]
    assert "HTTP 400" in result.unscorable[0][1]
    assert sorted(_scored_events(result)) == sorted(f"e{n}" for n in range(16) if n != 11)
    assert len(serve.calls) <= 2 + 2 * 4  # bisection: about 2·log2(16) calls, not one per user


def test_serve_down_keeps_everything_and_never_gives_up():
    serve = FakeServe(down=True)
    pending = _pending(["a", "b"])
    for failures in (0, 5, 500):  # however long the outage: nothing is dead-lettered
        result = _flush(serve, pending, failures)
        assert result.kept == pending and not result.records and not result.unscorable and not result.counted


def test_batch_failing_while_serve_answers_is_retried_then_split():
    serve = FakeServe(fail={"b"})
    pending = _pending(["a", "b", "c"])
    for failures in range(POLICY.max_failures - 1):
        result = _flush(serve, pending, failures)
        assert result.kept == pending and result.counted
    result = _flush(serve, pending, POLICY.max_failures - 1)
    assert not result.kept and sorted(_scored_events(result)) == ["e0", "e2"]
    assert [g[-1].state.user_id for g, _ in result.unscorable] == ["b"]


def test_outage_during_isolation_keeps_the_rest_instead_of_blaming_users():
    serve = FakeServe(reject={"a"})
    pending = _pending(["a", "b", "c", "d"])

    def score(newest):
        if len(serve.calls) >= 1:  # Serve goes down right after the first (rejected) call
            serve.down = True
        return serve.score(newest)

    result = score_pending(pending, score, serve.alive, 0, POLICY, "scores")
    assert not result.unscorable and not result.records
    assert sorted(p.event_id for p in result.kept) == ["e0", "e1", "e2", "e3"]


def test_unscorable_letter_carries_the_refused_request_and_the_events():
    group = _pending(["a", "a"])
    letter = unscorable_letter(group, "Rejected: HTTP 400: bad user", "events")
    assert letter.reason == UNSCORABLE and letter.event_ids == ("e0", "e1") and letter.source_topic == "events"
    assert json.loads(letter.original())["user_id"] == "a"


@pytest.mark.parametrize(("retries", "delay"), [(1, 100), (2, 200), (4, 800), (5, 1_000), (10_000, 1_000)])
def test_backoff_doubles_up_to_the_cap(retries, delay):
    assert POLICY.delay_ms(retries) == delay


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(backoff_ms=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_ms=500, max_backoff_ms=100)
