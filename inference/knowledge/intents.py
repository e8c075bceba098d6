"""The intent index: items ↔ atomic intents, and a user's intent vector composed by retrieval (no LLM).

Offline, every distinct intent phrase in the knowledge records is embedded once (all-MiniLM-L6-v2).
Online, a user's recent items are looked up in the item → intents table, weighted by recency,
summed per intent, the top intents kept, and their vectors mixed: numpy only, no model, no network.

Files (inside a knowledge-embeddings version): intents.json (phrases), intent_embeddings.npy,
item_intents.json (item id → intent indices).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.knowledge.embeddings import l2_normalise


@dataclass
class UserIntent:
    """A user's composed intent: the top intents with weights and the mixed vector."""

    intents: list[str]
    weights: list[float]
    vector: np.ndarray


class IntentIndex:
    """Item ↔ intent lookup tables and intent vectors, laid out for fast composition."""

    def __init__(self, phrases: list[str], vectors: np.ndarray, item_intents: Mapping[str, Sequence[int]]) -> None:
        if vectors.shape[0] != len(phrases):
            raise ValueError(f"{len(phrases)} intents but {vectors.shape[0]} vectors")
        self.phrases = phrases
        self.vectors = l2_normalise(vectors)
        self.item_ids = list(item_intents)
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        lengths = np.array([len(item_intents[i]) for i in self.item_ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.flat = np.array([k for i in self.item_ids for k in item_intents[i]], dtype=np.int64)
        # (items, max intents) padded with -1: one fancy-indexing step per user, no Python loop
        self.table = np.full((len(self.item_ids), max(1, int(lengths.max(initial=0)))), -1, dtype=np.int64)
        for row, item in enumerate(self.item_ids):
            self.table[row, : len(item_intents[item])] = item_intents[item]
        self.items_of: dict[int, list[str]] = {}
        for item in self.item_ids:
            for k in item_intents[item]:
                self.items_of.setdefault(int(k), []).append(item)

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping], encode) -> IntentIndex:
        """Build from knowledge records (item id → record with 'intents'); `encode(texts)` embeds phrases."""
        phrases = sorted({p for r in records.values() for p in r.get("intents", [])})
        index = {p: k for k, p in enumerate(phrases)}
        item_intents = {item: [index[p] for p in r.get("intents", [])] for item, r in records.items()}
        return cls(phrases, encode(phrases), item_intents)

    def save(self, folder: Path) -> None:
        (folder / "intents.json").write_text(json.dumps(self.phrases))
        np.save(folder / "intent_embeddings.npy", self.vectors)
        table = {item: self.flat[self.offsets[r]:self.offsets[r + 1]].tolist() for r, item in enumerate(self.item_ids)}
        (folder / "item_intents.json").write_text(json.dumps(table))

    @classmethod
    def load(cls, folder: Path) -> IntentIndex:
        if not (folder / "intents.json").is_file():
            raise FileNotFoundError(f"{folder} has no intent index (embeddings built without knowledge records)")
        return cls(json.loads((folder / "intents.json").read_text()), np.load(folder / "intent_embeddings.npy"),
                   json.loads((folder / "item_intents.json").read_text()))

    def intents_of(self, item_id: str) -> list[str]:
        row = self.row_of.get(item_id)
        if row is None:
            return []
        return [self.phrases[k] for k in self.flat[self.offsets[row]:self.offsets[row + 1]]]

    def compose_rows(self, rows: np.ndarray, top: int = 5, decay: float = 0.9) -> UserIntent:
        """Compose from item rows (oldest first): recency-weighted intent counts → top intents → mixed vector."""
        rows = rows[rows >= 0]
        if rows.size == 0:
            return UserIntent([], [], np.zeros(self.vectors.shape[1], dtype=np.float32))
        recency = decay ** np.arange(rows.size - 1, -1, -1, dtype=np.float64)
        intents = self.table[rows]
        valid = intents >= 0
        weights = np.broadcast_to(recency[:, None], intents.shape)[valid]
        scores = np.bincount(intents[valid], weights=weights, minlength=len(self.phrases))
        k = min(top, int((scores > 0).sum()))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        weights = scores[best] / scores[best].sum()
        vector = weights.astype(np.float32) @ self.vectors[best]
        norm = float(np.linalg.norm(vector))
        return UserIntent([self.phrases[i] for i in best], weights.tolist(),
                          vector / norm if norm > 0 else vector)

    def compose(self, recent_items: Sequence[str], top: int = 5, decay: float = 0.9) -> UserIntent:
        """A user's intent from their recent item ids (oldest first); unknown items are skipped."""
        get = self.row_of.get
        rows = np.array([get(i if isinstance(i, str) else str(i), -1) for i in recent_items], dtype=np.int64)
        return self.compose_rows(rows, top, decay)

    def items_for(self, intent: str) -> list[str]:
        """Items carrying an intent (the index's other direction)."""
        try:
            return list(self.items_of.get(self.phrases.index(intent), []))
        except ValueError:
            return []
