"""`reaseq bench quality`: ranker vs popularity under the protocol, median of seeds, beside published anchors."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR
from bench.results import write_result as write_json
from ranking.experiment import (
    dataset_record,
    evaluate_popularity,
    machine_description,
    train_and_save,
)
from ranking.splits import SequenceData
from ranking.train import TrainConfig

COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "HR@200", "NDCG@200", "MRR")

# Published ML-1M numbers (HR@10, NDCG@10) under the same protocol; see ARCHITECTURE.md.
ANCHORS_ML1M = {
    "SASRec (generative-recommenders)": (0.2853, 0.1603),
    "HSTU-large (generative-recommenders)": (0.3294, 0.1893),
    "SASRec full CE (Klenitskiy & Vasilev 2023)": (0.3152, 0.1821),
    "FuXi-α": (0.3164, 0.1813),
}


def median_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric median over runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_quality(data: SequenceData, cfg: TrainConfig, seeds: list[int], progress: bool = True,
                extras: dict | None = None, provenance: dict | None = None,
                knowledge: dict | None = None) -> dict[str, Any]:
    """Popularity once, the ranker once per seed; medians and every run, ready for JSON.

    `extras`/`provenance` pass through to train_and_save (a ranker reading inferred behaviours), and so do
    `knowledge`'s train_and_save arguments (inference.knowledge.embeddings.knowledge_training_inputs)."""
    knowledge = dict(knowledge or {})
    provenance = {**(provenance or {}), **knowledge.pop("provenance", {})} or None
    started = time.time()
    popularity = evaluate_popularity(data, "test")
    runs = []
    for seed in seeds:
        run = train_and_save(data, replace(cfg, seed=seed), progress=progress, extras=extras, provenance=provenance,
                             **knowledge)
        runs.append({"seed": seed, "artifact": str(run.artifact.path), "test": run.test,
                     "best_epoch": run.artifact.metrics["best_epoch"],
                     "train_seconds": run.artifact.metrics["train_seconds"]})
    return {
        "dataset": dataset_record(data),
        "machine": machine_description(),
        "config": cfg.to_dict(),
        "seeds": seeds,
        "popularity": popularity,
        "ranker_runs": runs,
        "ranker_median": median_metrics([r["test"] for r in runs]),
        "provenance": provenance,
        "wall_seconds": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The results table, with the published ML-1M anchors under it for scale."""
    name = result["dataset"]["name"]
    seeds = len(result["seeds"])
    provenance = result.get("provenance") or {}
    lines = [f"| model ({name}, test, full ranking) | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    rows = [("Popularity", result["popularity"]),
            (f"SASRec-CE{' + knowledge' if provenance.get('embeddings_version') else ''}"
             f"{' + inferred behaviours' if provenance.get('behavior_version') else ''}"
             f" (ours, median of {seeds} seed{'s' * (seeds > 1)})", result["ranker_median"])]
    for label, metrics in rows:
        lines.append(f"| {label} | " + " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS) + " |")
    for label, (hr, ndcg) in ANCHORS_ML1M.items():
        lines.append(f"| *{label}, published, ML-1M* | {hr:.4f} | {ndcg:.4f} |" + " – |" * (len(COLUMNS) - 2))
    return "\n".join(lines)


def write_result(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """bench/results/quality-<dataset>.json, with commit, command and machine."""
    return write_json(result, f"quality-{result['dataset']['name']}.json", out_dir)
