"""`reaseq demo` (what `make demo` runs): the whole system on the embedded default, MovieLens-100K.

Data → knowledge (catalogue + Freebase KG facts as text vectors, KG relational vectors, grounded reasons;
the LLM's knowledge records: the latest knowledge artifact, else the records rebuilt from the model's answers
shipped with the project)
→ behaviour model → the knowledge-aware ranker reading the inferred behaviours, evaluated → the stream:
Kafka → PyFlink → Ray Serve (Ranker with its reasons, behaviour model for the nearline refresh) → Kafka,
with live progress.
Exits 1 when any replayed event ended with neither a score nor a dead letter.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HELP = ("the whole system on the embedded default (ML-100K): data, knowledge, behaviour model, the knowledge-aware "
        "ranker trained and evaluated (results table), then the streaming pipeline (Kafka → PyFlink → Ray Serve → "
        "Kafka) replaying the ratings with live progress and a few users' explained recommendations")
KNOWLEDGE_SIDE_MODE = "gate"  # the better fusion on both catalogues (bench/results/compare-*-rotary-vs-knowledge.json)


def add_arguments(demo: argparse.ArgumentParser, add_train_args) -> None:
    add_train_args(demo)
    demo.add_argument("--seeds", type=int, nargs="+", default=[1])
    demo.add_argument("--rate", type=float, default=500.0, help="replay rate of the streaming part (events/s)")
    demo.add_argument("--limit", type=int, default=None, help="replay only the first N events (default: all)")
    demo.add_argument("--mode", default="low-latency", choices=["low-latency", "transactional"])
    demo.add_argument("--no-stream", action="store_true", help="stop after training and evaluation")
    demo.add_argument("--no-knowledge", action="store_true",
                      help="a ranker of item IDs alone (no knowledge vectors, no reasons in the scores)")
    demo.add_argument("--no-behavior", action="store_true",
                      help="skip the behaviour model (the ranker then reads the log alone)")
    demo.add_argument("--no-stream-behavior", dest="stream_behavior", action="store_false",
                      help="stream without the nearline behaviour refresh (by default the behaviour model is served "
                           "beside the Ranker and the job refreshes users' inferred behaviours as events arrive)")
    demo.add_argument("--behavior-seconds", type=float, default=150.0,
                      help="time budget of the behaviour model's training (default 150 s)")


def run(args: argparse.Namespace, train_config) -> int:
    from bench.quality import markdown_table, run_quality, write_result
    from ranking.artifacts import load_artifact
    from ranking.data import load_dataset
    from ranking.experiment import load_ranker
    from ranking.splits import build_sequences

    started = time.time()
    steps = 3 + (not args.no_knowledge) + (not args.no_behavior) + (not args.no_stream)
    step = iter(range(1, steps + 1))
    print(f"[{next(step)}/{steps}] data: MovieLens-100K from the recbole 1.2.1 wheel (verified by sha256)")
    dataset = load_dataset("ml-100k")
    data = build_sequences(dataset)
    titles = dataset.title_of()
    print(f"      {len(dataset.interactions):,} interactions, {len(data.user_ids)} users, {data.num_items:,} items")
    cfg = train_config(args, "ml-100k")
    knowledge: dict[str, Any] = {}
    if not args.no_knowledge:
        knowledge = knowledge_step(data, titles, f"[{next(step)}/{steps}]")
        cfg = replace(cfg, knowledge=knowledge["provenance"]["embeddings_version"],
                      model={**cfg.model, "side_mode": KNOWLEDGE_SIDE_MODE})
    extras = provenance = behavior_path = None
    if not args.no_behavior:
        behavior_path, extras, provenance = behavior_step(args, data, titles, f"[{next(step)}/{steps}]")
        cfg = replace(cfg, model={**cfg.model, "extra_len": len(next(iter(extras["test"].values())))})
    label = "the SASRec-CE ranker" + (" with knowledge vectors" if knowledge else "") + \
        (" reading the inferred behaviours" if extras else "")
    print(f"[{next(step)}/{steps}] train + evaluate: popularity and {label} (seeds {args.seeds})")
    result = run_quality(data, cfg, args.seeds, progress=not args.quiet, extras=extras, provenance=provenance,
                         knowledge=knowledge)
    result["command"] = "reaseq demo"
    write_result(result, Path("bench/results/demo"))
    print(f"[{next(step)}/{steps}] results (leave-one-out, full ranking over all items minus the user's history)\n")
    print(markdown_table(result))
    artifact = load_artifact(Path(result["ranker_runs"][0]["artifact"]))
    print(f"\nranker artifact: {artifact.path}")
    print(sample_recommendations(artifact, load_ranker(artifact), data, titles, extras["test"] if extras else None))
    if not args.no_stream:
        from inference.serve.local import free_port
        from streaming.runner import PipelineOptions, report_incomplete, run_pipeline

        print(f"\n[{next(step)}/{steps}] streaming: replay the ratings at {args.rate:.0f} events/s through Kafka → "
              f"PyFlink → Ray Serve (ranker {artifact.version}"
              f"{', behaviour ' + behavior_path.name if behavior_path and args.stream_behavior else ''}) → Kafka, "
              f"{args.mode} mode")
        summary = run_pipeline(PipelineOptions(artifact=str(artifact.path), rate=args.rate, limit=args.limit,
                                               mode=args.mode, metrics_port=free_port(),
                                               behavior_artifact=str(behavior_path)
                                               if behavior_path and args.stream_behavior else None))
        if report_incomplete(summary):
            return 1
    print(f"\ndone in {time.time() - started:.0f} s on {result['machine']}")
    return 0


def knowledge_step(data, titles: dict[str, str], step: str) -> dict[str, Any]:
    """Embed every item's knowledge (LLM records when a knowledge artifact exists, else evidence alone), with
    the KG's relational vectors and reasons; return the ranker's training inputs."""
    from inference.knowledge.build import load_records
    from inference.knowledge.commands import build_from_shipped
    from inference.knowledge.embeddings import build_item_embeddings, knowledge_training_inputs

    try:
        records, knowledge_version = load_records(data.dataset, None)
    except FileNotFoundError:  # a clean checkout: the shipped answers replayed, no model run
        shipped = build_from_shipped(data.dataset)
        records, knowledge_version = load_records(data.dataset, shipped.version) if shipped else (None, None)
    source = (f"the LLM's knowledge records {knowledge_version} ({len(records):,} items) over the evidence"
              if records else "evidence alone (no knowledge artifact: `reaseq knowledge build` adds the LLM's)")
    print(f"{step} knowledge: catalogue + Freebase KG facts → text vectors (all-MiniLM-L6-v2), KG relational "
          f"vectors, grounded reasons; {source}")
    version = build_item_embeddings(data.dataset, records, knowledge_version)
    inputs = knowledge_training_inputs(data.dataset, data.item_ids, version)
    print(f"      knowledge-embeddings {version}: {inputs['side_embeddings'].shape[0] - 1:,} items × "
          f"{inputs['side_embeddings'].shape[1]} dims")
    return inputs


def behavior_step(args: argparse.Namespace, data, titles: dict[str, str], step: str):
    """Train the behaviour model, show what it infers for a user, and infer for everyone (ranker input)."""
    from inference.behavior.diffusion import SamplingConfig
    from inference.behavior.train import inferred_extras, load_behavior_config, save_behavior, train_behavior
    from ranking.experiment import dataset_record

    cfg = load_behavior_config(None, "ml-100k", device=args.device, max_seconds=args.behavior_seconds)
    print(f"{step} behaviour model: masked diffusion over item tokens (K={cfg.sampling.get('slots')}, "
          f"S={cfg.sampling.get('steps')}), trained on each user's training items only")
    result = train_behavior(data, cfg, progress=not args.quiet)
    artifact = save_behavior(result, cfg, dataset_record(data))
    extras = inferred_extras(result.model, data, cfg.holdout, SamplingConfig(**cfg.sampling), result.device)
    name = lambda i: titles[data.item_ids[i - 1]]  # noqa: E731
    user = 0
    print(f"      saved {artifact.path} (held-out recall@{result.model_config.slots} {result.valid_recall:.3f})")
    print(f"      user {data.user_ids[user]} recently: {'; '.join(name(i) for i in data.sequences[user][-4:-1])}")
    print(f"      inferred beyond the log: {'; '.join(name(i) for i in extras['test'][user][:5])}")
    return artifact.path, extras, {"behavior_version": artifact.version}


def sample_recommendations(artifact, model, data, titles: dict[str, str], inferred: dict | None = None,
                           users: int = 3, k: int = 5) -> str:
    """A few test users' recommendations through the Serve scoring code, with their grounded reasons."""
    from inference.serve.scoring import LoadedRanker, score_users

    ranker = LoadedRanker.of(artifact, model, data.item_ids)
    histories = [data.sequences[user][:-1] for user in range(users)]
    name = lambda i: titles[data.item_ids[i - 1]]  # noqa: E731
    ids = lambda items: [data.item_ids[i - 1] for i in items]  # noqa: E731
    results = score_users(ranker, [{"user_id": data.user_ids[u], "recent_items": ids(h[-model.cfg.max_len:]),
                                    "inferred_items": ids(inferred[u]) if inferred else []}
                                   for u, h in enumerate(histories)], top_k=k)
    lines = []
    for user, (history, result) in enumerate(zip(histories, results, strict=True)):
        lines.append(f"user {data.user_ids[user]}: last watched {', '.join(name(i) for i in history[-3:])}")
        lines.append(f"   held-out next: {name(data.test_target(user))}")
        reasons = result.get("reasons") or [None] * len(result["items"])
        for item, reason in zip(result["items"], reasons, strict=True):
            lines.append(f"   recommended: {titles[item]}{f'  — {reason}' if reason else ''}")
    return "\n".join(lines)

