"""The model's answers, shipped with the project, so the demo, the ablations and CI never run the model.

A knowledge build on 2 CPU cores takes hours (5-9 s an item with the 1.5B model). The records it makes carry
the dataset's titles and genres, and the MovieLens terms forbid redistributing those, so the records never
ship: the model's answers do (`inference/knowledge/data/llm-answers-<dataset>.jsonl.xz`: request keys and
replies, no prompt; see answers.py), beside a provenance file (`llm-answers-<dataset>.json`: the build
command, model, counts, the pack's sha256). A build replays them through the agents on the user's own copy
of the dataset and rebuilds the same records with no model (`reaseq knowledge build --cached-only`);
`reaseq knowledge pack` makes a pack from a build's answer book.
"""

from __future__ import annotations

import json
import lzma
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inference.knowledge.answers import read_book, replies_repeating
from ranking.wheels import sha256_of

SHIPPED_DIR = Path(__file__).parent / "data"
# why no dataset's records ship, only the model's answers (the pack command says it)
RECORDS_NOT_SHIPPED = ("the MovieLens terms forbid redistributing the titles and genres the records carry; the "
                       "model's answers rebuild them on your own copy")


class ShippedResultsError(RuntimeError):
    """A shipped pack that cannot be trusted: missing provenance, wrong checksum, unreadable rows."""


def answers_path(dataset: str, folder: Path = SHIPPED_DIR) -> Path:
    return folder / f"llm-answers-{dataset}.jsonl.xz"


def answers_provenance_path(dataset: str, folder: Path = SHIPPED_DIR) -> Path:
    return folder / f"llm-answers-{dataset}.json"


def pack_answers(book: Path, dataset: str, model: str, command: str, folder: Path = SHIPPED_DIR,
                 dataset_texts: Iterable[str] = ()) -> dict[str, Any]:
    """Pack a build's answer book (answers.py) into the shipped answers file and write its provenance.

    The pack holds the model's words only, so it can ship where the dataset's terms forbid shipping the
    records: a reply that repeats one of `dataset_texts` (the catalogue's titles) is withheld, and a build
    replayed from the pack asks the model that question again (or, with no model, goes without it)."""
    # the items first: an item is cached after its answers are in the book, so a build still running cannot
    # count an item whose answers this pack misses
    items_built = len(items_with_record(book.parent))
    rows = read_book(book)
    if not rows:
        raise ShippedResultsError(f"{book} holds no recorded answer: run `reaseq knowledge build --dataset "
                                  f"{dataset}` first")
    withheld = replies_repeating(rows, dataset_texts)
    kept = sorted(key for key in rows if key not in withheld)
    if not kept:
        raise ShippedResultsError(f"every reply in {book} repeats one of the dataset's titles; nothing to pack")
    target = _write_pack(answers_path(dataset, folder), ({"key": key, "reply": rows[key]} for key in kept))
    return _write_provenance(
        answers_provenance_path(dataset, folder), target, dataset, command, model, answers=len(kept),
        withheld=len(withheld),  # replies that repeat a title of the dataset, left out of the pack
        items_built=items_built,  # the records the build made from them (the book names no item)
        llm_seconds=round(sum(row["seconds"] for row in rows.values()), 1),
        holds="request keys (sha256 of the model and the request) and the model's replies; no prompt")


def load_answers(dataset: str, folder: Path = SHIPPED_DIR) -> dict[str, dict[str, Any]]:
    """request key → reply of the answers pack shipped for `dataset` (empty when none ships), checksum verified."""
    return {row["key"]: row["reply"] for row in _read_pack(answers_path(dataset, folder),
                                                             answers_provenance_path(dataset, folder), dataset)}


def load_all_answers(folder: Path = SHIPPED_DIR) -> dict[str, dict[str, Any]]:
    """request key → reply of every answers pack shipped in `folder`, checksums verified.

    A key is the sha256 of the model and the whole request, so a reply recorded while building one catalogue
    answers the same question asked while building another (a film both MovieLens sets hold, with the same
    evidence): the packs are one book."""
    answers: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("llm-answers-*.jsonl.xz")):
        answers.update(load_answers(path.name.removeprefix("llm-answers-").removesuffix(".jsonl.xz"), folder))
    return answers


def items_with_record(cache: Path) -> set[str]:
    """The items a build's cache folder holds a record for (torn or temporary files left out)."""
    items: set[str] = set()
    for path in sorted(cache.glob("*.json")) if cache.is_dir() else ():
        try:
            value = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("record"):
            items.add(value["item_id"])
    return items


def _write_provenance(path: Path, target: Path, dataset: str, command: str, model: str, **facts: Any
                      ) -> dict[str, Any]:
    """A pack's provenance beside it: what it is, its checksum, the command and model that made it, `facts`."""
    provenance = {"dataset": dataset, "file": target.name, "sha256": sha256_of(target),
                  "bytes": target.stat().st_size, "command": command, "model": model, **facts,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def _write_pack(target: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Rows as xz-compressed JSON lines, written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    tmp.replace(target)
    return target


def _read_pack(target: Path, meta_path: Path, dataset: str) -> list[dict[str, Any]]:
    """The rows of a shipped pack, its checksum verified against its provenance (none when it is absent)."""
    if not target.is_file():
        return []
    fix = (f"restore it with `git checkout -- {target.parent}` or rebuild it: run the build command in "
           f"{meta_path.name}, then `reaseq knowledge pack --dataset {dataset}`")
    if not meta_path.is_file():
        raise ShippedResultsError(f"{target} ships without its provenance file {meta_path}; {fix}")
    meta = json.loads(meta_path.read_text())
    if sha256_of(target) != meta.get("sha256"):
        raise ShippedResultsError(f"{target} does not match the sha256 in {meta_path} (changed or truncated); {fix}")
    try:
        with lzma.open(target, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
    except (lzma.LZMAError, ValueError) as error:
        raise ShippedResultsError(f"{target} is unreadable ({error}); {fix}") from error
