"""Popularity baseline: score = number of interactions an item has in the visible data."""

from __future__ import annotations

import numpy as np
import torch

from ranking.evaluate import Scorer
from ranking.splits import SequenceData


def popularity_counts(data: SequenceData, split: str) -> torch.Tensor:
    """Item counts over what is visible when predicting `split`: training items (+ validation targets for test)."""
    keep = 2 if split == "valid" else 1
    counts = np.zeros(data.num_items + 1, dtype=np.float64)
    for seq in data.sequences:
        np.add.at(counts, seq[:-keep], 1.0)
    counts[0] = -np.inf
    return torch.as_tensor(counts)


def popularity_scorer(data: SequenceData, split: str) -> Scorer:
    """A scorer ranking every user's candidates by global popularity."""
    counts = popularity_counts(data, split)

    def score(histories: list[np.ndarray], users: list[int]) -> torch.Tensor:
        return counts[None].expand(len(histories), -1)

    return score
