"""Ray Serve BehaviorReasoner deployment: infers beyond-log behaviours for batches of user states.

One HTTP request carries many users ({"users": [{"user_id", "recent_items"}...]}); `@serve.batch`
merges concurrent requests into one sampling pass. The response names the artifact version, which
the job stores beside the inferred items. Configuration is data: inference/serve/serve_config.yaml.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.behavior.reasoner import BehaviorReasoner
from inference.serve.protocol import read_users, split_results


@serve.deployment(name="BehaviorReasoner", max_ongoing_requests=64, health_check_period_s=5)
class BehaviorReasonerDeployment:
    """Samples K behaviours per user with the cached masked-diffusion sampler."""

    def __init__(self, artifact: str, device: str = "auto", slots: int | None = None, steps: int | None = None,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01) -> None:
        self.reasoner = BehaviorReasoner.load(artifact, device)
        self.sampling = self.reasoner.sampling_with(slots=slots, steps=steps)
        self.infer_batch.set_max_batch_size(max_batch_size)
        self.infer_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._metrics = _BehaviorMetrics()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def infer_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        started = time.perf_counter()
        flat = [user for users in requests for user in users]
        results = self.reasoner.infer(flat, self.sampling) if flat else []
        self._metrics.observe(len(flat), time.perf_counter() - started)
        return split_results(requests, results)

    async def __call__(self, request: Request) -> dict[str, Any] | JSONResponse:
        parsed = await read_users(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        _, users = parsed
        return {"model_version": self.reasoner.version, "results": await self.infer_batch(users)}

    def check_health(self) -> None:
        self.reasoner.check(self.sampling)


class _BehaviorMetrics:
    """Serve-side Prometheus metrics through Ray's metrics API."""

    def __init__(self) -> None:
        from ray.util import metrics

        from monitoring import metrics as names

        self.batches = metrics.Counter(names.BEHAVIOR_BATCHES, description="sampling passes of the BehaviorReasoner")
        self.users = metrics.Counter(names.BEHAVIOR_USERS_INFERRED, description="users whose behaviours were inferred")
        self.latency = metrics.Histogram(
            names.BEHAVIOR_BATCH_SECONDS, description="sampling pass latency",
            boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])

    def observe(self, users: int, seconds: float) -> None:
        self.batches.inc()
        self.users.inc(users)
        self.latency.observe(seconds)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve YAML (import_path: inference.behavior.serve_app:build_app)."""
    return BehaviorReasonerDeployment.bind(**args)
