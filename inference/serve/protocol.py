"""The request shape both Serve apps share: {"users": [{...}, ...]} in, one result per user out."""

from __future__ import annotations

from typing import Any

USERS_ERROR = "body must be {\"users\": [{\"user_id\": ..., \"recent_items\": [...]}, ...]}"


def users_of(body: Any) -> list[dict[str, Any]] | None:
    """The request's users, or None when the body does not have the shape above."""
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
        return None
    return users


def split_results(requests: list[list[Any]], results: list[Any]) -> list[list[Any]]:
    """Results of one merged batch, cut back into the requests they came from (in order)."""
    out, start = [], 0
    for users in requests:
        out.append(results[start:start + len(users)])
        start += len(users)
    return out
