"""The resumable batch job: evidence → reasoner ⇄ verifier for every item, cached, as a versioned artifact.

    reaseq knowledge build --dataset ml-100k [--limit N] [--base-url URL --model NAME]

Each item's result is cached under <cache>/knowledge/<dataset>/<key>.json, key = sha256(item, evidence, prompt
version, model, schema version, options, record format): a killed build resumes where it stopped, a changed
prompt or model rebuilds. Failed items are not cached, so a rerun tries them again. The model's answers packed
with the project (shipped.py) are replayed, so a clean checkout builds the catalogue with no model.
The artifact <artifacts>/knowledge/<dataset>/<version>/ holds records.jsonl, failures.jsonl, traces.jsonl,
evidence.jsonl, claims.jsonl (the model's director claims and the KG's verdicts, see claims.py) and
provenance.json (model, prompts, schema, dataset fingerprint, link audit, counts, wall time, tokens/s);
LATEST names the newest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from inference.knowledge.agents import RECORD_FORMAT, Agents, ItemResult, Prompts
from inference.knowledge.answers import BOOK_FILE, RecordedBackend
from inference.knowledge.backends import BackendError, LLMBackend
from inference.knowledge.claims import (
    ClaimVerdict,
    check_director_claims,
    claim_counts,
    collect_director_claims,
    with_director,
)
from inference.knowledge.evidence import Evidence, KnowledgeGraph, extract_all
from inference.knowledge.schema import SCHEMA_VERSION
from inference.knowledge.shipped import SHIPPED_DIR, load_all_answers
from inference.knowledge.store import (
    KNOWLEDGE,
    new_version_dir,
    publish_unless_unchanged,
    read_jsonl,
    resolve_version,
    write_json,
    write_jsonl,
)
from ranking.paths import cache_dir

log = logging.getLogger(__name__)


def load_records(dataset: str, version: str | None = None, root: Path | None = None) -> tuple[dict[str, dict], str]:
    """Item id → knowledge record of a knowledge artifact (default LATEST), and its version."""
    path = resolve_version(KNOWLEDGE, dataset, version, root)
    return {row["item_id"]: row for row in read_jsonl(path / "records.jsonl")}, path.name


@dataclass
class BuildConfig:
    """What to build and how."""

    dataset: str = "ml-100k"
    prompts: str = "v2"
    limit: int | None = None
    items: Sequence[str] | None = None
    order: str = "catalogue"  # or "popularity": most-rated items first, so a partial build covers most of the log
    max_rounds: int = 3
    llm_verifier: bool = True
    tagline: bool = False
    reask: bool = False
    cached_only: bool = False  # write an artifact from what the cache holds (no model calls): partial progress
    snapshot_every: int = 50  # items between progress snapshots (progress.json)
    director_claims: bool = True  # ask who directed each KG-directed film; the KG vetoes or supports the claim
    # put a supported name in the record ("directed by …"): off, because the KG's people are ids, so "supported"
    # means consistent across the director's films, not right (Qwen2.5-Coder-1.5B's consistent names are about
    # half wrong, e.g. one invented name for all three of a director's films); the KG's "same director as …"
    # evidence carries the relation either way
    director_names: bool = False
    shipped: bool = True  # replay the model's answers packed with the project (shipped.py) before asking it


class ResultCache:
    """One JSON file per (item, evidence, prompt version, model, schema version, options, record format)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(evidence: Evidence, prompt_version: str, model: str, options: str = "") -> str:
        payload = json.dumps([evidence.item_id, evidence.to_dict(), prompt_version, model, SCHEMA_VERSION, options,
                              RECORD_FORMAT], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def get(self, key: str) -> dict | None:
        path = self.folder / f"{key}.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except ValueError:  # a torn write: treat as missing
            return None

    def put(self, key: str, value: dict) -> None:
        tmp = self.folder / f".{key}.tmp"
        tmp.write_text(json.dumps(value, sort_keys=True))
        tmp.replace(self.folder / f"{key}.json")


CLAIMS = "claims"  # the sub-cache of director answers (director_claims)
# what an artifact's knowledge is (provenance.json adds only how and when it was built)
KNOWLEDGE_FILES = ("records.jsonl", "claims.jsonl", "failures.jsonl", "traces.jsonl", "evidence.jsonl")


@dataclass
class BuildSummary:
    version: str
    path: Path
    counts: dict[str, int]
    wall_seconds: float
    tokens_per_second: float
    llm_calls: int


def build_knowledge(backend: LLMBackend, cfg: BuildConfig, root: Path | None = None, cache: Path | None = None,
                    data_dir: str | None = None, progress: bool = True,
                    on_item: Callable[[ItemResult], None] | None = None,
                    shipped_dir: Path = SHIPPED_DIR) -> BuildSummary:
    """Run the agents over the catalogue (or a slice), resuming from the cache and replaying the model's answers
    (the book in the cache, the packs shipped in `shipped_dir`); write the artifact."""
    from ranking.data import load_dataset

    started = time.monotonic()
    data = load_dataset(cfg.dataset, data_dir)
    graph = KnowledgeGraph.from_frames(data.items, data.kg)
    evidence, audit = extract_all(data.items, data.kg, graph)
    item_ids = [str(i) for i in (cfg.items or data.items.item_id)]
    if cfg.order == "popularity":
        item_ids = by_popularity(item_ids, data.interactions.item_id.astype(str))
    if cfg.limit is not None:
        item_ids = item_ids[: cfg.limit]
    prompts = Prompts.load(cfg.prompts)
    options = json.dumps([cfg.max_rounds, cfg.llm_verifier, cfg.tagline, cfg.reask])
    store = ResultCache(cache or cache_dir() / "knowledge" / cfg.dataset)
    # every call goes through the answer book: recorded answers are replayed, the model's new ones recorded
    model = RecordedBackend(None if cfg.cached_only else backend, backend.model, store.folder / BOOK_FILE,
                            load_all_answers(shipped_dir) if cfg.shipped else None)
    agents = Agents(model, prompts, max_rounds=cfg.max_rounds, llm_verifier=cfg.llm_verifier, reask=cfg.reask)
    prior_key = hashlib.sha256(json.dumps(["priors", prompts.version, backend.model]).encode()).hexdigest()[:24]
    priors = store.get(prior_key)
    if priors is None:
        try:
            priors = agents.calibrate()
            store.put(prior_key, priors)
        except BackendError:
            if not cfg.cached_only:
                raise
            priors = {}
    agents.priors = priors
    results: list[dict[str, Any]] = []
    cached = 0
    bar = tqdm(item_ids, desc=f"knowledge {cfg.dataset}", unit="item", disable=not progress, dynamic_ncols=True)
    for item_id in bar:
        key = ResultCache.key(evidence[item_id], prompts.version, backend.model, options)
        hit = store.get(key)
        if hit is not None:
            cached += 1
            results.append(hit)
        else:
            result = agents.run(evidence[item_id], with_tagline=cfg.tagline)
            if cfg.cached_only and result.record is None:
                continue  # not all of its answers are recorded
            row = result.to_dict()
            if result.record is not None:
                store.put(key, row)
            results.append(row)
            if on_item:
                on_item(result)
        done = [r for r in results if r["record"]]
        bar.set_postfix(built=len(done), failed=len(results) - len(done), cached=cached)
    bar.close()
    claims: dict[str, Any] = {}
    if cfg.director_claims and audit.passed:
        claims = director_claims(model, graph, [r["item_id"] for r in results if r["record"]],
                                 ResultCache(store.folder / CLAIMS), cfg.cached_only, progress)
    wall = time.monotonic() - started
    answers = {"replayed": model.replayed, "recorded": model.recorded}
    return _write_artifact(cfg, data.fingerprint, audit.to_dict(), prompts, backend, evidence, results, cached, wall,
                           root, claims, answers)


def by_popularity(item_ids: list[str], rated: Iterable[str]) -> list[str]:
    """The items most-rated first; ties and unrated items keep their catalogue order."""
    counts = Counter(rated)
    position = {item: n for n, item in enumerate(item_ids)}
    return sorted(item_ids, key=lambda item: (-counts[item], position[item]))


def director_claims(backend: LLMBackend, graph: KnowledgeGraph, item_ids: list[str], store: ResultCache,
                    cached_only: bool, progress: bool) -> dict[str, Any]:
    """The model's director claims for the built items, judged by the KG (claims.py): verdicts, answers, counts."""
    directed = [i for i in item_ids if graph.lookup(i, "director")]
    bar = tqdm(total=len(directed), desc="director claims", unit="film", disable=not progress, dynamic_ncols=True)
    names, answers, stats = collect_director_claims(backend, graph, directed, store.get, store.put, cached_only,
                                                    on_answer=lambda: bar.update())
    bar.close()
    verdicts = check_director_claims(names, graph)
    return {"verdicts": verdicts, "answers": answers, "counts": claim_counts(verdicts, stats)}


def model_rejections(result: dict[str, Any]) -> list[dict[str, str]]:
    """Rejections of what the model actually said: a field where it named no option (uniform ranking)
    has its default order vetoed too, which is not the model's mistake and is not counted here."""
    silent = {name for name in ("audience", "moods", "occasions")
              if any(line.startswith(f"reasoner: {name}: no option") for line in result["trace"])}
    return [r for r in result["rejections"] if r["field"] not in silent]


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and cost of a build's per-item results (cached ones included)."""
    built = [r for r in results if r["record"]]
    tokens = sum(r["completion_tokens"] + r["prompt_tokens"] for r in results)
    completion = sum(r["completion_tokens"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    repaired = [r for r in built if model_rejections(r) or any("JSON repaired" in line for line in r["trace"])]
    return {"items": len(results), "built": len(built), "verified": len(built) - len(repaired),
            "repaired": len(repaired), "failed": len(results) - len(built),
            "field_failures": sum(len(r["failures"]) for r in built),
            "rejections": sum(len(model_rejections(r)) for r in results),
            "vetoes_of_non_answers": sum(len(r["rejections"]) - len(model_rejections(r)) for r in results),
            "llm_calls": sum(r["llm_calls"] for r in results), "prompt_tokens": tokens - completion,
            "completion_tokens": completion, "llm_seconds": round(seconds, 1),
            "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
            "completion_tokens_per_second": round(completion / seconds, 1) if seconds else 0.0}


def model_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the model got wrong: per field, the rule verdict on its unconstrained top pick, how often no
    option appeared among its top tokens, and which options it picked most."""
    report: dict[str, Any] = {}
    for name in ("audience", "moods", "occasions"):
        verdicts: dict[str, int] = {}
        picks: dict[str, int] = {}
        marker = f"reasoner: {name}: no option"
        no_token = 0
        for r in results:
            if any(line.startswith(marker) for line in r["trace"]):
                no_token += 1  # the model named none of the options: no pick to judge
                continue
            status = (r.get("top_status") or {}).get(name)
            if status:
                verdicts[status] = verdicts.get(status, 0) + 1
            ranking = (r.get("choices") or {}).get(name)
            if ranking:
                picks[ranking[0][0]] = picks.get(ranking[0][0], 0) + 1
        report[name] = {"top_pick_verdicts": verdicts, "no_option_token": no_token,
                        "top_picks": dict(sorted(picks.items(), key=lambda kv: -kv[1])[:6])}
    return report


def _write_artifact(cfg: BuildConfig, fingerprint: str, audit: dict, prompts: Prompts, backend: LLMBackend,
                    evidence: dict[str, Evidence], results: list[dict[str, Any]], cached: int, wall: float,
                    root: Path | None, claims: dict[str, Any], answers: dict[str, int]) -> BuildSummary:
    counts = summarise(results)
    verdicts: dict[str, ClaimVerdict] = claims.get("verdicts", {})
    tag = hashlib.sha256(json.dumps([prompts.version, backend.model, SCHEMA_VERSION, fingerprint]).encode()
                         ).hexdigest()[:8]
    path = new_version_dir(KNOWLEDGE, cfg.dataset, tag, root)
    write_jsonl(path / "records.jsonl", [with_director(r["record"], verdicts.get(r["item_id"])) if cfg.director_names
                                         else r["record"] for r in results if r["record"]])
    write_jsonl(path / "claims.jsonl", [{**v.to_dict(), "answer": claims["answers"][item]}
                                        for item, v in verdicts.items()])
    write_jsonl(path / "failures.jsonl", [f for r in results for f in r["failures"]])
    write_jsonl(path / "traces.jsonl", [{"item_id": r["item_id"], "verified": r["verified"], "repaired": r["repaired"],
                                         "trace": r["trace"], "rejections": r["rejections"], "choices": r["choices"],
                                         "top_status": r.get("top_status", {})}
                                        for r in results])
    write_jsonl(path / "evidence.jsonl", [evidence[r["item_id"]].to_dict() for r in results])
    write_json(path / "provenance.json", {
        "dataset": cfg.dataset, "dataset_fingerprint": fingerprint, "schema_version": SCHEMA_VERSION,
        "prompt_version": prompts.version, "model": backend.model, "backend": type(backend).__name__,
        "kg_link_audit": audit, "config": {k: v for k, v in vars(cfg).items() if k != "items"},
        "counts": counts, "director_claims": claims.get("counts"), "cached_items": cached, "model_answers": answers,
        "wall_seconds": round(wall, 1),
        "model_report": model_report(results),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    version = publish_unless_unchanged(path, KNOWLEDGE_FILES)
    return BuildSummary(version, path.parent / version, counts, wall, counts["tokens_per_second"], counts["llm_calls"])


def print_examples(path: Path, count: int = 3) -> None:
    """Print `count` records with their evidence and trace: the first, a repaired one, one with a tagline, then
    items spread evenly over the catalogue."""
    records = {r["item_id"]: r for r in read_jsonl(path / "records.jsonl")}
    traces = {t["item_id"]: t for t in read_jsonl(path / "traces.jsonl")}
    evidence = {e["item_id"]: e for e in read_jsonl(path / "evidence.jsonl")}
    picks: list[str] = []
    for wanted in (lambda t: True, lambda t: t["repaired"], lambda t: records.get(t["item_id"], {}).get("tagline")):
        for item_id, trace in traces.items():
            if item_id in records and item_id not in picks and wanted(trace):
                picks.append(item_id)
                break
    built = [item_id for item_id in traces if item_id in records]
    spread = built[:: max(1, len(built) // max(1, count))]
    picks = list(dict.fromkeys(picks + spread + built))
    for item_id in picks[:count]:
        ev = evidence[item_id]
        print(f"\n== item {item_id}: {ev['title']} ({ev['year']})")
        for fact in ev["facts"]:
            note = "" if fact["trusted"] else "  (untrusted: KG links fail the audit)"
            print(f"   [{fact['id']}] {fact['text']}{note}")
        print("   record: " + json.dumps({k: v for k, v in records[item_id].items() if v}, ensure_ascii=False))
        for line in traces[item_id]["trace"][1:]:
            print(f"   | {line}")
