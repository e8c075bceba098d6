"""`reaseq bench llama`: the knowledge build's cost per item with each llama-cpp build, side by side.

The same items go through the same agents (evidence → reasoner → verifier) with the portable llama-cpp and
with the AVX-512 one of `make llama-avx512`, each served fresh (no prompt cache carried over), the builds
alternating round by round. Reported per build: seconds per item and prompt tokens per second (medians of the
rounds), the ratio to the portable build, and how many items got the same record from both (a faster kernel
must not change what the build writes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.results import write_result

JUDGED_FIELDS = ("audience", "moods", "occasions")


def spread(item_ids: list[str], count: int) -> list[str]:
    """`count` items spread evenly over the catalogue (first and last included)."""
    if count >= len(item_ids):
        return list(item_ids)
    step = (len(item_ids) - 1) / max(1, count - 1)
    return [item_ids[round(n * step)] for n in range(count)]


def judged(record: dict[str, Any] | None) -> tuple | None:
    """What the model decided for a record (the fields the build asks it for)."""
    return None if record is None else tuple(tuple(record[name]) for name in JUDGED_FIELDS)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per build: medians over rounds; the ratio of each build's seconds per item to the first build's; how
    many items every build judged the same way (in the last round)."""
    builds = list(runs)
    table: dict[str, Any] = {}
    for build in builds:
        rounds = runs[build]
        table[build] = {"seconds_per_item": round(statistics.median(r["seconds_per_item"] for r in rounds), 3),
                        "prompt_tokens_per_second": round(statistics.median(r["prompt_tokens_per_second"]
                                                                             for r in rounds), 1),
                        "rounds": len(rounds)}
    base = builds[0]
    for build in builds:
        pairs = zip(runs[build], runs[base], strict=True)
        per_round = [b["seconds_per_item"] / r["seconds_per_item"] for r, b in pairs]
        table[build]["speedup_vs_" + base] = round(statistics.median(per_round), 2)
    last = {build: runs[build][-1]["decisions"] for build in builds}
    items = list(last[base])
    same = sum(1 for item in items if len({repr(last[b].get(item)) for b in builds}) == 1)
    return {"builds": table, "items": len(items), "same_records": same}


def run_build(build: str, gguf, threads: int, evidence: dict, item_ids: list[str]) -> dict[str, Any]:
    """Serve the model with one llama-cpp build and run the agents over the items; cost and decisions."""
    from inference.knowledge.agents import Agents, Prompts
    from inference.knowledge.backends import OpenAIChatBackend
    from inference.knowledge.llama_server import LlamaServer, ServerConfig

    with LlamaServer(config=ServerConfig(n_threads=threads, llama=build), model=gguf) as server:
        backend = OpenAIChatBackend(server.base_url, server.model, timeout_s=300)
        agents = Agents(backend, Prompts.load("v2"))
        agents.priors = agents.calibrate()
        started = time.monotonic()
        results = [agents.run(evidence[item], with_tagline=False) for item in item_ids]
        wall = time.monotonic() - started
    prompt_tokens = sum(r.prompt_tokens for r in results)
    model_seconds = sum(r.seconds for r in results)
    return {"build": build, "seconds_per_item": round(wall / len(item_ids), 3),
            "prompt_tokens_per_second": round(prompt_tokens / model_seconds, 1) if model_seconds else 0.0,
            "prompt_tokens": prompt_tokens, "llm_calls": sum(r.llm_calls for r in results),
            "decisions": {r.item_id: judged(r.record) for r in results}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from inference.knowledge.llama_server import DEFAULT_MODEL, LLAMA_BUILDS, MODELS

    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--llm", default=DEFAULT_MODEL, choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--items", type=int, default=12, help="items per round, spread over the catalogue")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the builds alternate within each")
    parser.add_argument("--builds", nargs="+", default=list(LLAMA_BUILDS), choices=LLAMA_BUILDS,
                        help="the first is the baseline of the ratios")
    parser.add_argument("--out", default="bench/results")


def main_from_args(args: argparse.Namespace) -> int:
    from inference.knowledge.evidence import KnowledgeGraph, extract_all
    from inference.knowledge.llama_server import MODELS, LlamaBuildError, llama_site
    from ranking.data import load_dataset

    try:
        for build in args.builds:
            llama_site(build)
    except LlamaBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    data = load_dataset(args.dataset)
    graph = KnowledgeGraph.from_frames(data.items, data.kg)
    evidence, _ = extract_all(data.items, data.kg, graph)
    item_ids = spread([str(i) for i in data.items.item_id], args.items)
    runs: dict[str, list[dict[str, Any]]] = {build: [] for build in args.builds}
    for round_number in range(1, args.rounds + 1):
        order = args.builds if round_number % 2 else list(reversed(args.builds))
        for build in order:
            run = run_build(build, MODELS[args.llm], args.threads, evidence, item_ids)
            runs[build].append(run)
            print(f"round {round_number}, {build}: {run['seconds_per_item']:.2f} s/item, "
                  f"{run['prompt_tokens_per_second']:.0f} prompt tokens/s", flush=True)
    summary = summarise(runs)
    result = {"dataset": args.dataset, "model": MODELS[args.llm].name, "threads": args.threads,
              "item_ids": item_ids, **summary,
              "runs": {b: [{k: v for k, v in r.items() if k != "decisions"} for r in rs] for b, rs in runs.items()}}
    path = write_result(result, f"llama-{args.dataset}.json", args.out)
    print(f"\n| llama-cpp build | s/item | prompt tok/s | vs {args.builds[0]} |\n|---|---:|---:|---:|")
    for build, row in summary["builds"].items():
        print(f"| {build} | {row['seconds_per_item']:.2f} | {row['prompt_tokens_per_second']:.0f} | "
              f"{row['speedup_vs_' + args.builds[0]]:.2f}x |")
    print(f"same records from every build: {summary['same_records']}/{summary['items']} items; JSON: {path}")
    return 0
