"""Versioned artifact directories: config, weights, metrics, dataset fingerprint.

Layout: <artifacts>/<kind>/<dataset>/<version>/{config.json, weights.pt, metrics.json, dataset.json}
plus <artifacts>/<kind>/<dataset>/LATEST naming the newest version. Serving names the version it loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ranking.paths import artifacts_dir


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact directory."""

    path: Path
    version: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    dataset: dict[str, Any]

    def weights(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return torch.load(self.path / "weights.pt", map_location=device, weights_only=True)


def save_artifact(kind: str, dataset: dict[str, Any], config: dict[str, Any],
                  state_dict: dict[str, torch.Tensor], metrics: dict[str, Any],
                  root: Path | None = None) -> Artifact:
    """Write a new version directory and point LATEST at it."""
    base = (root or artifacts_dir()) / kind / dataset["name"]
    digest = hashlib.sha256(json.dumps([config, dataset], sort_keys=True).encode()).hexdigest()[:8]
    version = f"{time.strftime('%Y%m%dT%H%M%S')}-{digest}"
    path = base / version
    suffix = 1
    while path.exists():
        path = base / f"{version}.{suffix}"
        suffix += 1
    path.mkdir(parents=True)
    torch.save(state_dict, path / "weights.pt")
    for name, payload in (("config", config), ("metrics", metrics), ("dataset", dataset)):
        (path / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True))
    (base / "LATEST").write_text(path.name)
    return Artifact(path, path.name, config, metrics, dataset)


def resolve_artifact(spec: str | Path, kind: str = "ranker", root: Path | None = None) -> Path:
    """An artifact path from a directory, or '<dataset>' / '<dataset>/<version>' under the artifacts root."""
    candidate = Path(spec)
    if (candidate / "config.json").is_file():
        return candidate
    base = (root or artifacts_dir()) / kind
    parts = str(spec).split("/")
    folder = base / parts[0]
    if len(parts) == 1:
        latest = folder / "LATEST"
        if not latest.is_file():
            raise FileNotFoundError(f"no {kind} artifact for {spec!r} under {base}; train one first "
                                    f"(reaseq train {kind} --dataset {spec})")
        return folder / latest.read_text().strip()
    path = base / spec
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no artifact at {path}")
    return path


def catalogue_item_ids(artifact: Artifact) -> list[str]:
    """The catalogue's item ids in the model's index order (index i + 1 is item_ids[i]).

    Artifacts carry them in dataset.json, so serving needs no dataset (nothing is downloaded at start);
    older artifacts without them fall back to loading the dataset, checked by its fingerprint."""
    if "item_ids" in artifact.dataset:
        return [str(i) for i in artifact.dataset["item_ids"]]
    from ranking.data import load_dataset

    dataset = load_dataset(artifact.dataset["name"])
    if dataset.fingerprint != artifact.dataset["fingerprint"]:
        raise ValueError(f"artifact {artifact.path} was trained on other data than {dataset.name}")
    return [str(i) for i in dataset.items.item_id]


def load_artifact(path: Path) -> Artifact:
    """Read an artifact directory's JSON files (weights are loaded on demand)."""
    read = lambda name: json.loads((path / f"{name}.json").read_text())  # noqa: E731
    return Artifact(path, path.name, read("config"), read("metrics"), read("dataset"))
