"""Ray Serve BehaviorReasoner deployment: infers beyond-log behaviours for batches of user states.

One HTTP request carries many users ({"users": [{"user_id", "recent_items"}...]}); concurrent requests
are merged into one sampling pass (inference/serve/app.py). The response names the artifact version
(and, for an RFT-tuned model, the version it was tuned from); the job stores it beside the inferred
items. Configuration is data: inference/serve/serve_config.yaml.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from inference.behavior.reasoner import BehaviorReasoner
from inference.serve.app import BatchedUsersApp, PassMetrics
from monitoring import metrics as names


@serve.deployment(name="BehaviorReasoner", max_ongoing_requests=64, health_check_period_s=5)
class BehaviorReasonerDeployment(BatchedUsersApp):
    """Samples K behaviours per user with the cached masked-diffusion sampler."""

    def __init__(self, artifact: str, device: str = "auto", slots: int | None = None, steps: int | None = None,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01) -> None:
        self.reasoner = BehaviorReasoner.load(artifact, device)
        self.version = self.reasoner.version
        self.sampling = self.reasoner.sampling_with(slots=slots, steps=steps)
        self.set_batching(max_batch_size, batch_wait_timeout_s)
        self.metrics = PassMetrics(names.BEHAVIOR_BATCHES, names.BEHAVIOR_USERS_INFERRED,
                                   names.BEHAVIOR_BATCH_SECONDS, what="BehaviorReasoner")

    def run(self, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.reasoner.infer(users, self.sampling)

    def reply_fields(self) -> dict[str, Any]:
        return {"parent_version": self.reasoner.parent}  # an RFT-tuned model names what it was tuned from

    def check_health(self) -> None:
        self.reasoner.check(self.sampling)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve YAML (import_path: inference.behavior.serve_app:build_app)."""
    return BehaviorReasonerDeployment.bind(**args)
