"""The request shape both Serve apps share: {"users": [{...}, ...]} in, one result per user out.

A body that is not this shape is answered with HTTP 400 and the reason (the client's `Rejected`), never
with a 200 that carries an error nor a 500 (which the client would retry).
"""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

USERS_ERROR = "body must be {\"users\": [{\"user_id\": str, \"recent_items\": [str, ...]}, ...]}"


class UserRequest(BaseModel):
    """One user of a request: its id, recent items and (optionally) inferred items."""

    model_config = ConfigDict(extra="ignore", strict=True)

    user_id: str
    recent_items: list[str] = []
    inferred_items: list[str] = []


_USERS = TypeAdapter(list[UserRequest])

# an error message quotes what it refuses, bounded: a request value can be megabytes long or deeply nested
_QUOTE = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes none
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother = 3, 4, 4, 60, 60


MAX_QUOTE_CHARS = 200  # reprlib bounds each level, not the whole: 4 keys × 4 levels of long keys still add up


def quote(value: Any) -> str:
    """A short repr of a request value for an error message, whatever its size or nesting."""
    text = _QUOTE.repr(value)
    return text if len(text) <= MAX_QUOTE_CHARS else text[: MAX_QUOTE_CHARS - 3] + "..."


def users_of(body: Any) -> list[dict[str, Any]] | str:
    """The request's users as plain dicts, or why the body does not have the shape above."""
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list):
        return USERS_ERROR
    try:
        return [u.model_dump() for u in _USERS.validate_python(users)]
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return f"users.{where}: {first['msg']}"


async def read_users(request: Request) -> tuple[dict[str, Any], list[dict[str, Any]]] | JSONResponse:
    """(body, users) of a request, or the HTTP 400 reply that says what is wrong with it."""
    try:
        body = await request.json()
    except RecursionError:  # json.loads recurses once per level of nesting
        return JSONResponse({"error": "body is nested too deeply to parse"}, status_code=400)
    except ValueError as error:  # not UTF-8, not JSON, or an integer of over 4300 digits
        return JSONResponse({"error": f"body is not JSON: {str(error)[:200]}"}, status_code=400)
    users = users_of(body)
    if isinstance(users, str):
        return JSONResponse({"error": users}, status_code=400)
    return body, users


def int_option(body: dict[str, Any], name: str, default: int) -> int | str:
    """The positive integer option `name` of a request body (`default` when absent or null), or why not."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return f"{name} must be a positive integer, got {quote(value)}"
    return value


def split_results(requests: list[list[Any]], results: list[Any]) -> list[list[Any]]:
    """Results of one merged batch, cut back into the requests they came from (in order)."""
    out, start = [], 0
    for users in requests:
        out.append(results[start:start + len(users)])
        start += len(users)
    return out
