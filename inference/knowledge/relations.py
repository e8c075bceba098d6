"""What the knowledge graph says about pairs of items: grounded reasons and relational item vectors.

Both come from the Freebase triples alone (no LLM), through `evidence.KnowledgeGraph`:
- `RelationIndex`: for each item, the catalogue items it is related to and the strongest relation
  (sequel/prequel, then a shared director, writer, cast members, cinematographer, producer, subject).
  Online, a recommended item is explained by the user's most recent item it relates to — "sequel of
  Star Wars (1977), which you watched" — a dictionary lookup, never generated per event.
- `relational_vectors`: items × shared entities (directors, writers, cast, …, sequel chains), TF-IDF
  weighted and reduced by a truncated SVD, so items sharing people or franchises lie close together.
  Items without KG links get zero rows (the ranker then leans on their text vectors and IDs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from inference.knowledge.evidence import KnowledgeGraph

# strongest first; studio is left out: too many films share one to explain a recommendation
REASON_KINDS = ("sequel", "prequel", "director", "writer", "cast", "cinematographer", "producer", "subject")
VECTOR_KINDS = ("director", "writer", "cast", "cinematographer", "producer", "subject", "studio")
PHRASES = {"sequel": "sequel of {title}", "prequel": "prequel of {title}", "director": "same director as {title}",
           "writer": "same writer as {title}", "cast": "shares {count} cast members with {title}",
           "cinematographer": "same cinematographer as {title}", "producer": "same producer as {title}",
           "subject": "same subject as {title}"}
MAX_RELATED = 200  # per item and kind: beyond this a shared entity explains nothing
MIN_SHARED_CAST = 2  # one shared actor (often a bit part) is too thin a reason


class RelationIndex:
    """item → {related item: (kind, count)}: the strongest KG relation of each related pair."""

    def __init__(self, titles: dict[str, str], related: dict[str, dict[str, tuple[str, int]]]) -> None:
        self.titles = titles
        self.related = related
        rank = {kind: n for n, kind in enumerate(REASON_KINDS)}
        self._ranked = {item: {other: (rank[kind], count) for other, (kind, count) in pairs.items()}
                        for item, pairs in related.items()}

    @classmethod
    def from_graph(cls, graph: KnowledgeGraph, item_ids: Iterable[str]) -> RelationIndex:
        related: dict[str, dict[str, tuple[str, int]]] = {}
        for item in item_ids:
            pairs: dict[str, tuple[str, int]] = {}
            for kind in REASON_KINDS:
                if kind in ("sequel", "prequel"):
                    # this item is the sequel of its prequel: "sequel of <prequel>"
                    others = [(o, 1) for o in graph.lookup(item, "prequel" if kind == "sequel" else "sequel")
                              if not o.startswith("?")]
                else:
                    others = [(o, _shared_count(graph, item, o, kind)) for o in graph.shared(item, kind)[:MAX_RELATED]]
                    if kind == "cast":
                        others = [(o, count) for o, count in others if count >= MIN_SHARED_CAST]
                for other, count in others:
                    if other != item and other not in pairs:
                        pairs[other] = (kind, count)
            if pairs:
                related[item] = pairs
        return cls(dict(graph.titles), related)

    def reasons(self, items: Sequence[str], recent_items: Sequence[str]) -> list[str | None]:
        """Why each of `items` fits a user who watched `recent_items` (oldest first): the strongest relation
        to a watched item, the newest such item on ties — e.g. 'same director as Alien (1979), which you
        watched' — or None. One pass over the user's items, then a lookup per pair."""
        newest = {watched: position for position, watched in enumerate(recent_items)}
        out: list[str | None] = []
        for item in items:
            pairs = self._ranked.get(item)
            best: tuple[int, int, str, int] | None = None  # (kind rank, −position, watched, count)
            if pairs:
                small, large = (pairs, newest) if len(pairs) < len(newest) else (newest, pairs)
                for watched in small:
                    if watched in large:
                        rank, count = pairs[watched]
                        key = (rank, -newest[watched], watched, count)
                        if best is None or key < best:
                            best = key
            if best is None:
                out.append(None)
                continue
            rank, _, watched, count = best
            text = PHRASES[REASON_KINDS[rank]].format(title=self.titles.get(watched, watched), count=count)
            out.append(f"{text}, which you watched")
        return out

    def reason(self, item: str, recent_items: Sequence[str]) -> str | None:
        """`reasons` for one item."""
        return self.reasons([item], recent_items)[0]

    def save(self, path: Path) -> None:
        payload = {"titles": {i: self.titles[i] for i in sorted({i for i in self.related} |
                                                                 {o for p in self.related.values() for o in p})},
                   "related": {i: {o: list(v) for o, v in p.items()} for i, p in self.related.items()}}
        path.write_text(json.dumps(payload, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> RelationIndex:
        payload = json.loads(path.read_text())
        return cls(payload["titles"], {i: {o: (v[0], int(v[1])) for o, v in p.items()}
                                       for i, p in payload["related"].items()})


def _shared_count(graph: KnowledgeGraph, item: str, other: str, kind: str) -> int:
    return len(graph.lookup(item, kind) & graph.lookup(other, kind))


def relational_vectors(graph: KnowledgeGraph, item_ids: Sequence[str], dim: int = 64) -> np.ndarray:
    """(len(item_ids), dim) float32 L2-normalised vectors from the items' shared KG entities."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    columns: dict[tuple[str, str], int] = {}
    rows, cols = [], []
    for row, item in enumerate(item_ids):
        # sorted: set order follows the process's string hashing, and the columns' order moves the SVD's basis
        entities = [(kind, e) for kind in VECTOR_KINDS for e in sorted(graph.lookup(item, kind))]
        chain = {item} | graph.lookup(item, "sequel") | graph.lookup(item, "prequel")
        entities += [("franchise", min(chain))] if len(chain) > 1 else []
        for key in entities:
            rows.append(row)
            cols.append(columns.setdefault(key, len(columns)))
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    if not columns:
        return out
    matrix = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(item_ids), len(columns)))
    frequency = np.asarray((matrix > 0).sum(axis=0)).ravel()
    keep = frequency >= 2  # an entity of one item relates it to nothing
    if not keep.any():
        return out
    matrix = matrix[:, keep].multiply(np.log(len(item_ids) / frequency[keep])[None, :]).tocsr()
    k = min(dim, min(matrix.shape) - 1)
    u, s, _ = svds(matrix, k=k, rng=np.random.default_rng(0))
    order = np.argsort(-s)
    vectors = u[:, order] * s[order]
    out[:, :k] = vectors.astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    # rows of items whose entities no other item shares are numerically ~0: keep them exactly 0
    return np.where(norms > 1e-6, out / np.maximum(norms, 1e-6), 0.0).astype(np.float32)
