"""The nearline behaviour refresher: which users to re-infer, when to ask, and what the answer changes.

Plain Python over `ShardCalls`, tested without Flink; the keyed operator feeds it states and writes
back the states it returns. Wanted users and in-flight calls live only in memory: after a restore a
user is asked again on its next event (the refresh rule still holds), so nothing needs checkpointing.

Budget: a shard sends a refresh only while the job keeps up (`scoring_behind` False: the operator
judges it by how old the newest event it took is, and by the scores the shard owes). When the job
falls behind, wanted users collect (once each, asked at their newest state) and their inferences grow
older; scores are not delayed for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streaming.behavior import RefreshPolicy, behavior_request, events_since_inference, needs_refresh, with_inference
from streaming.calls import ShardCalls
from streaming.state import UserState

IDLE_AFTER_MS = 1_000  # no event for this long: the job is idle, not behind


def job_behind(taken_lag_ms: int, taken_at_ms: int, now_ms: int, max_lag_ms: int, owed: int, batch_size: int) -> bool:
    """Whether refreshes should wait: events still reach the job later than `max_lag_ms` after their Kafka
    timestamp (the last one `taken_lag_ms` late, taken at `taken_at_ms`; an idle job is not behind), or the
    shard owes more than one batch of scores."""
    late = taken_lag_ms > max_lag_ms and now_ms - taken_at_ms < IDLE_AFTER_MS
    return late or owed > batch_size


@dataclass
class RefreshStep:
    """What one step of a shard came to."""

    updated: list[UserState] = field(default_factory=list)  # states carrying a new inference, to store and emit
    error: BaseException | None = None  # the finished call failed (its users are asked again later)
    latency_ms: int | None = None  # of the finished call
    sent: int = 0  # users in the call started now


class NearlineRefresher:
    """Per shard: the users whose inference is due, one BehaviorReasoner call in flight, its answers applied."""

    def __init__(self, infer: Callable[[list[dict[str, Any]]], dict[str, Any]], policy: RefreshPolicy,
                 batch_size: int, calls: ShardCalls, now_ms: Callable[[], int] | None = None) -> None:
        self.infer = infer
        self.policy = policy
        self.batch_size = batch_size
        self.calls = calls
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        # shard → due users, the most recently active last: a user who is scoring now is refreshed before
        # one who was due long ago and has gone quiet (whose inference no score reads meanwhile)
        self.wanted: dict[int, dict[str, None]] = {}

    def note(self, shard: int, state: UserState) -> None:
        """A user's state changed: remember it if its inference is due."""
        if needs_refresh(state, self.policy, self.now_ms()):
            wanted = self.wanted.setdefault(shard, {})
            wanted.pop(state.user_id, None)  # to the back: the most recently active users go first
            wanted[state.user_id] = None

    def close(self) -> None:
        self.calls.close()

    def has_work(self, shard: int) -> bool:
        return self.calls.busy(shard) or bool(self.wanted.get(shard))

    def step(self, shard: int, state_of: Callable[[str], UserState | None], scoring_behind: bool) -> RefreshStep:
        """Apply the shard's finished call, then start the next one if users wait and scoring keeps up."""
        result = RefreshStep()
        done = self.calls.finished(shard)
        if done is not None:
            result.latency_ms = int(done.seconds * 1000)
            if done.error is not None:
                result.error = done.error
            else:
                result.updated = self._apply(done.value, done.context, state_of)
        wanted = self.wanted.get(shard)
        if wanted and not scoring_behind and not self.calls.busy(shard):
            users = list(wanted)[-self.batch_size:]
            for user in users:
                del wanted[user]
            # each user's newest state (events may have come while it waited), if still behind
            states = [s for s in map(state_of, users) if s is not None and events_since_inference(s) > 0]
            if states:
                request = behavior_request(states)
                self.calls.start(shard, lambda: self.infer(request), {s.user_id: s.events for s in states})
                result.sent = len(states)
        return result

    def _apply(self, response: dict[str, Any], asked: dict[str, int],
               state_of: Callable[[str], UserState | None]) -> list[UserState]:
        now = self.now_ms()
        updated = []
        for answer in response["results"]:
            user = answer.get("user_id")
            state = state_of(user) if user in asked else None
            if state is None or not answer.get("items"):
                continue
            updated.append(with_inference(state, answer["items"], response["model_version"], asked[user], now))
        return updated
