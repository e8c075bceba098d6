"""Chronological sequences and leave-one-out: no validation or test item leaks into training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ranking.splits import build_sequences, chronological_sequences


def test_order_is_by_time_with_ties_in_file_order():
    frame = pd.DataFrame({
        "user_id": ["u", "u", "u", "u", "v", "v", "v"],
        "item_id": ["c", "a", "b", "d", "a", "b", "c"],
        "timestamp": [30, 10, 10, 40, 5, 5, 5],
        "rating": [1.0] * 7,
    })
    index = {"a": 1, "b": 2, "c": 3, "d": 4}
    users, sequences = chronological_sequences(frame, index)
    assert users == ["u", "v"]
    assert sequences[0].tolist() == [1, 2, 3, 4]  # a and b tie at t=10: file order a, b
    assert sequences[1].tolist() == [1, 2, 3]


def test_users_with_too_few_interactions_are_left_out():
    frame = pd.DataFrame({"user_id": ["u", "u", "v", "v", "v"], "item_id": ["a", "b", "a", "b", "c"],
                          "timestamp": [1, 2, 1, 2, 3], "rating": [1.0] * 5})
    users, _ = chronological_sequences(frame, {"a": 1, "b": 2, "c": 3})
    assert users == ["v"]


def test_leave_one_out_on_ml100k(ml100k, ml100k_sequences):
    data = ml100k_sequences
    assert len(data.user_ids) == 943 and data.num_items == 1_682
    assert sum(len(s) for s in data.sequences) == 100_000
    frame = ml100k.interactions
    for user in range(len(data.user_ids)):
        train = set(data.train(user).tolist())
        assert data.valid_target(user) not in train
        assert data.test_target(user) not in train
        assert data.valid_target(user) != data.test_target(user)
        assert len(data.train(user)) == len(data.sequences[user]) - 2
    # the test target is the user's latest rating
    user = 0
    rows = frame[frame.user_id == data.user_ids[user]]
    latest = rows.timestamp.max()
    assert data.item_ids[data.test_target(user) - 1] in set(rows[rows.timestamp == latest].item_id)


def test_processed_split_cache_round_trips_and_rebuilds_when_corrupt(ml100k, tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path))
    first = build_sequences(ml100k)
    cached = next((tmp_path / "processed").glob("*.npz"))
    second = build_sequences(ml100k)
    assert all(np.array_equal(a, b) for a, b in zip(first.sequences, second.sequences, strict=True))
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated: must be detected and rebuilt
    third = build_sequences(ml100k)
    assert all(np.array_equal(a, b) for a, b in zip(first.sequences, third.sequences, strict=True))
