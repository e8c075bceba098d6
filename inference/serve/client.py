"""The client the streaming job uses to call Serve: many users per request, timeouts, retries with backoff."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class ServeUnavailable(RuntimeError):
    """Serve did not answer after every retry; the caller keeps the work and tries again later."""


@dataclass
class RankerClient:
    """POSTs {"users": [...]} to the Ranker route; retries with exponential backoff."""

    url: str
    timeout_s: float = 2.0
    retries: int = 4
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def score(self, users: list[dict[str, Any]], top_k: int | None = None) -> dict[str, Any]:
        """{"model_version": str, "results": [{"user_id", "items", "scores"}, ...]} in the order given."""
        return self.post(users, {"top_k": top_k} if top_k else {})

    def post(self, users: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST {"users": [...], **options}; the payload, with one result per user in the order given."""
        body = json.dumps({"users": users, **(options or {})}).encode()
        delay, last_error = self.backoff_s, None
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read())
                if "error" in payload:
                    raise ValueError(f"Serve rejected the request: {payload['error']}")
                if len(payload["results"]) != len(users):
                    raise ServeUnavailable(f"{len(payload['results'])} results for {len(users)} users")
                return payload
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ServeUnavailable,
                    json.JSONDecodeError) as error:
                last_error = error
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
        raise ServeUnavailable(f"Serve at {self.url} failed after {self.retries + 1} attempts: {last_error}")


@dataclass
class BehaviorClient(RankerClient):
    """The same protocol for the BehaviorReasoner route: users' recent items in, inferred items out."""

    timeout_s: float = 10.0
    retries: int = 1

    def infer(self, users: list[dict[str, Any]]) -> dict[str, Any]:
        """{"model_version": str, "results": [{"user_id", "items", "confidence"}, ...]} in the order given."""
        return self.post(users)
