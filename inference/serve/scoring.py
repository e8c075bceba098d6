"""Pure scoring logic behind the Ranker deployment: user states in, top-K items with scores out.

A knowledge-aware ranker artifact also carries the KG's grounded-reason index (relations.json) and,
when its knowledge had records, the intent index: each result then names, per item, why it fits
("sequel of Star Wars (1977), which you watched") and the user's composed intents — lookups only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inference.knowledge.intents import IntentIndex
from inference.knowledge.relations import RelationIndex
from ranking.artifacts import Artifact, catalogue_item_ids, load_artifact, resolve_artifact
from ranking.incremental import RankerStateCache
from ranking.model import SequentialRanker, left_pad

INTENTS_PER_USER = 3


@dataclass(frozen=True)
class LoadedRanker:
    """A ranker artifact ready to score: the model, its item vocabulary, its version, and — when the model
    allows it — the per-user state cache that scores a new event by one token's forward pass."""

    model: SequentialRanker
    item_ids: list[str]
    item_index: dict[str, int]
    version: str
    device: str
    cache: RankerStateCache | None = None
    relations: RelationIndex | None = None
    intents: IntentIndex | None = None
    knowledge_version: str | None = None  # the knowledge-embeddings version fused into the model, if any

    @staticmethod
    def load(spec: str, device: str = "auto", state_cache_users: int = 10_000) -> LoadedRanker:
        """Load an artifact; `state_cache_users` > 0 caches that many users' states (incremental models)."""
        from ranking.experiment import load_ranker

        artifact: Artifact = load_artifact(resolve_artifact(spec))
        model = load_ranker(artifact, device).freeze()
        return LoadedRanker.of(artifact, model, catalogue_item_ids(artifact), state_cache_users)

    @staticmethod
    def of(artifact: Artifact, model: SequentialRanker, item_ids: list[str],
           state_cache_users: int = 0) -> LoadedRanker:
        """A loaded model with what its artifact carries for serving (reason and intent indexes)."""
        cache = RankerStateCache(model, state_cache_users) if model.cfg.incremental and state_cache_users else None
        relations = RelationIndex.load(artifact.path / "relations.json") \
            if (artifact.path / "relations.json").is_file() else None
        intents = IntentIndex.load(artifact.path) if (artifact.path / "intents.json").is_file() else None
        return LoadedRanker(model, item_ids, {item: i + 1 for i, item in enumerate(item_ids)},
                            artifact.version, str(next(model.parameters()).device), cache, relations, intents,
                            artifact.config.get("embeddings_version"))


def check_ranker(ranker: LoadedRanker) -> None:
    """Serve's health check: a one-user forward pass must give finite top scores, else RuntimeError."""
    result = score_users(ranker, [{"user_id": "health-check", "recent_items": ranker.item_ids[:1]}], top_k=1)[0]
    if not result["items"] or not all(math.isfinite(s) for s in result["scores"]):
        raise RuntimeError(f"ranker {ranker.version} gives no finite score: {result}")


def score_users(ranker: LoadedRanker, users: Sequence[dict[str, Any]], top_k: int = 10) -> list[dict[str, Any]]:
    """Top-K unseen items per user from its recent items (and inferred items when the model uses them).

    Unknown item ids in a state are skipped (they cannot be embedded); a user with no known item gets
    the model's output for an empty history.
    """
    index = ranker.item_index
    histories = [[index[i] for i in user.get("recent_items", ()) if i in index] for user in users]
    model = ranker.model
    inferred = None
    if model.cfg.extra_len:
        inferred = [[index[i] for i in user.get("inferred_items", ()) if i in index][-model.cfg.extra_len:]
                    for user in users]
    with torch.no_grad():
        if ranker.cache is not None:
            hidden = ranker.cache.hidden([str(user.get("user_id")) for user in users], histories, inferred)
            scores = model.scores(hidden).float()
        else:
            extra = None if inferred is None else left_pad(inferred, model.cfg.extra_len).to(ranker.device)
            scores = model.score_last(left_pad(histories, model.cfg.max_len).to(ranker.device), extra).float()
    scores[:, 0] = -torch.inf
    for row, history in enumerate(histories):
        if history:
            scores[row, torch.as_tensor(history)] = -torch.inf
    k = min(top_k, scores.shape[1] - 1)
    top = torch.topk(scores, k, dim=1)
    results = []
    for row, user in enumerate(users):
        items = [ranker.item_ids[i - 1] for i in top.indices[row].tolist()]
        result = {"user_id": user.get("user_id"), "items": items,
                  "scores": [round(s, 5) for s in top.values[row].tolist()]}
        if ranker.relations is not None or ranker.intents is not None:
            recent = [ranker.item_ids[i - 1] for i in histories[row]]
            if ranker.relations is not None:
                result["reasons"] = ranker.relations.reasons(items, recent)
            if ranker.intents is not None:
                result["intents"] = ranker.intents.compose(recent, top=INTENTS_PER_USER).intents
        results.append(result)
    return results
