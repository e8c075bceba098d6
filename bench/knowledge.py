"""`reaseq bench knowledge`: does item knowledge help the ranker, and what does online intent composition cost?

ablation — the ranker with and without knowledge embeddings, median of seeds, under the protocol
(leave-one-out, full ranking). A fixed random 10% of the catalogue is held out of training (removed
from every training sequence): those are the cold items, which the knowledge arm represents by their
knowledge vector alone. Metrics: HR@10 / NDCG@10 over all test users, over users whose test item is in
the long tail (bottom 50% of warm items by training popularity), and over users whose test item is cold.

intents — composing a user's intent vector from the intent index: per-user latency on one CPU thread,
with the network disabled (so no LLM or any remote call can happen).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.results import write_result as write_json
from ranking.evaluate import evaluate
from ranking.splits import SequenceData, cold_split
from ranking.train import TrainConfig, model_scorer, train_ranker

GROUP_KEYS = ("HR@10", "NDCG@10")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k"])
    parser.add_argument("--part", nargs="+", default=["ablation", "intents"], choices=["ablation", "intents"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--embeddings", default=None, help="knowledge-embeddings version (default LATEST)")
    parser.add_argument("--side-mode", default="gate", choices=["add", "gate"])
    parser.add_argument("--align-weight", type=float, default=0.1)
    parser.add_argument("--id-dropout", type=float, default=0.2,
                        help="share of items trained through their knowledge vector alone (cold-start path)")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--config", default=None, help="ranker YAML (default: ranking/configs/ranker-<dataset>.yaml)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget per training run")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="bench/results")


def user_groups(data: SequenceData, cold: np.ndarray) -> dict[str, list[int]]:
    """Test users by their target: all, long tail (bottom half of warm items by training count), cold."""
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for user in range(len(data.sequences)):
        np.add.at(counts, data.train(user), 1)
    warm = np.setdiff1d(np.arange(1, data.num_items + 1), cold)
    order = warm[np.argsort(counts[warm], kind="stable")]
    tail = set(order[: len(order) // 2].tolist())
    cold_set = set(cold.tolist())
    users = list(range(len(data.sequences)))
    return {"overall": users, "long_tail": [u for u in users if data.test_target(u) in tail],
            "cold": [u for u in users if data.test_target(u) in cold_set]}


def run_arm(data: SequenceData, cfg: TrainConfig, groups: dict[str, list[int]], side: torch.Tensor | None,
            cold: np.ndarray, progress: bool) -> dict[str, Any]:
    """Train one ranker and evaluate it on every user group."""
    result = train_ranker(data, cfg, side_embeddings=side, cold_items=cold.tolist(), progress=progress)
    scorer = model_scorer(result.model, result.device)
    metrics = {name: {k: v for k, v in evaluate(data, scorer, "test", users).items() if k in GROUP_KEYS}
               for name, users in groups.items() if users}
    return {"seed": cfg.seed, "best_epoch": result.best_epoch, "train_seconds": round(result.seconds, 1),
            "metrics": metrics}


def median_of(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups = runs[0]["metrics"]
    return {g: {k: statistics.median(r["metrics"][g][k] for r in runs) for k in groups[g]} for g in groups}


def ablation(data: SequenceData, cfg: TrainConfig, vectors: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Both arms over the seeds on the same cold split."""
    from inference.knowledge.embeddings import ranker_side_table

    train_data, cold = cold_split(data, args.cold_fraction)
    groups = user_groups(train_data, cold)
    side = torch.from_numpy(ranker_side_table(vectors))
    arms: dict[str, list[dict[str, Any]]] = {"ids": [], "ids+knowledge": []}
    for seed in args.seeds:
        base = replace(cfg, seed=seed)
        arms["ids"].append(run_arm(train_data, base, groups, None, cold, not args.quiet))
        knowledge_model = {**cfg.model, "side_dim": vectors.shape[1], "side_mode": args.side_mode,
                           "align_weight": args.align_weight, "id_dropout": args.id_dropout}
        arms["ids+knowledge"].append(run_arm(train_data, replace(base, model=knowledge_model), groups, side, cold,
                                             not args.quiet))
    medians = {arm: median_of(runs) for arm, runs in arms.items()}
    lift = {g: {k: (medians["ids+knowledge"][g][k] / medians["ids"][g][k] - 1) if medians["ids"][g][k] else None
                for k in GROUP_KEYS} for g in medians["ids"]}
    return {"cold_items": len(cold), "users": {g: len(u) for g, u in groups.items()},
            "side_mode": args.side_mode, "align_weight": args.align_weight, "id_dropout": args.id_dropout,
            "median": medians,
            "relative_lift": lift, "runs": arms}


