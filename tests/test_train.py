"""A short real training run on a slice of ML-100K beats popularity; windows cover the sequence."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.baselines import popularity_scorer
from ranking.evaluate import evaluate
from ranking.experiment import dataset_record
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


def test_artifacts_carry_the_catalogue_so_serving_loads_no_dataset(tmp_path, monkeypatch):
    import ranking.data
    from ranking.artifacts import catalogue_item_ids, load_artifact, save_artifact
    from ranking.splits import SequenceData

    data = SequenceData("synthetic", "f" * 16, ["10", "20", "30"], ["u1"], [np.array([1, 2, 3])])
    record = dataset_record(data)
    artifact = load_artifact(save_artifact("ranker", record, {}, {}, {}, root=tmp_path).path)

    def no_download(*_args, **_kwargs):
        raise AssertionError("serving must not load the dataset")

    monkeypatch.setattr(ranking.data, "load_dataset", no_download)
    assert catalogue_item_ids(artifact) == ["10", "20", "30"]
    older = load_artifact(save_artifact("ranker", {k: v for k, v in record.items() if k != "item_ids"}, {}, {}, {},
                                        root=tmp_path).path)
    with pytest.raises(AssertionError, match="must not load"):  # an older artifact falls back to the dataset
        catalogue_item_ids(older)
