"""`reaseq bench ranker-pass`: the Ranker's model pass per user, full pass vs the incremental state cache.

Serve's Ranker scores batches of user states (32 by default). This times `score_users` on a ranker
artifact as Serve loads it, over real users' histories cut to what the stream keeps (50 items): a full
pass (no cache), then the same users one event later through the cache (one token's pass each), then a
request with no new event. Medians of several repeats, µs per user, on this machine's threads.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.results import write_result

STATE_ITEMS = 50  # what the stream's user state keeps


def measure(artifact: str, users: int, batch: int, repeats: int) -> dict[str, Any]:
    import torch

    from bench.behavior import timed
    from inference.serve.scoring import LoadedRanker, score_users
    from ranking.artifacts import load_artifact, resolve_artifact
    from ranking.data import load_dataset
    from ranking.splits import build_sequences

    full = LoadedRanker.load(artifact, "cpu", state_cache_users=0)
    cached = LoadedRanker.load(artifact, "cpu", state_cache_users=users)
    data = build_sequences(load_dataset(load_artifact(resolve_artifact(artifact)).dataset["name"]))
    chosen = [u for u in range(len(data.sequences)) if len(data.sequences[u]) > STATE_ITEMS][:users]
    states = [[data.item_ids[i - 1] for i in data.sequences[u][-STATE_ITEMS - 1:-1]] for u in chosen]
    later = [[data.item_ids[i - 1] for i in data.sequences[u][-STATE_ITEMS:]] for u in chosen]
    request = lambda histories: [{"user_id": str(u), "recent_items": h}  # noqa: E731
                                 for u, h in zip(chosen, histories, strict=True)]
    batches = lambda histories: [request(histories)[k:k + batch] for k in range(0, len(chosen), batch)]  # noqa: E731
    results: dict[str, float] = {}
    with torch.no_grad():
        results["full_pass"] = statistics.median(timed(lambda: [score_users(full, b) for b in batches(later)],
                                                       repeats))

        steps = []
        for _ in range(repeats):  # refill the cache with the earlier states, then time the next event
            cached.cache.entries.clear()
            for b in batches(states):
                score_users(cached, b)
            started = time.perf_counter()
            for b in batches(later):
                score_users(cached, b)
            steps.append(time.perf_counter() - started)
        results["incremental"] = statistics.median(steps)
        results["unchanged"] = statistics.median(timed(lambda: [score_users(cached, b) for b in batches(later)],
                                                       repeats))
    per_user = {name: round(1e6 * seconds / len(chosen), 1) for name, seconds in results.items()}
    return {"artifact": full.version, "users": len(chosen), "batch": batch, "repeats": repeats,
            "history_items": STATE_ITEMS, "threads": torch.get_num_threads(), "us_per_user": per_user,
            "full_over_incremental": round(per_user["full_pass"] / per_user["incremental"], 2),
            "model": full.model.cfg.to_dict()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", default="ml-100k", help="ranker artifact (default: latest ml-100k)")
    parser.add_argument("--users", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="users per model pass (Serve's max_batch_size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")


def main_from_args(args: argparse.Namespace) -> int:
    result = measure(args.artifact, args.users, args.batch, args.repeats)
    path = write_result(result, "ranker-pass.json", args.out)
    timings = result["us_per_user"]
    print(f"| ranker {result['artifact']}, batches of {result['batch']}, {result['users']} users, "
          f"{result['threads']} threads | µs per user |\n|---|---:|\n"
          f"| full pass over {result['history_items']} items | {timings['full_pass']} |\n"
          f"| incremental (one new event, cached window) | {timings['incremental']} |\n"
          f"| no new event (cached) | {timings['unchanged']} |\n\n"
          f"full ÷ incremental: {result['full_over_incremental']}×; JSON: {path}")
    return 0