def intents_cost(index, data: SequenceData, history: int = 50, repeats: int = 3) -> dict[str, Any]:
    """Per-user composition latency over every user's last `history` items, network disabled."""
    users = [[data.item_ids[i - 1] for i in seq[:-1][-history:]] for seq in data.sequences]
    rows = [np.fromiter((index.row_of.get(i, -1) for i in items), dtype=np.int64) for items in users]
    torch.set_num_threads(1)
    real_connect = socket.socket.connect

    def refuse(*_a, **_k):
        raise RuntimeError("network disabled during intent composition")

    socket.socket.connect = refuse  # any LLM or remote call would fail loudly
    try:
        timings: list[float] = []
        for _ in range(repeats):
            for row in rows:
                started = time.perf_counter()
                index.compose_rows(row)
                timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        for items in users:  # including the id → row lookup
            index.compose(items)
        with_lookup = (time.perf_counter() - started) / len(users)
    finally:
        socket.socket.connect = real_connect
    timings.sort()
    example = index.compose(users[0])
    return {"users": len(users), "history": history, "intents": len(index.phrases),
            "us_per_user_median": round(1e6 * statistics.median(timings), 1),
            "us_per_user_p99": round(1e6 * timings[int(0.99 * (len(timings) - 1))], 1),
            "us_per_user_with_id_lookup": round(1e6 * with_lookup, 1), "llm_calls": 0,
            "example": {"user": data.user_ids[0], "intents": example.intents,
                        "weights": [round(w, 3) for w in example.weights]}}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if "ablation" in result:
        a = result["ablation"]
        lines += [f"Ablation (median of seeds {result['seeds']}; {a['cold_items']} cold items held out; "
                  f"users {a['users']}; knowledge fused by {a['side_mode']}, alignment weight "
                  f"{a['align_weight']}, ID dropout {a.get('id_dropout', 0)})", "",
                  "| arm | HR@10 | NDCG@10 | tail HR@10 | tail NDCG@10 | cold HR@10 | cold NDCG@10 |",
                  "|---|---|---|---|---|---|---|"]
        for arm, m in a["median"].items():
            cells = [f"{m[g][k]:.4f}" for g in ("overall", "long_tail", "cold") for k in GROUP_KEYS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lift = a["relative_lift"]
        lines.append("| lift | " + " | ".join(f"{lift[g][k]:+.1%}" if lift[g][k] is not None else "n/a"
                                               for g in ("overall", "long_tail", "cold") for k in GROUP_KEYS) + " |")
    if "intents" in result:
        i = result["intents"]
        lines += ["", f"Intent composition: {i['us_per_user_median']} µs/user median, p99 {i['us_per_user_p99']} µs, "
                  f"{i['us_per_user_with_id_lookup']} µs with id lookup ({i['users']} users, last {i['history']} "
                  f"items, {i['intents']} intents, 1 thread, network disabled, LLM calls {i['llm_calls']})"]
    return "\n".join(lines)


def main_from_args(args: argparse.Namespace) -> int:
    from inference.knowledge.embeddings import load_item_embeddings
    from inference.knowledge.intents import IntentIndex
    from inference.knowledge.store import EMBEDDINGS, resolve_version
    from ranking.config import load_train_config
    from ranking.experiment import load_sequences, machine_description

    started = time.time()
    data = load_sequences(args.dataset)
    vectors, version = load_item_embeddings(args.dataset, data.item_ids, version=args.embeddings)
    meta = json.loads((resolve_version(EMBEDDINGS, args.dataset, version) / "meta.json").read_text())
    result: dict[str, Any] = {"dataset": args.dataset, "embeddings_version": version,
                              "embeddings_source": meta.get("source"),
                              "knowledge_version": meta.get("knowledge_version"),
                              "seeds": args.seeds, "machine": machine_description(),
                              "command": "reaseq " + " ".join(sys.argv[1:])}
    if "intents" in args.part:
        try:
            index = IntentIndex.load(resolve_version(EMBEDDINGS, args.dataset, version))
            result["intents"] = intents_cost(index, data)
        except FileNotFoundError as error:
            print(f"intents: skipped ({error})", file=sys.stderr)
    if "ablation" in args.part:
        cfg = load_train_config(args.config, args.dataset, epochs=args.epochs, max_seconds=args.max_seconds)
        result["config"] = cfg.to_dict()
        result["ablation"] = ablation(data, cfg, vectors, args)
    result["wall_seconds"] = round(time.time() - started, 1)
    part = f"ablation-{result['embeddings_source']}" if "ablation" in args.part else "intents"
    path = write_json(result, f"knowledge-{args.dataset}-{part}.json", args.out)
    print(markdown(result))
    print(f"\nmachine: {result['machine']}; wall {result['wall_seconds']:.0f} s; JSON: {path}")
    return 0
