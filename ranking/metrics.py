"""Ranking metrics under full ranking: HR@k, NDCG@k, MRR from the rank of each user's target.

Rank is 0-based. Items tied with the target count half (⌊ties/2⌋ of them ahead), the expected
position under a random order, so a constant scorer gets no free hits.
"""

from __future__ import annotations

import numpy as np
import torch

CUTOFFS = (10, 50, 200)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among non-excluded items.

    scores: (B, N+1) with column 0 = padding; targets: (B,) indices; exclude: (B, N+1) bool mask of
    items not to rank (history, padding). The target itself is never excluded.
    """
    scores = scores.float()
    target_scores = scores.gather(1, targets[:, None])
    candidates = ~exclude.clone()
    candidates[:, 0] = False
    candidates.scatter_(1, targets[:, None], False)
    greater = ((scores > target_scores) & candidates).sum(1)
    ties = ((scores == target_scores) & candidates).sum(1)
    return greater + ties // 2


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """HR@k, NDCG@k for each cutoff and MRR, averaged over users."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    result: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        result[f"HR@{k}"] = float(hit.mean())
        result[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    result["MRR"] = float((1.0 / (ranks + 1.0)).mean())
    return result
