"""Built knowledge shipped with the project, so the demo, the ablations and CI never rebuild it.

A knowledge build on 2 CPU cores takes hours (about 9 s an item with the 1.5B model), so the results it
cached (`<cache>/knowledge/<dataset>/`, one JSON per item, calibration and director answer) are packed
into one xz-compressed JSON-lines file, `inference/knowledge/data/<dataset>.results.jsonl.xz`, beside a
provenance file (`<dataset>.results.json`: the build command, model, prompt and schema versions, counts,
the pack's sha256). A build reads the pack as a second cache: every entry is keyed by the item, its
evidence, the prompt version, the model and the options, so it is used only where all of them match and
anything else is built afresh. `reaseq knowledge build --cached-only` writes the artifact from it with no
model; `reaseq knowledge pack` makes it from a build's cache.
"""

from __future__ import annotations

import json
import lzma
import time
from pathlib import Path
from typing import Any

from ranking.wheels import sha256_of

SHIPPED_DIR = Path(__file__).parent / "data"
CLAIMS = "claims"  # the sub-cache of director answers (build.director_claims)
KINDS = ("items", CLAIMS)


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
    folder.mkdir(parents=True, exist_ok=True)
    target = pack_path(dataset, folder)
    tmp = target.with_name(target.name + ".tmp")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as handle:
        for kind in KINDS:
            for key in sorted(entries[kind]):
                handle.write(json.dumps({"kind": kind, "key": key, "value": entries[kind][key]}, sort_keys=True) + "\n")
    tmp.replace(target)
    provenance = {
        "dataset": dataset, "file": target.name, "sha256": sha256_of(target), "bytes": target.stat().st_size,
        "command": command, "model": model, "schema_version": SCHEMA_VERSION,
        "entries": {kind: len(entries[kind]) for kind in KINDS},
        # an item rebuilt after its evidence or prompts changed has an entry per version: count items once
        "items": len({v["item_id"] for v in items}),
        "items_with_record": len({v["item_id"] for v in items if v.get("record")}),
        "llm_seconds": round(sum(v.get("seconds", 0.0) for v in items), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    provenance_path(dataset, folder).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def load_shipped(dataset: str, folder: Path = SHIPPED_DIR) -> dict[str, dict[str, Any]]:
    """kind → key → value of the shipped pack of `dataset` (empty maps when none ships), checksum verified."""
    target, meta_path = pack_path(dataset, folder), provenance_path(dataset, folder)
    if not target.is_file():
        return no_entries()
    fix = (f"restore it with `git checkout -- {folder}` or rebuild it: run the build command in {meta_path.name}, "
           f"then `reaseq knowledge pack --dataset {dataset}`")
    if not meta_path.is_file():
        raise ShippedResultsError(f"{target} ships without its provenance file {meta_path}; {fix}")
    meta = json.loads(meta_path.read_text())
    if sha256_of(target) != meta.get("sha256"):
        raise ShippedResultsError(f"{target} does not match the sha256 in {meta_path} (changed or truncated); {fix}")
    entries = no_entries()
    try:
        with lzma.open(target, "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                entries[row["kind"]][row["key"]] = row["value"]
    except (lzma.LZMAError, ValueError, KeyError) as error:
        raise ShippedResultsError(f"{target} is unreadable ({error}); {fix}") from error
    return entries
