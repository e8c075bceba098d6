"""What both Serve apps share: many users per request, concurrent requests merged into one model pass.

A subclass loads its model, names its `version`, and implements `run(users)` (one result per user, in
order) and, if it takes options, `options(body)`. The base answers a malformed body with HTTP 400
(inference/serve/protocol.py), merges concurrent requests with `@serve.batch` (limits from the Serve
YAML, set per replica), records Ray metrics of each pass, and replies
{"model_version": ..., "results": [...]}.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.serve.protocol import read_users, split_results

LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


class PassMetrics:
    """Ray metrics of the model passes: passes, users, requests merged into one, pass latency."""

    def __init__(self, passes: str, users: str, seconds: str, requests: str | None = None, what: str = "") -> None:
        from ray.util import metrics

        self.passes = metrics.Counter(passes, description=f"model passes of the {what}")
        self.users = metrics.Counter(users, description=f"users handled by the {what}")
        self.latency = metrics.Histogram(seconds, description="model pass latency", boundaries=LATENCY_BOUNDARIES)
        self.requests = (metrics.Histogram(requests, description="requests merged into one pass",
                                           boundaries=[1, 2, 4, 8, 16, 32, 64]) if requests else None)

    def observe(self, requests: int, users: int, seconds: float) -> None:
        self.passes.inc()
        self.users.inc(users)
        self.latency.observe(seconds)
        if self.requests is not None:
            self.requests.observe(requests)


class BatchedUsersApp:
    """The request handling of a Serve app over users; subclasses add the model."""

    version: str
    metrics: PassMetrics

    def set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.batch.set_max_batch_size(max_batch_size)
        self.batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def run(self, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def options(self, body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        """Per-request options from the body, or the HTTP 400 reply saying what is wrong with them."""
        return {}

    def shape(self, results: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        """The results as this request asked for them (e.g. cut to its top_k)."""
        return results

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def batch(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        flat = [user for users in requests for user in users]
        if not flat:  # only empty requests (the client's probe): no model pass to run, nor to count
            return [[] for _ in requests]
        started = time.perf_counter()
        results = self.run(flat)
        self.metrics.observe(len(requests), len(flat), time.perf_counter() - started)
        return split_results(requests, results)

    async def __call__(self, request: Request) -> dict[str, Any] | JSONResponse:
        parsed = await read_users(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        body, users = parsed
        options = self.options(body)
        if isinstance(options, JSONResponse):
            return options
        return {"model_version": self.version, **self.reply_fields(),
                "results": self.shape(await self.batch(users), options)}

    def reply_fields(self) -> dict[str, Any]:
        """Fields every reply carries beside model_version (e.g. the knowledge version)."""
        return {}
