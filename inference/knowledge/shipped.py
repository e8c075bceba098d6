"""Built knowledge shipped with the project, so the demo, the ablations and CI never rebuild it.

A knowledge build on 2 CPU cores takes hours (about 9 s an item with the 1.5B model), so the results it
cached (`<cache>/knowledge/<dataset>/`, one JSON per item, calibration and director answer) are packed
into one xz-compressed JSON-lines file, `inference/knowledge/data/<dataset>.results.jsonl.xz`, beside a
provenance file (`<dataset>.results.json`: the build command, model, prompt and schema versions, counts,
the pack's sha256). A build reads the pack as a second cache: every entry is keyed by the item, its
evidence, the prompt version, the model and the options, so it is used only where all of them match and
anything else is built afresh. `reaseq knowledge build --cached-only` writes the artifact from it with no
model; `reaseq knowledge pack` makes it from a build's cache.

Where the dataset's terms forbid shipping its titles and genres (MovieLens-1M, `RECORDS_NOT_SHIPPED`), only
the model's answers ship (`llm-answers-<dataset>.jsonl.xz`: request keys and replies, no prompt; see
answers.py): a build replays them through the agents on the user's own copy and rebuilds the same records.
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
CLAIMS = "claims"  # the sub-cache of director answers (build.director_claims)
KINDS = ("items", CLAIMS)
# datasets whose built results (records, traces, evidence: the dataset's titles and genres) must not ship;
# only the model's answers do (pack_answers), and a user's own copy of the dataset rebuilds the rest
RECORDS_NOT_SHIPPED = {"ml-1m": "MovieLens-1M's terms forbid redistributing its titles and genres, which the "
                                "records carry"}


class ShippedResultsError(RuntimeError):
    """A shipped pack that cannot be trusted: missing provenance, wrong checksum, unreadable rows."""


def pack_path(dataset: str, folder: Path = SHIPPED_DIR) -> Path:
    return folder / f"{dataset}.results.jsonl.xz"


def provenance_path(dataset: str, folder: Path = SHIPPED_DIR) -> Path:
    return folder / f"{dataset}.results.json"


def no_entries() -> dict[str, dict[str, Any]]:
    """kind → key → value with nothing in it (no pack shipped, or packs ignored)."""
    return {kind: {} for kind in KINDS}


def _cached_entries(cache: Path) -> dict[str, dict[str, Any]]:
    """kind → key → value of a build's cache folder (torn or temporary files left out)."""
    entries = no_entries()
    for kind, folder in (("items", cache), (CLAIMS, cache / CLAIMS)):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                entries[kind][path.stem] = json.loads(path.read_text())
            except ValueError:
                continue
    return entries


def pack_results(cache: Path, dataset: str, model: str, command: str, folder: Path = SHIPPED_DIR) -> dict[str, Any]:
    """Pack a build's cache (made with `model` by `command`) into the shipped file and write its provenance."""
    from inference.knowledge.schema import SCHEMA_VERSION

    entries = _cached_entries(cache)
    items = [v for v in entries["items"].values() if isinstance(v, dict) and "item_id" in v]
    if not items:
        raise ShippedResultsError(f"{cache} holds no built item: run `reaseq knowledge build --dataset {dataset}` "
                                  "first")
    target = _write_pack(pack_path(dataset, folder), ({"kind": kind, "key": key, "value": entries[kind][key]}
                                                     for kind in KINDS for key in sorted(entries[kind])))
    return _write_provenance(
        provenance_path(dataset, folder), target, dataset, command, model, schema_version=SCHEMA_VERSION,
        entries={kind: len(entries[kind]) for kind in KINDS},
        # an item rebuilt after its evidence or prompts changed has an entry per version: count items once
        items=len({v["item_id"] for v in items}), items_with_record=len(_items_with_record(entries)),
        llm_seconds=round(sum(v.get("seconds", 0.0) for v in items), 1))


def load_shipped(dataset: str, folder: Path = SHIPPED_DIR) -> dict[str, dict[str, Any]]:
    """kind → key → value of the shipped pack of `dataset` (empty maps when none ships), checksum verified."""
    entries = no_entries()
    for row in _read_pack(pack_path(dataset, folder), provenance_path(dataset, folder), dataset):
        entries[row["kind"]][row["key"]] = row["value"]
    return entries


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
    items_built = len(_items_with_record(_cached_entries(book.parent)))
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


def _items_with_record(entries: dict[str, dict[str, Any]]) -> set[str]:
    """The items a build's cache entries hold a record for."""
    return {v["item_id"] for v in entries["items"].values() if isinstance(v, dict) and v.get("record")}


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
