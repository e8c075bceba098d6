"""Versioned knowledge artifacts beside the ranker's: <artifacts>/<kind>/<dataset>/<version>/ with LATEST.

Kinds: `knowledge` (records, provenance, failures) and `knowledge-embeddings` (vectors + texts).
The root is ranking.paths.artifacts_dir() ($REASEQ_ARTIFACTS_DIR or ./artifacts), as for rankers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranking.paths import artifacts_dir

KNOWLEDGE = "knowledge"
EMBEDDINGS = "knowledge-embeddings"


def digest_of(payload: Any) -> str:
    """Short stable hash of a JSON-serialisable payload."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


def new_version_dir(kind: str, dataset: str, tag: str, root: Path | None = None) -> Path:
    """A fresh, empty version directory `<timestamp>-<tag>` (LATEST is moved only by `publish`)."""
    base = (root or artifacts_dir()) / kind / dataset
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{tag}"
    path, suffix = base / name, 1
    while path.exists():
        path, suffix = base / f"{name}.{suffix}", suffix + 1
    path.mkdir(parents=True)
    return path


def publish(path: Path) -> str:
    """Point the kind/dataset's LATEST at `path` (atomic rename); return the version."""
    latest = path.parent / "LATEST"
    tmp = latest.with_name(f".LATEST.{os.getpid()}")
    tmp.write_text(path.name)
    tmp.replace(latest)
    return path.name


def publish_unless_unchanged(path: Path, files: Sequence[str]) -> str:
    """Publish `path`, unless the version LATEST names already holds byte-identical `files`: then drop `path`
    and return that version, so a rebuild that changed nothing (a replay, a resumed build) adds no version."""
    latest = path.parent / "LATEST"
    previous = path.parent / latest.read_text().strip() if latest.is_file() else None
    if previous is not None and _tag(previous) == _tag(path) and all(
            (previous / name).is_file() and (previous / name).read_bytes() == (path / name).read_bytes()
            for name in files):
        shutil.rmtree(path)
        return previous.name
    return publish(path)


def _tag(path: Path) -> str:
    """The tag of a version directory `<timestamp>-<tag>[.N]`."""
    return path.name.split("-", 1)[-1].split(".")[0]


def resolve_version(kind: str, dataset: str, version: str | None = None, root: Path | None = None) -> Path:
    """The directory of a version (default: LATEST); FileNotFoundError says how to build one."""
    base = (root or artifacts_dir()) / kind / dataset
    if version is None:
        latest = base / "LATEST"
        if not latest.is_file():
            raise FileNotFoundError(f"no {kind} artifact for {dataset} under {base.parent}; build one with "
                                    f"`reaseq knowledge {'embed' if kind == EMBEDDINGS else 'build'} "
                                    f"--dataset {dataset}`")
        version = latest.read_text().strip()
    path = base / version
    if not path.is_dir():
        raise FileNotFoundError(f"no {kind} artifact {version!r} at {path}")
    return path


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
