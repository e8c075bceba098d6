"""The redesigned beyond-log test: personal slices, the baselines, the metrics, one tiny end-to-end run."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.beyond_log import (
    below_average_genres,
    beyond_log_table,
    hide_personal_slices,
    item_knn_scores,
    list_metrics,
    run_beyond_log,
    top_k_in_slice,
    user_slice,
)
from ranking.splits import SequenceData

# item 0 is padding; 1-6 Drama, 7-9 Horror, 10-12 Sci-Fi, 13 Horror|Sci-Fi, 14 Drama|Horror
GENRES = ([set()] + [{"Drama"}] * 6 + [{"Horror"}] * 3 + [{"Sci-Fi"}] * 3 + [{"Horror", "Sci-Fi"}]
          + [{"Drama", "Horror"}])


def test_below_average_genres_are_personal():
    population = {"Drama": 0.6, "Horror": 0.3, "Sci-Fi": 0.25}
    assert below_average_genres([1, 2, 3, 7, 10], GENRES, population) == {"Horror", "Sci-Fi"}
    assert below_average_genres([7, 8, 9, 1], GENRES, population) == {"Drama"}  # a horror fan
    assert below_average_genres([1, 2], GENRES, population) == set()  # never watched: not below, absent


def test_a_slice_holds_items_whose_genres_all_lie_in_it():
    in_slice = user_slice({"Horror", "Sci-Fi"}, GENRES)
    assert np.flatnonzero(in_slice).tolist() == [7, 8, 9, 10, 11, 12, 13]  # not 14 (also Drama), not padding


def toy_data(users: int = 30, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    sequences = []
    for user in range(users):
        favourite = [1, 2, 3, 4, 5, 6] if user % 2 else [7, 8, 9, 10, 11, 12]
        other = [7, 8, 9, 10, 11, 12, 13] if user % 2 else [1, 2, 3, 4, 5, 6]
        seq = list(rng.permutation(favourite)) * 2 + list(rng.choice(other, size=5, replace=False))
        sequences.append(np.asarray(rng.permutation(seq), dtype=np.int64))
    return SequenceData("toy", "toy", [f"i{i}" for i in range(1, 15)], [f"u{u}" for u in range(users)], sequences)


def test_hiding_takes_half_of_each_test_users_slice_and_nothing_else():
    data = toy_data()
    visible, hidden, slices = hide_personal_slices(data, GENRES, test_share=0.5, seed=3, min_hidden=2, min_kept=5)
    assert hidden and len(hidden) == len(slices)
    for user, items in hidden.items():
        before, after = data.sequences[user], visible.sequences[user]
        assert len(after) + len(items) == len(before)
        assert slices[user][items].all()  # every hidden item is in the user's own slice
        in_slice_before = int(slices[user][before].sum())
        assert len(items) == in_slice_before // 2
        assert sorted(np.concatenate([after, items]).tolist()) == sorted(before.tolist())
    for user in set(range(len(data.sequences))) - set(hidden):
        assert np.array_equal(visible.sequences[user], data.sequences[user])


def test_list_metrics_by_hand():
    hidden = np.asarray([5, 9])
    assert list_metrics([5, 9, 1], hidden, 3) == (1.0, pytest.approx(1.0))
    recall, ndcg = list_metrics([1, 9, 2], hidden, 3)
    assert recall == 0.5 and ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert list_metrics([1, 2, 3], hidden, 3) == (0.0, 0.0)


def test_item_knn_prefers_items_watched_by_the_same_users():
    data = SequenceData("toy", "toy", ["a", "b", "c", "d"], ["u0", "u1", "u2"],
                        [np.asarray([1, 2]), np.asarray([1, 2, 3]), np.asarray([3, 4])])
    scores = item_knn_scores(data, [np.asarray([1])])
    assert scores[0, 2] > scores[0, 3] > scores[0, 4] == 0


def test_top_k_in_slice_keeps_to_the_slice_and_skips_the_history():
    scores = torch.arange(15, dtype=torch.float32)[None].flip(1)  # item 1 best … item 14 worst
    in_slice = user_slice({"Horror"}, GENRES)  # 7, 8, 9
    assert top_k_in_slice(scores, [np.asarray([7])], [in_slice], 2) == [[8, 9]]


def test_a_tiny_run_reports_every_method_against_the_rft_model(ml100k, ml100k_sequences, tmp_path):
    import yaml

    from inference.behavior.rft import RewardConfig, RFTConfig
    from inference.behavior.train import BehaviorTrainConfig
    from tests.helpers import TINY_BEHAVIOR_CONFIG, TINY_RANKER

    genres_of = dict(zip(ml100k.items.item_id, ml100k.items.genres, strict=True))
    item_genres = [set()] + [set(genres_of[item]) for item in ml100k_sequences.item_ids]
    tiny_reward_ranker = tmp_path / "ranker.yaml"
    tiny_reward_ranker.write_text(yaml.safe_dump({"model": TINY_RANKER.model, "train": {"epochs": 1,
                                                                                       "batch_size": 256}}))
    rft = RFTConfig(steps=1, users_per_step=4, group_size=2, eval_users=4, reward=RewardConfig(future=3, k=5),
                    reward_ranker=str(tiny_reward_ranker))
    behavior = replace(BehaviorTrainConfig(**TINY_BEHAVIOR_CONFIG), rft=rft)
    result = run_beyond_log(ml100k_sequences, item_genres, TINY_RANKER, behavior, knowledge=None, test_share=0.1,
                            progress=False)
    assert result["test_users"] > 10 and result["k"] == 5
    assert set(result["metrics"]) == {"popularity_in_slice", "item_knn_in_slice", "ranker_in_slice",
                                      "diffusion_ids_only", "diffusion_ids_only_rft"}
    assert result["rft_model"] == "diffusion_ids_only_rft"
    assert set(result["rft_versus"]) == set(result["metrics"]) - {"diffusion_ids_only_rft"}
    for values in result["metrics"].values():
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert "diffusion_ids_only_rft" in beyond_log_table(result)
    with pytest.raises(ValueError, match="rft: section"):
        run_beyond_log(ml100k_sequences, item_genres, TINY_RANKER, replace(behavior, rft=None), None)
