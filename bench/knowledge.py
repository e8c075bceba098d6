"""`reaseq bench knowledge`: does item knowledge help the ranker, and what does online intent composition cost?

ablation — the four arms of the ReaSeq ablation on one backbone, through `reaseq bench compare`: IDs only;
+ knowledge (the item knowledge vectors, gate fusion, side path trained to stand alone); + inferred
behaviours; + both (ReaSeq). The same seeds and a fixed epoch budget for every arm (never wall-clock),
medians, and a paired bootstrap 95% CI of each arm's NDCG@10 difference to IDs only (users resampled),
over all users, sparse users, tail items and cold items: a fixed random share of the catalogue
(`--cold-fraction`) removed from every training sequence, which the knowledge arms see through their
knowledge vectors alone. The result states each goal and whether it was met.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.compare import Arm, markdown_table, run_comparison
from bench.results import save_figure
from bench.results import write_result as write_json
from ranking.splits import SequenceData

ARM_CONFIGS = {"ids": "ranking/configs/ranker-{dataset}.yaml",
               "knowledge": "bench/configs/ranker-{dataset}-knowledge-cold.yaml",
               "behaviors": "bench/configs/ranker-{dataset}-behaviors.yaml",
               "reaseq": "bench/configs/ranker-{dataset}-reaseq.yaml"}
GOALS = {"reaseq": 5.0, "knowledge": 2.0, "behaviors": 2.0}  # ΔNDCG@10 % over IDs only, all users, CI above 0


def default_arms(dataset: str) -> list[Arm]:
    """The ablation's arms for a dataset, IDs only first (the baseline every difference is taken to); the paths
    are the project's, relative to its root, where every bench command runs."""
    return [Arm(name, pattern.format(dataset=dataset)) for name, pattern in ARM_CONFIGS.items()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--part", nargs="+", default=["ablation", "intents"], choices=["ablation", "intents"])
    parser.add_argument("--sequences", default=None, help="train on an exported sequences file "
                        "(`reaseq data export`) instead of loading --dataset (e.g. on a GPU machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help="override every arm's train.epochs (a fixed "
                        "budget; early stopping on validation inside it)")
    parser.add_argument("--behavior-epochs", type=int, default=None, help="override the behaviour model's "
                        "train.epochs (a fixed budget for the behaviours and ReaSeq arms' model)")
    parser.add_argument("--cold-fraction", type=float, default=0.1, help="share of items held out of training "
                        "(the cold slice)")
    parser.add_argument("--arm", type=Arm.parse, action="append", default=None,
                        help="NAME=CONFIG.yaml, replacing the default arms (ids, knowledge, behaviors, reaseq from "
                             "ranking/configs and bench/configs); the first is the baseline")
    parser.add_argument("--embeddings", default=None, help="knowledge-embeddings version for the intents part "
                        "(default LATEST; the arms name theirs in train.knowledge)")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--work-dir", default=None, help="where finished runs are kept (resumable; default "
                        "bench/results/compare/knowledge-<dataset>)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--name", default=None, help="ablation: result file name under --out (default "
                        "knowledge-<dataset>-ablation.json)")
    parser.add_argument("--plot", default=None, help="ablation: write the validation curves and the differences "
                        "with their CIs as a PNG here (e.g. docs/ablation-ml-100k.png)")


def goal_verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the ablation, the figure measured and whether it was met (arms absent are skipped)."""
    arms = summary["arms"]
    base = next(iter(arms))
    verdicts = []
    for arm, goal in GOALS.items():
        versus = arms.get(arm, {}).get("vs_" + base)
        if versus is None:
            continue
        overall = versus["all"]
        met = overall["relative_pct"] is not None and overall["relative_pct"] >= goal and overall["ci_low"] > 0
        verdicts.append({"goal": f"{arm}: ΔNDCG@10 ≥ +{goal:g}% over {base}, all users, CI above 0",
                         "measured": overall["relative_pct"], "ci_pct": overall["relative_ci_pct"], "met": met})
    cold_popularity = summary.get("popularity_ndcg10", {}).get("cold_items")
    if "knowledge" in arms and cold_popularity is not None:
        cold = arms["knowledge"]["slices"]["cold_items"]
        verdicts.append({"goal": "knowledge: NDCG@10 on cold-item targets above popularity's",
                         "measured": cold, "popularity": cold_popularity, "met": cold > cold_popularity})
    return verdicts


def _knowledge_versions(dataset: str) -> dict[str, Any]:
    """The LATEST knowledge-embeddings version the knowledge arms read, and what it was made from."""
    from inference.knowledge.store import EMBEDDINGS, resolve_version

    try:
        folder = resolve_version(EMBEDDINGS, dataset, None)
    except FileNotFoundError:
        return {}
    meta = json.loads((folder / "meta.json").read_text())
    return {"embeddings_version": folder.name, "embeddings_source": meta.get("source"),
            "knowledge_version": meta.get("knowledge_version")}


def ablation(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) the arms through `bench compare` and add the knowledge versions and goal verdicts."""
    arms = args.arm or default_arms(args.dataset)
    compare_args = argparse.Namespace(
        sequences=args.sequences, dataset=args.dataset, arm=arms, seeds=args.seeds, epochs=args.epochs,
        behavior_epochs=args.behavior_epochs,
        cold_fraction=args.cold_fraction, device=args.device, jobs=args.jobs,
        work_dir=args.work_dir or f"bench/results/compare/knowledge-{args.dataset}")
    summary, _ = run_comparison(compare_args)
    return {**summary, **_knowledge_versions(summary["dataset"]), "goals": goal_verdicts(summary)}


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


def _relative_pct(versus: dict[str, dict[str, float]], parts: list[str], key: str) -> np.ndarray:
    """A bootstrap figure per slice in % of the baseline; NaN where the baseline scores 0 (written, not drawn)."""
    return np.array([100 * versus[p][key] / versus[p]["base"] if versus[p]["base"] else np.nan for p in parts])


def zero_baseline_slices(result: dict[str, Any]) -> list[str]:
    """Slices on which the baseline arm scores 0 (cold items for IDs only): no relative change exists there,
    so they are drawn in absolute NDCG@10 beside popularity."""
    arms = result["arms"]
    base = next(iter(arms))
    others = [row["vs_" + base] for name, row in arms.items() if name != base]
    return [part for part in result["slice_users"] if others and all(not v[part]["base"] for v in others)]


def plot_ablation(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG: each arm's validation NDCG@10 per epoch (median over seeds; is the epoch budget enough?), each
    arm's ΔNDCG@10 to the baseline in % with its 95% CI per slice, the slices where the baseline scores 0
    (cold items) in absolute NDCG@10 against popularity, and, when every arm has its cold-offset sweep, what
    each arm's cold items cost its ranking over all users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    base = next(iter(arms))
    absolute = zero_baseline_slices(result)
    parts = [p for p in result["slice_users"] if p not in absolute]
    tradeoff = all(row.get("cold_offsets") for row in arms.values())
    fig, panels = plt.subplots(1, 2 + len(absolute) + tradeoff, figsize=(12 + 3 * len(absolute) + 4 * tradeoff, 4.5),
                               gridspec_kw={"width_ratios": [4, 4] + [2] * len(absolute) + [4] * tradeoff})
    curves, deltas = panels[0], panels[1]
    colours = {name: f"C{index}" for index, name in enumerate(arms)}
    for name, row in arms.items():
        runs = [c for c in row["valid_ndcg10_curves"].values() if c]
        if runs:
            length = max(len(c) for c in runs)
            median = [statistics.median(c[e] for c in runs if e < len(c)) for e in range(length)]
            curves.plot(range(1, length + 1), median, color=colours[name],
                        label=f"{name} (best epochs {row['best_epochs']})")
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation NDCG@10 (median of seeds)")
    curves.legend(fontsize=8)
    others = [name for name in arms if name != base]
    width = 0.8 / max(1, len(others))
    for index, name in enumerate(others):
        versus = arms[name]["vs_" + base]
        x = np.arange(len(parts)) + (index - (len(others) - 1) / 2) * width
        middle, low, high = (_relative_pct(versus, parts, key) for key in ("diff", "ci_low", "ci_high"))
        deltas.bar(x, middle, width, label=name, color=colours[name], yerr=[middle - low, high - middle], capsize=3)
    deltas.axhline(0, color="grey", linewidth=0.8)
    deltas.set_xlim(-0.6, len(parts) - 0.4)
    deltas.set_xticks(range(len(parts)), [f"{p.replace('_', ' ')}\n({result['slice_users'][p]} users)"
                                          for p in parts], fontsize=8)
    deltas.set_ylabel(f"ΔNDCG@10 vs {base}, % [95% CI]")
    deltas.legend(fontsize=8)
    # the baseline is 0 there: the difference's CI is the arm's own
    for cold, part in zip(panels[2:2 + len(absolute)], absolute, strict=True):
        for index, name in enumerate(others):
            versus = arms[name]["vs_" + base][part]
            spread = [[max(0.0, versus["other"] - versus["ci_low"])], [max(0.0, versus["ci_high"] - versus["other"])]]
            cold.bar(index, versus["other"], 0.7, color=colours[name], yerr=spread, capsize=3)
        popularity = result.get("popularity_ndcg10", {}).get(part)
        if popularity is not None:
            cold.axhline(popularity, color="black", linestyle="--", linewidth=1, label=f"popularity {popularity:.4f}")
            cold.legend(fontsize=8)
        cold.set_xlim(-0.8, len(others) - 0.2)
        cold.set_xticks(range(len(others)), others, fontsize=8, rotation=20, ha="right")
        cold.set_ylabel(f"NDCG@10 on {part.replace('_', ' ')} [95% CI]")
        cold.set_title(f"{part.replace('_', ' ')} ({result['slice_users'][part]} users; {base}: 0)", fontsize=9)
    if tradeoff:
        _plot_cold_tradeoff(panels[-1], arms, colours)
    seeds = len(result["seeds"])
    fig.suptitle(f"{result['dataset']}: {seeds} seed{'s' * (seeds != 1)}, cold items {result['cold_items']}",
                 fontsize=10)
    return save_figure(fig, path)


def _plot_cold_tradeoff(axis: Any, arms: dict[str, Any], colours: dict[str, str]) -> None:
    """Test NDCG@10 over all users against that on cold-item targets, each arm's line running through its
    cold-offset sweep, from the model as trained (circle) to its cold items never ranked; a star where the
    reach rule put the offset."""
    for name, row in arms.items():
        cold = [entry["test"]["cold_targets"] for entry in row["cold_offsets"]]
        every = [entry["test"]["all"] for entry in row["cold_offsets"]]
        axis.plot(cold, every, marker=".", color=colours[name], label=name)
        axis.plot(cold[:1], every[:1], marker="o", color=colours[name])
        if "cold_reach" in row:
            reach = row["cold_reach"]
            axis.plot([reach["cold_targets"]], [reach["NDCG@10"]], marker="*", markersize=12, color=colours[name])
    axis.set_xlabel("NDCG@10 on cold-item targets (test, median of seeds)")
    axis.set_ylabel("NDCG@10, all users (test, median of seeds)")
    axis.set_title("cold candidates offset: 0 (circle) down to never ranked;\n"
                   "star: most reach with validation ≥ the first arm", fontsize=9)
    axis.legend(fontsize=8)


def markdown_goals(verdicts: list[dict[str, Any]]) -> str:
    def figure(v: dict[str, Any]) -> str:
        if "popularity" in v:
            return f"{v['measured']:.4f} vs popularity {v['popularity']:.4f}"
        low, high = v["ci_pct"]
        return f"{v['measured']:+.1f}% [{low:+.1f}, {high:+.1f}]" if v["measured"] is not None else "n/a"

    return "\n".join(f"- {'met' if v['met'] else 'MISSED'}: {v['goal']} — {figure(v)}" for v in verdicts)


def main_from_args(args: argparse.Namespace) -> int:
    from ranking.experiment import load_sequences

    if "ablation" in args.part:
        started = time.time()
        result = ablation(args)
        result["wall_seconds"] = round(time.time() - started, 1)  # this invocation's only, when it resumed
        result["ranker_train_seconds_sum"] = round(sum(sum(row["train_seconds"]) for row in result["arms"].values()),
                                                   1)  # every run's, resumed or not
        path = write_json(result, args.name or f"knowledge-{result['dataset']}-ablation.json", args.out,
                          getattr(args, "command_line", None))
        print(markdown_table(result) + "\n\n" + markdown_goals(result["goals"]) + f"\nJSON: {path}")
        if args.plot:
            print(f"plot: {plot_ablation(result, args.plot)}")
    if "intents" in args.part:
        from inference.knowledge.intents import IntentIndex
        from inference.knowledge.store import EMBEDDINGS, resolve_version

        folder = resolve_version(EMBEDDINGS, args.dataset, args.embeddings)
        try:
            index = IntentIndex.load(folder)
        except FileNotFoundError as error:
            print(f"intents: skipped ({error})", file=sys.stderr)
            return 0
        cost = intents_cost(index, load_sequences(args.dataset))
        result = {"dataset": args.dataset, "embeddings_version": folder.name, "intents": cost}
        path = write_json(result, f"knowledge-{args.dataset}-intents.json", args.out)
        print(f"Intent composition: {cost['us_per_user_median']} µs/user median, p99 {cost['us_per_user_p99']} µs, "
              f"{cost['us_per_user_with_id_lookup']} µs with id lookup ({cost['users']} users, last "
              f"{cost['history']} items, {cost['intents']} intents, 1 thread, network disabled, LLM calls "
              f"{cost['llm_calls']})\nJSON: {path}")
    return 0


if __name__ == "__main__":  # `python -m bench.knowledge …`: the same, without the rest of the CLI (and its imports)
    import shlex

    _parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__)
    add_arguments(_parser)
    _args = _parser.parse_args()
    _args.command_line = "python -m bench.knowledge " + shlex.join(sys.argv[1:])
    raise SystemExit(main_from_args(_args))
