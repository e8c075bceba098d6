"""Nearline behaviour inference in the job: when to refresh a user's inferred items, and how to apply them.

Pure functions, tested without Flink. A user's inferred beyond-log items are refreshed when enough
new events arrived since the last inference or enough time passed (and at least one event is new);
scoring never waits for a refresh, it reads whatever inference the state holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from streaming.state import UserState


@dataclass(frozen=True)
class RefreshPolicy:
    """Refresh after `every_events` new events, or after `every_ms` with at least one new event."""

    every_events: int = 5
    every_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.every_events < 1 or self.every_ms < 0:
            raise ValueError("every_events must be >= 1 and every_ms >= 0")


def events_since_inference(state: UserState) -> int:
    """New events the state's inferred items have not seen."""
    return state.events - state.inferred_at_events


def needs_refresh(state: UserState, policy: RefreshPolicy, now_ms: int) -> bool:
    """True for a user never inferred yet (with an event), after enough events, or after enough time."""
    new = events_since_inference(state)
    if new <= 0:
        return False
    if not state.inferred_model_version:
        return True
    return new >= policy.every_events or now_ms - state.inferred_at_ms >= policy.every_ms


def with_inference(state: UserState, items: Iterable[str], model_version: str, events_seen: int,
                   now_ms: int) -> UserState:
    """The state carrying a new inference made from the user's first `events_seen` events."""
    return replace(state, inferred_items=tuple(items), inferred_model_version=model_version,
                   inferred_at_events=events_seen, inferred_at_ms=now_ms, version=state.version + 1)


def behavior_request(states: Iterable[UserState]) -> list[dict[str, Any]]:
    """The users of one BehaviorReasoner request."""
    return [{"user_id": s.user_id, "recent_items": list(s.recent_items)} for s in states]
