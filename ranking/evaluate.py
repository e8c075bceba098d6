"""The evaluation protocol: leave-one-out, full ranking over all items minus the user's history."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ranking.metrics import metrics_from_ranks, target_ranks
from ranking.splits import SequenceData

# scorer(histories) -> (B, N+1) scores, higher is better
Scorer = Callable[[list[np.ndarray], list[int]], torch.Tensor]


def split_inputs(data: SequenceData, split: str, users: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
    """Histories and targets for a split: 'valid' predicts item -2 from the items before it, 'test' item -1."""
    if split == "valid":
        return [data.sequences[u][:-2] for u in users], [data.valid_target(u) for u in users]
    if split == "test":
        return [data.sequences[u][:-1] for u in users], [data.test_target(u) for u in users]
    raise ValueError(f"unknown split {split!r} (valid or test)")


def rank_users(data: SequenceData, scorer: Scorer, split: str = "test",
               users: Sequence[int] | None = None, batch_size: int = 256) -> np.ndarray:
    """0-based rank of each user's target under `scorer`, excluding the user's history."""
    users = list(range(len(data.sequences))) if users is None else list(users)
    ranks: list[np.ndarray] = []
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        histories, targets = split_inputs(data, split, chunk)
        with torch.no_grad():
            scores = scorer(histories, chunk).float().cpu()
        exclude = torch.zeros(len(chunk), data.num_items + 1, dtype=torch.bool)
        for row, history in enumerate(histories):
            exclude[row, torch.as_tensor(history, dtype=torch.long)] = True
        ranks.append(target_ranks(scores, torch.as_tensor(targets), exclude).numpy())
    return np.concatenate(ranks)


def evaluate(data: SequenceData, scorer: Scorer, split: str = "test",
             users: Sequence[int] | None = None) -> dict[str, float]:
    """HR@10/50/200, NDCG@10/50/200 and MRR of `scorer` on a split."""
    return metrics_from_ranks(rank_users(data, scorer, split, users))
