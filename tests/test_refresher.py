"""Background calls per shard and the nearline refresher, without Flink."""

from __future__ import annotations

import threading

import pytest

from streaming.behavior import RefreshPolicy
from streaming.calls import ShardCalls
from streaming.refresher import NearlineRefresher
from streaming.state import UserState


def test_one_call_in_flight_per_shard_and_its_answer_or_error_is_picked_up_later():
    calls: ShardCalls[str] = ShardCalls(workers=2, name="test")
    gate = threading.Event()
    calls.start(0, lambda: gate.wait(5) and "answer", "context-0")
    calls.start(1, lambda: 1 / 0, "context-1")
    with pytest.raises(RuntimeError, match="already has a call"):
        calls.start(0, lambda: None, "again")
    assert calls.finished(0) is None and calls.busy(0)  # still out: the caller goes on
    failed = calls.finished(1, wait_s=5)
    assert failed is not None and isinstance(failed.error, ZeroDivisionError) and failed.context == "context-1"
    gate.set()
    done = calls.finished(0, wait_s=5)
    assert done is not None and done.value == "answer" and done.error is None and done.context == "context-0"
    assert not calls.busy(0) and calls.finished(0) is None
    calls.close()


def _state(user: str, events: int, inferred_at: int = 0, version: str = "") -> UserState:
    return UserState(user_id=user, recent_items=tuple(str(i) for i in range(events)), counts={"rate": events},
                     version=events, inferred_at_events=inferred_at, inferred_model_version=version)


class FakeReasoner:
    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    def __call__(self, users: list[dict]) -> dict:
        self.requests.append([u["user_id"] for u in users])
        return {"model_version": "b1", "results": [{"user_id": u["user_id"], "items": ["99"]} for u in users]}


def _finish(refresher: NearlineRefresher, shard: int) -> None:
    """Wait for the shard's call without taking it (the next step takes it)."""
    refresher.calls.join(shard, 5)


def test_refresher_asks_due_users_once_at_their_newest_state_and_applies_the_answer():
    reasoner = FakeReasoner()
    states = {"a": _state("a", 3, 3, "b0"), "b": _state("b", 1)}
    refresher = NearlineRefresher(reasoner, RefreshPolicy(every_events=2, every_ms=60_000), batch_size=8,
                                  calls=ShardCalls(workers=1, name="b"), now_ms=lambda: 1_000)
    refresher.note(0, states["a"])  # inferred at its 3rd event, nothing new: not due
    refresher.note(0, states["b"])  # never inferred: due
    states["b"] = _state("b", 2)
    refresher.note(0, states["b"])  # due again: still one entry
    step = refresher.step(0, states.get, scoring_behind=False)
    assert step.sent == 1 and not step.updated
    _finish(refresher, 0)
    step = refresher.step(0, states.get, scoring_behind=False)
    assert reasoner.requests == [["b"]]
    [updated] = step.updated
    assert updated.inferred_items == ("99",) and updated.inferred_model_version == "b1"
    assert updated.inferred_at_events == 2 and updated.version == states["b"].version + 1
    assert not refresher.has_work(0)


def test_refresher_waits_while_scoring_is_behind_and_keeps_the_users_it_owes():
    reasoner = FakeReasoner()
    states = {u: _state(u, 1) for u in "abc"}
    refresher = NearlineRefresher(reasoner, RefreshPolicy(every_events=1), batch_size=2,
                                  calls=ShardCalls(workers=1, name="b"), now_ms=lambda: 0)
    for state in states.values():
        refresher.note(3, state)
    assert refresher.step(3, states.get, scoring_behind=True).sent == 0  # the budget: scores first
    assert refresher.has_work(3) and not reasoner.requests
    assert refresher.step(3, states.get, scoring_behind=False).sent == 2  # batch_size users per call
    _finish(refresher, 3)
    assert len(refresher.step(3, states.get, scoring_behind=False).updated) == 2
    _finish(refresher, 3)
    refresher.step(3, states.get, scoring_behind=False)
    assert reasoner.requests == [["b", "c"], ["a"]]  # the most recently due first


def test_a_user_who_becomes_due_again_moves_ahead_of_quiet_ones():
    reasoner = FakeReasoner()
    states = {u: _state(u, 1) for u in "abc"}
    refresher = NearlineRefresher(reasoner, RefreshPolicy(every_events=1), batch_size=1,
                                  calls=ShardCalls(workers=1, name="b"), now_ms=lambda: 0)
    for user in "abca":
        refresher.note(0, states[user])
    refresher.step(0, states.get, scoring_behind=False)
    _finish(refresher, 0)
    assert reasoner.requests == [["a"]]


def test_a_failed_refresh_is_reported_and_changes_no_state():
    def broken(users: list[dict]) -> dict:
        raise OSError("reasoner down")

    states = {"a": _state("a", 1)}
    refresher = NearlineRefresher(broken, RefreshPolicy(), batch_size=4, calls=ShardCalls(workers=1, name="b"))
    refresher.note(0, states["a"])
    refresher.step(0, states.get, scoring_behind=False)
    _finish(refresher, 0)
    step = refresher.step(0, states.get, scoring_behind=False)
    assert isinstance(step.error, OSError) and not step.updated


def test_refreshes_wait_while_events_arrive_late_or_scores_pile_up_but_not_when_idle():
    from streaming.refresher import job_behind

    assert not job_behind(taken_lag_ms=100, taken_at_ms=10_000, now_ms=10_050, max_lag_ms=500, owed=10, batch_size=64)
    assert job_behind(taken_lag_ms=5_000, taken_at_ms=10_000, now_ms=10_050, max_lag_ms=500, owed=10, batch_size=64)
    # the backlog is gone and nothing arrives: idle, so the users still owed a refresh get it
    assert not job_behind(taken_lag_ms=5_000, taken_at_ms=10_000, now_ms=12_000, max_lag_ms=500, owed=0, batch_size=64)
    assert job_behind(taken_lag_ms=0, taken_at_ms=10_000, now_ms=10_050, max_lag_ms=500, owed=65, batch_size=64)
