"""Train → evaluate → save: the steps the CLI, the demo and the benchmarks share."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranking.artifacts import Artifact, load_artifact, save_artifact
from ranking.baselines import popularity_scorer
from ranking.data import load_dataset
from ranking.evaluate import evaluate
from ranking.model import RankerConfig, SequentialRanker
from ranking.splits import SequenceData, build_sequences
from ranking.train import TrainConfig, model_scorer, pick_device, train_ranker


@dataclass(frozen=True)
class RankerRun:
    """One trained ranker with its test metrics and where it was saved."""

    artifact: Artifact
    test: dict[str, float]
    valid: dict[str, float]


def machine_description() -> str:
    """CPU count and model, or the GPU name: recorded beside every number."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{torch.get_num_threads()} CPU threads ({cpu}), torch {torch.__version__}"


def load_sequences(dataset: str, data_dir: str | None = None) -> SequenceData:
    return build_sequences(load_dataset(dataset, data_dir))


def dataset_record(data: SequenceData) -> dict[str, Any]:
    """What an artifact records of its training data; item_ids let serving run without the dataset."""
    return {"name": data.dataset, "fingerprint": data.fingerprint, "users": len(data.user_ids),
            "items": data.num_items, "interactions": int(sum(len(s) for s in data.sequences)),
            "item_ids": [str(i) for i in data.item_ids]}


def train_and_save(data: SequenceData, cfg: TrainConfig, progress: bool = True,
                   root: Path | None = None, extras: dict[str, dict[int, np.ndarray]] | None = None,
                   provenance: dict[str, Any] | None = None, side_embeddings: torch.Tensor | None = None,
                   attachments: dict[str, Path] | None = None) -> RankerRun:
    """Train a ranker, evaluate it on the test split, and save it as a versioned artifact.

    `extras` ({"train", "valid", "test"} → user → item indices) feeds the extra sequence (e.g. inferred
    behaviours) when cfg.model sets extra_len; `provenance` is recorded in the artifact's config;
    `side_embeddings` (N+1, d) are fused knowledge vectors; `attachments` (name → file) are copied into the
    artifact for serving (e.g. the grounded-reason index).
    """
    extras = extras or {}
    result = train_ranker(data, cfg, extra=extras.get("train"), valid_extra=extras.get("valid"), progress=progress,
                          side_embeddings=side_embeddings)
    test = evaluate(data, model_scorer(result.model, result.device, extras.get("test")), "test")
    metrics = {"test": test, "valid": result.valid, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "train_seconds": round(result.seconds, 1),
               "device": result.device, "machine": machine_description(), "history": result.history}
    config = {"model": result.model_config.to_dict(), "train": cfg.to_dict(), "kind": "sasrec-ce",
              **(provenance or {})}
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    artifact = save_artifact("ranker", dataset_record(data), config, state, metrics, root)
    for name, source in (attachments or {}).items():
        shutil.copyfile(source, artifact.path / name)
    return RankerRun(artifact, test, result.valid)


def load_ranker(artifact: Artifact, device: str = "auto") -> SequentialRanker:
    """Rebuild a trained ranker from its artifact (side embeddings come from its weights)."""
    device = pick_device(device)
    weights = artifact.weights(device)
    model = SequentialRanker(RankerConfig(**artifact.config["model"]), weights.get("side"))
    model.load_state_dict(weights)
    return model.to(device).eval()


def evaluate_artifact(path: Path, data: SequenceData, split: str = "test", device: str = "auto") -> dict[str, float]:
    """Metrics of a saved ranker on a split; refuses an artifact trained on other data."""
    artifact = load_artifact(path)
    if artifact.dataset.get("fingerprint") != data.fingerprint:
        raise ValueError(f"artifact {path} was trained on {artifact.dataset.get('name')} "
                         f"(fingerprint {artifact.dataset.get('fingerprint')}), not on {data.dataset} "
                         f"(fingerprint {data.fingerprint})")
    model = load_ranker(artifact, device)
    return evaluate(data, model_scorer(model, str(next(model.parameters()).device)), split)


def evaluate_popularity(data: SequenceData, split: str = "test") -> dict[str, float]:
    return evaluate(data, popularity_scorer(data, split), split)
