"""BehaviorReasoner logic (what the Ray Serve deployment wraps): user states in, inferred items out.

Item ids in a state that the model does not know are skipped (they cannot be embedded), and only the
latest `max_history` items are read (documented truncation). A user with no known item gets no
inference (an empty list and the reason), never an error for the whole batch. With temperature 0
(the default) results do not depend on which other users share the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from inference.behavior.diffusion import SamplingConfig, encode_histories, sample_cached
from inference.behavior.model import DiffusionBehaviorModel
from ranking.artifacts import catalogue_item_ids, load_artifact, resolve_artifact
from ranking.fit import autocast_for


@dataclass(frozen=True)
class BehaviorReasoner:
    """A behaviour artifact ready to infer: model, item vocabulary, version, default sampling."""

    model: DiffusionBehaviorModel
    item_ids: list[str]
    item_index: dict[str, int]
    version: str
    device: str
    sampling: SamplingConfig
    parent: str | None = None  # the version an RFT-tuned model was tuned from

    @staticmethod
    def load(spec: str, device: str = "auto") -> BehaviorReasoner:
        from inference.behavior.train import load_behavior_model

        artifact = load_artifact(resolve_artifact(spec, kind="behavior"))
        model = load_behavior_model(artifact, device)
        item_ids = catalogue_item_ids(artifact)
        sampling = SamplingConfig(**artifact.config["train"].get("sampling", {}))
        return BehaviorReasoner(model, item_ids, {item: i + 1 for i, item in enumerate(item_ids)}, artifact.version,
                                str(next(model.parameters()).device), sampling, artifact.config.get("parent"))

    def sampling_with(self, **overrides: Any) -> SamplingConfig:
        """The artifact's sampling settings with some replaced (None = keep)."""
        return replace(self.sampling, **{k: v for k, v in overrides.items() if v is not None})

    def check(self, sampling: SamplingConfig | None = None) -> None:
        """Serve's health check: one user's inference must fill every slot with finite confidence."""
        sampling = sampling or self.sampling
        result = self.infer([{"user_id": "health-check", "recent_items": self.item_ids[:1]}], sampling)[0]
        if len(result["items"]) != sampling.slots or not all(math.isfinite(c) for c in result["confidence"]):
            raise RuntimeError(f"behaviour model {self.version} gives no usable inference: {result}")

    def infer(self, users: Sequence[dict[str, Any]], sampling: SamplingConfig | None = None) -> list[dict[str, Any]]:
        """[{"user_id", "items", "confidence"}] in the order given (plus "skipped" when nothing was inferred)."""
        sampling = sampling or self.sampling
        histories = [[self.item_index[i] for i in user.get("recent_items", ()) if i in self.item_index]
                     for user in users]
        usable = [row for row, history in enumerate(histories) if history]
        results: list[dict[str, Any]] = [{"user_id": user.get("user_id"), "items": [], "confidence": [],
                                          "skipped": "no known item in the history"} for user in users]
        if not usable:
            return results
        batch = encode_histories([histories[row] for row in usable], self.model.cfg.max_history).to(self.device)
        with torch.no_grad(), autocast_for(self.device):
            items, confidence = sample_cached(self.model, batch, sampling)
        for out_row, row in enumerate(usable):
            results[row] = {"user_id": users[row].get("user_id"),
                            "items": [self.item_ids[i - 1] for i in items[out_row].tolist()],
                            "confidence": [round(c, 5) for c in confidence[out_row].float().tolist()]}
        return results
