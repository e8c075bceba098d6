"""The client the streaming job uses to call Serve: many users per request, timeouts, retries with backoff.

Failures come in two kinds, because the caller must treat them differently:
- `RetryLater`: Serve could not answer now (unreachable, reset, timed out, 408/429/5xx). The request
  was fine; keep it and send it again later.
- `Rejected`: Serve refused this request (another 4xx) or answered with something that is not a reply
  (not JSON, no `results`, the wrong number of results, a result without items). Sending the same
  request again will not help; the caller isolates what Serve cannot take.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class ServeError(RuntimeError):
    """A Serve call that did not produce a reply."""


class RetryLater(ServeError):
    """Serve could not answer now (unreachable, timed out, overloaded, 5xx): keep the work, try again later."""


class Rejected(ServeError):
    """Serve refused the request (4xx) or sent a malformed reply: the same request would fail again."""


_RETRYABLE_HTTP = frozenset({408, 429})


@dataclass
class RankerClient:
    """POSTs {"users": [...]} to the Ranker route; retries `RetryLater` failures with exponential backoff."""

    url: str
    timeout_s: float = 2.0
    retries: int = 4
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    result_fields: tuple[str, ...] = ("items", "scores")

    def score(self, users: list[dict[str, Any]], top_k: int | None = None) -> dict[str, Any]:
        """{"model_version": str, "results": [{"user_id", "items", "scores"}, ...]} in the order given."""
        return self.post(users, {"top_k": top_k} if top_k else {})

    def probe(self, timeout_s: float = 2.0) -> bool:
        """Whether the route answers a well-formed request now (an empty batch: no model work)."""
        try:
            self._post_once([], {}, min(timeout_s, self.timeout_s))
        except ServeError:
            return False
        return True

    def post(self, users: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST {"users": [...], **options}; the payload, with one result per user in the order given."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(users, options or {}, self.timeout_s)
            except RetryLater as error:
                if attempt == self.retries:
                    raise RetryLater(f"Serve at {self.url} failed after {attempt + 1} attempts: {error}") from error
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _post_once(self, users: list[dict[str, Any]], options: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        body = json.dumps({"users": users, **options}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            text = _error_text(error)
            if error.code in _RETRYABLE_HTTP or error.code >= 500:
                raise RetryLater(f"HTTP {error.code}: {text}") from error
            raise Rejected(f"HTTP {error.code}: {text}") from error
        except (TimeoutError, OSError) as error:  # refused, reset, unreachable, timed out (URLError is an OSError)
            raise RetryLater(f"{type(error).__name__}: {error}") from error
        return self._checked(raw, len(users))

    def _checked(self, raw: bytes, expected: int) -> dict[str, Any]:
        """The reply, or Rejected when it is not one for `expected` users."""
        try:
            payload = json.loads(raw)
        except ValueError as error:
            raise Rejected(f"reply is not JSON: {raw[:120]!r}") from error
        if not isinstance(payload, dict):
            raise Rejected(f"reply is not a JSON object: {raw[:120]!r}")
        if "error" in payload:
            raise Rejected(f"Serve rejected the request: {str(payload['error'])[:200]}")
        results = payload.get("results")
        if not isinstance(results, list) or len(results) != expected:
            got = len(results) if isinstance(results, list) else "no"
            raise Rejected(f"reply has {got} results for {expected} users")
        for result in results:
            if not isinstance(result, dict) or any(not isinstance(result.get(f), list) for f in self.result_fields):
                raise Rejected(f"a result lacks {list(self.result_fields)}: {str(result)[:120]}")
        if not isinstance(payload.get("model_version"), str):
            raise Rejected("reply names no model_version")
        return payload


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(300).decode(errors="replace")
    except Exception:  # the body is informative only
        return str(error.reason)


@dataclass
class BehaviorClient(RankerClient):
    """The same protocol for the BehaviorReasoner route: users' recent items in, inferred items out."""

    timeout_s: float = 10.0
    retries: int = 1
    result_fields: tuple[str, ...] = ("items",)

    def infer(self, users: list[dict[str, Any]]) -> dict[str, Any]:
        """{"model_version": str, "results": [{"user_id", "items", "confidence"}, ...]} in the order given."""
        return self.post(users)
