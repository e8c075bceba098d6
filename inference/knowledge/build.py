"""The resumable batch job: evidence → reasoner → verifier for every item, cached, as a versioned artifact."""

from __future__ import annotations

from pathlib import Path

from inference.knowledge.store import KNOWLEDGE, read_jsonl, resolve_version


def load_records(dataset: str, version: str | None = None, root: Path | None = None) -> tuple[dict[str, dict], str]:
    """Item id → knowledge record of a knowledge artifact (default LATEST), and its version."""
    path = resolve_version(KNOWLEDGE, dataset, version, root)
    return {row["item_id"]: row for row in read_jsonl(path / "records.jsonl")}, path.name
