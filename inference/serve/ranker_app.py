"""Ray Serve Ranker deployment: loads a versioned ranker artifact, scores batches of user states.

One HTTP request carries many users ({"users": [{"user_id", "recent_items", "inferred_items"}...]});
concurrent requests are merged into one forward pass (inference/serve/app.py). Configuration
(replicas, GPUs, batching) is data: inference/serve/serve_config.yaml.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.responses import JSONResponse

from inference.serve.app import BatchedUsersApp, PassMetrics
from inference.serve.protocol import int_option
from inference.serve.scoring import LoadedRanker, check_ranker, score_users
from monitoring import metrics as names


@serve.deployment(name="Ranker", max_ongoing_requests=64, health_check_period_s=5)
class Ranker(BatchedUsersApp):
    """Scores user states with the ranker artifact it loaded; the response names that version."""

    def __init__(self, artifact: str, top_k: int = 10, device: str = "auto",
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005,
                 state_cache_users: int = 10_000) -> None:
        from ray.util import metrics

        self.ranker = LoadedRanker.load(artifact, device, state_cache_users)
        self.cache_results = metrics.Counter(names.RANKER_STATE_CACHE, description="users scored, by state cache "
                                             "result (hit: incremental, unchanged, miss: full pass)",
                                             tag_keys=("result",))
        self.cache_seen = (0, 0, 0)
        self.version = self.ranker.version
        self.top_k = top_k
        self.set_batching(max_batch_size, batch_wait_timeout_s)
        self.metrics = PassMetrics(names.RANKER_BATCHES, names.RANKER_USERS_SCORED, names.RANKER_BATCH_SECONDS,
                                   names.RANKER_BATCH_REQUESTS, what="Ranker")

    def run(self, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = score_users(self.ranker, users, self.top_k)
        if self.ranker.cache is not None:
            stats = self.ranker.cache.stats
            now = (stats.hits, stats.unchanged, stats.misses)
            for result, count, before in zip(("hit", "unchanged", "miss"), now, self.cache_seen, strict=True):
                if count > before:
                    self.cache_results.inc(count - before, tags={"result": result})
            self.cache_seen = now
        return results

    def options(self, body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        top_k = int_option(body, "top_k", self.top_k)
        if isinstance(top_k, str):
            return JSONResponse({"error": top_k}, status_code=400)
        return {"top_k": top_k}

    def shape(self, results: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        top_k = options["top_k"]
        if top_k >= self.top_k:
            return results
        return [{**r, "items": r["items"][:top_k], "scores": r["scores"][:top_k],
                 **({"reasons": r["reasons"][:top_k]} if "reasons" in r else {})} for r in results]

    def reply_fields(self) -> dict[str, Any]:
        return {"knowledge_version": self.ranker.knowledge_version}

    def check_health(self) -> None:
        check_ranker(self.ranker)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve YAML (import_path: inference.serve.ranker_app:build_app)."""
    return Ranker.bind(**args)
