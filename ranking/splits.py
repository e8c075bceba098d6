"""Chronological per-user sequences and the leave-one-out split of the evaluation protocol.

All ratings count as implicit interactions. Each user's items are ordered by timestamp, ties kept in
file order (stable sort). The last item is the test target, the second last the validation target,
everything before is training. Item indices run 1..N over the whole catalogue; 0 is padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ranking.data import Dataset
from ranking.paths import cache_dir

log = logging.getLogger(__name__)

MIN_INTERACTIONS = 3  # one training item, one validation and one test target


@dataclass(frozen=True)
class SequenceData:
    """Per-user chronological item-index sequences over a fixed item vocabulary."""

    dataset: str
    fingerprint: str
    item_ids: list[str]  # index i+1 ↔ item_ids[i]
    user_ids: list[str]
    sequences: list[np.ndarray]

    @property
    def num_items(self) -> int:
        """Catalogue size N (indices 1..N)."""
        return len(self.item_ids)

    def train(self, user: int) -> np.ndarray:
        """Training items of a user: all but the last two."""
        return self.sequences[user][:-2]

    def valid_target(self, user: int) -> int:
        return int(self.sequences[user][-2])

    def test_target(self, user: int) -> int:
        return int(self.sequences[user][-1])

    def item_index(self) -> dict[str, int]:
        """Raw item id → index (1..N)."""
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


def chronological_sequences(interactions: pd.DataFrame, item_index: dict[str, int],
                            min_interactions: int = MIN_INTERACTIONS) -> tuple[list[str], list[np.ndarray]]:
    """Group interactions per user, order by timestamp (stable: ties keep file order)."""
    frame = interactions.assign(_order=np.arange(len(interactions)))
    frame = frame.sort_values(["user_id", "timestamp", "_order"], kind="stable")
    users: list[str] = []
    sequences: list[np.ndarray] = []
    for user, group in frame.groupby("user_id", sort=False):
        if len(group) < min_interactions:
            continue
        users.append(str(user))
        sequences.append(np.array([item_index[i] for i in group.item_id], dtype=np.int64))
    order = sorted(range(len(users)), key=lambda k: _natural_key(users[k]))
    return [users[k] for k in order], [sequences[k] for k in order]


def build_sequences(dataset: Dataset, use_cache: bool = True) -> SequenceData:
    """Sequences for a dataset, cached under the cache dir by dataset fingerprint."""
    path = cache_dir() / "processed" / f"{dataset.name}-{dataset.fingerprint}.npz"
    if use_cache and path.is_file():
        cached = _load_cached(path, dataset)
        if cached is not None:
            return cached
    item_ids = list(dataset.items.item_id)
    users, sequences = chronological_sequences(dataset.interactions, {i: k + 1 for k, i in enumerate(item_ids)})
    data = SequenceData(dataset.name, dataset.fingerprint, item_ids, users, sequences)
    if use_cache:
        _save_cached(path, data)
    return data


def cold_split(data: SequenceData, fraction: float, seed: int = 0) -> tuple[SequenceData, np.ndarray]:
    """Hold a fixed random `fraction` of items out of training: removed from every user's training part
    (validation and test targets stay), so they are cold items, never seen in training. Returns the data
    and the cold item indices."""
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(np.arange(1, data.num_items + 1), size=int(fraction * data.num_items), replace=False))
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold] = True
    sequences = [np.concatenate([s[:-2][~is_cold[s[:-2]]], s[-2:]]) for s in data.sequences]
    return replace(data, sequences=sequences), cold


def save_sequences(data: SequenceData, path: Path) -> Path:
    """Write the sequences as one self-describing file (dataset name and fingerprint included), e.g. to
    train on a machine that cannot download the dataset."""
    _save_cached(Path(path), data)
    return Path(path)


def load_sequences_file(path: str | Path) -> SequenceData:
    """Sequences from a file written by `save_sequences` (checksum verified)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write one with `reaseq data export --dataset NAME --out {path}`")
    meta, sequences = _read_sequences(path)
    if "dataset" not in meta:
        raise ValueError(f"{path} names no dataset; export it again with `reaseq data export`")
    return SequenceData(meta["dataset"], meta["fingerprint"], meta["item_ids"], meta["user_ids"], sequences)


def _read_sequences(path: Path) -> tuple[dict, list[np.ndarray]]:
    """The metadata and sequences of a sequences file; ValueError if it fails its checksum."""
    with np.load(path) as archive:
        flat, lengths = archive["flat"], archive["lengths"]
        meta = json.loads(str(archive["meta"]))
    if _checksum(meta["item_ids"], meta["user_ids"], flat, lengths) != meta["checksum"]:
        raise ValueError(f"{path} fails its checksum")
    return meta, np.split(flat, np.cumsum(lengths)[:-1])


def _checksum(item_ids: list[str], users: list[str], flat: np.ndarray, lengths: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([item_ids, users]).encode())
    digest.update(flat.tobytes())
    digest.update(lengths.tobytes())
    return digest.hexdigest()


def _save_cached(path: Path, data: SequenceData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate(data.sequences)
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    meta = json.dumps({"dataset": data.dataset, "fingerprint": data.fingerprint,
                       "item_ids": data.item_ids, "user_ids": data.user_ids,
                       "checksum": _checksum(data.item_ids, data.user_ids, flat, lengths)})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, flat=flat, lengths=lengths, meta=np.array(meta))
    tmp.replace(path)


def _load_cached(path: Path, dataset: Dataset) -> SequenceData | None:
    try:
        meta, sequences = _read_sequences(path)
    except Exception as error:  # a truncated, foreign or corrupted file: rebuild, and say so
        log.warning("processed split %s unreadable (%s); rebuilding it", path, error)
        return None
    return SequenceData(dataset.name, dataset.fingerprint, meta["item_ids"], meta["user_ids"], sequences)


def _natural_key(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 62, text)
