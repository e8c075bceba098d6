"""Ray Serve Ranker deployment: loads a versioned ranker artifact, scores batches of user states.

One HTTP request carries many users ({"users": [{"user_id", "recent_items", "inferred_items"}...]});
`@serve.batch` merges concurrent requests into one forward pass. Configuration (replicas, GPUs,
batching) is data: inference/serve/serve_config.yaml.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.serve.protocol import read_users, split_results
from inference.serve.scoring import LoadedRanker, check_ranker, score_users


@serve.deployment(name="Ranker", max_ongoing_requests=64, health_check_period_s=5)
class Ranker:
    """Scores user states with the ranker artifact it loaded; the response names that version."""

    def __init__(self, artifact: str, top_k: int = 10, device: str = "auto",
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005) -> None:
        self.ranker = LoadedRanker.load(artifact, device)
        self.top_k = top_k
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._metrics = _ServeMetrics()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        started = time.perf_counter()
        flat = [user for users in requests for user in users]
        results = score_users(self.ranker, flat, self.top_k) if flat else []
        self._metrics.observe(len(requests), len(flat), time.perf_counter() - started)
        return split_results(requests, results)

    async def __call__(self, request: Request) -> dict[str, Any] | JSONResponse:
        parsed = await read_users(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        body, users = parsed
        top_k = body.get("top_k") or self.top_k
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            return JSONResponse({"error": f"top_k must be a positive integer, got {top_k!r}"}, status_code=400)
        results = await self.score_batch(users)
        if top_k < self.top_k:
            results = [{**r, "items": r["items"][:top_k], "scores": r["scores"][:top_k]} for r in results]
        return {"model_version": self.ranker.version, "results": results}

    def check_health(self) -> None:
        check_ranker(self.ranker)


class _ServeMetrics:
    """Serve-side Prometheus metrics through Ray's metrics API (exported by Ray's metrics agent)."""

    def __init__(self) -> None:
        from ray.util import metrics

        from monitoring import metrics as names

        self.batches = metrics.Counter(names.RANKER_BATCHES, description="forward passes of the Ranker")
        self.users = metrics.Counter(names.RANKER_USERS_SCORED, description="users scored by the Ranker")
        self.batch_requests = metrics.Histogram(
            names.RANKER_BATCH_REQUESTS, description="requests merged into one forward pass",
            boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.latency = metrics.Histogram(
            names.RANKER_BATCH_SECONDS, description="forward pass latency",
            boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])

    def observe(self, requests: int, users: int, seconds: float) -> None:
        self.batches.inc()
        self.users.inc(users)
        self.batch_requests.observe(requests)
        self.latency.observe(seconds)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve YAML (import_path: inference.serve.ranker_app:build_app)."""
    return Ranker.bind(**args)
