"""A short real training run on a slice of ML-100K beats popularity; windows cover the sequence."""

from __future__ import annotations

import numpy as np

from ranking.baselines import popularity_scorer
from ranking.evaluate import evaluate
from ranking.train import TrainConfig, model_scorer, train_ranker, training_windows


def test_training_windows_cover_every_transition():
    seq = np.arange(1, 12)
    windows = training_windows([seq], max_len=4)
    assert all(len(w) <= 5 for w in windows)
    transitions = {(int(w[i]), int(w[i + 1])) for w in windows for i in range(len(w) - 1)}
    assert transitions == {(i, i + 1) for i in range(1, 11)}


def test_short_training_beats_popularity_on_a_slice(ml100k_sequences):
    data = ml100k_sequences
    users = list(range(0, 943, 2))  # 472 users
    cfg = TrainConfig(epochs=12, patience=12, batch_size=64, lr=2e-3, seed=7,
                      model={"max_len": 30, "dim": 32, "layers": 1, "heads": 1, "dropout": 0.1})
    result = train_ranker(data, cfg, users=users, progress=False)
    ranker = evaluate(data, model_scorer(result.model, result.device), "test", users)
    popularity = evaluate(data, popularity_scorer(data, "test"), "test", users)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert ranker["NDCG@10"] > popularity["NDCG@10"] * 1.2, (ranker, popularity)
    assert ranker["HR@10"] > popularity["HR@10"], (ranker, popularity)
