"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ranking.metrics import metrics_from_ranks, target_ranks


def test_ranks_exclude_history_and_padding():
    # items 1..5; user 0's target is item 3, item 5 (higher score) is in its history
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.4, 0.2, 0.9],
                           [9.0, 0.1, 0.5, 0.4, 0.2, 0.9]])
    exclude = torch.zeros(2, 6, dtype=torch.bool)
    exclude[0, 5] = True
    ranks = target_ranks(scores, torch.tensor([3, 3]), exclude)
    assert ranks.tolist() == [1, 2]  # user 0: only item 2 beats it; user 1: items 2 and 5


def test_ties_count_half():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # target tied with 4 others
    ranks = target_ranks(scores, torch.tensor([1]), torch.zeros(1, 6, dtype=torch.bool))
    assert ranks.tolist() == [2]


def test_target_in_exclusion_mask_is_still_ranked():
    scores = torch.tensor([[0.0, 0.3, 0.2, 0.1]])
    exclude = torch.tensor([[False, True, True, False]])
    assert target_ranks(scores, torch.tensor([2]), exclude).tolist() == [0]


def test_hand_computed_metrics():
    ranks = np.array([0, 4, 9, 10, 60, 300])
    result = metrics_from_ranks(ranks)
    assert result["HR@10"] == pytest.approx(3 / 6)
    assert result["HR@50"] == pytest.approx(4 / 6)
    assert result["HR@200"] == pytest.approx(5 / 6)
    ndcg10 = (1 / math.log2(2) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert result["NDCG@10"] == pytest.approx(ndcg10)
    assert result["NDCG@50"] == pytest.approx(ndcg10 + (1 / math.log2(12)) / 6)
    assert result["NDCG@200"] == pytest.approx(ndcg10 + (1 / math.log2(12) + 1 / math.log2(62)) / 6)
    assert result["MRR"] == pytest.approx(sum(1 / (r + 1) for r in ranks) / 6)


def test_empty_ranks_raise():
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([]))
