"""Shared fixtures: the real ML-100K sequences (downloaded once into the cache) and isolated artifact dirs."""

from __future__ import annotations

import pytest
import torch

from ranking.data import Dataset, load_dataset
from ranking.splits import SequenceData, build_sequences

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ml100k() -> Dataset:
    return load_dataset("ml-100k")


@pytest.fixture(scope="session")
def ml100k_sequences(ml100k: Dataset) -> SequenceData:
    return build_sequences(ml100k)


@pytest.fixture
def artifacts_root(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    monkeypatch.setenv("REASEQ_ARTIFACTS_DIR", str(root))
    return root
