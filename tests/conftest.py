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


@pytest.fixture(scope="module")
def kafka():
    """An embedded Apache Kafka on 127.0.0.1 for one test module; its bootstrap servers."""
    from streaming.kafka_broker import EmbeddedKafka

    with EmbeddedKafka() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="module")
def serve(tmp_path_factory, ml100k_sequences):
    """Ray Serve with the Ranker app on a freshly trained tiny artifact, for one test module."""
    from inference.serve.local import LocalServe
    from ranking.experiment import train_and_save
    from tests.helpers import TINY_RANKER

    root = tmp_path_factory.mktemp("artifacts")
    artifact = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=root).artifact
    with LocalServe(str(artifact.path)) as served:
        yield served


@pytest.fixture
def artifacts_root(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    monkeypatch.setenv("REASEQ_ARTIFACTS_DIR", str(root))
    return root
