"""`reaseq knowledge …`: build item knowledge with the LLM agents, embed it, show records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.knowledge.backends import OpenAIChatBackend
    from inference.knowledge.build import BuildConfig, BuildSummary


def add_arguments(knowledge: argparse.ArgumentParser) -> None:
    """Register the knowledge subcommands on `reaseq knowledge`."""
    from inference.knowledge.llama_server import DEFAULT_MODEL, LLAMA_BUILDS, MODELS

    actions = knowledge.add_subparsers(dest="knowledge_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="run the knowledge agents over a catalogue (resumable, cached) "
                               "into a versioned knowledge artifact; starts a local llama.cpp server unless "
                               "--base-url names an OpenAI-compatible one; every model answer is recorded and replayed "
                               "(the answer book, and the answers packed with the project in "
                               "inference/knowledge/data/), so no request is asked twice")
    build.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    build.add_argument("--data-dir", default=None)
    build.add_argument("--limit", type=int, default=None, help="only the first N items")
    build.add_argument("--items", nargs="+", default=None, help="only these item ids")
    build.add_argument("--order", default="catalogue", choices=["catalogue", "popularity"],
                       help="popularity: most-rated items first, so an interrupted build already covers most "
                            "of the log (default: catalogue order)")
    build.add_argument("--base-url", default=None, help="OpenAI-compatible API, e.g. http://host:8000/v1 "
                       "(vllm serve, Ray Serve LLM, llama.cpp); default: start llama.cpp with SmolLM2-135M")
    build.add_argument("--model", default=None, help="model name at --base-url")
    build.add_argument("--backend", default="openai", choices=["openai", "vllm"],
                       help="vllm: the offline engine with --model (needs vllm installed)")
    build.add_argument("--llm", default=None, choices=sorted(MODELS),
                       help=f"local model served by llama.cpp (default {DEFAULT_MODEL}; smollm2-135m is fast "
                            "but knows little)")
    build.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    build.add_argument("--llama", default="portable", choices=LLAMA_BUILDS,
                       help="which llama-cpp serves the model: the portable one (default) or the AVX-512/VNNI build "
                            "of `make llama-avx512` (1.45x faster per item where the CPU has them: bench llama)")
    build.add_argument("--concurrency", type=int, default=1, help="requests in flight to the server")
    build.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    build.add_argument("--llm-verifier", action="store_true",
                       help="ask the model yes/no about claims the rules cannot decide")
    build.add_argument("--reask", action="store_true", help="re-ask the model with the verifier's reasons "
                       "(default: re-rank its first answer without rejected options)")
    build.add_argument("--tagline", action="store_true", help="also ask for a free-text tagline (schema-"
                       "constrained JSON; SmolLM2-135M mostly repeats the title or invents one)")
    build.add_argument("--cached-only", action="store_true", help="no model: write an artifact from the items "
                       "the cache holds or the recorded answers rebuild (progress of a running or interrupted "
                       "build; a catalogue from its shipped answers)")
    build.add_argument("--no-director-claims", action="store_true", help="skip asking who directed each film "
                       "the KG knows a director of (the KG vetoes or supports each answer; see claims.jsonl)")
    build.add_argument("--director-names", action="store_true", help="put the director names the KG supports into "
                       "the records (off: the KG's ids check consistency, not the name, so a name the model gives "
                       "all of a director's films alike is supported even when it is wrong)")
    build.add_argument("--no-shipped", action="store_true", help="ignore the answers packed with the project: "
                       "ask the model every request the local answer book does not hold")
    build.add_argument("--examples", type=int, default=3, help="records to print at the end")
    build.add_argument("--quiet", action="store_true")

    pack = actions.add_parser("pack", help="pack a build's answer book into inference/knowledge/data/ (xz, with "
                              "provenance and sha256), so checkouts build the catalogue with no model: the model's "
                              "answers only, since the MovieLens terms forbid shipping the titles the records carry")
    pack.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    pack.add_argument("--llm", default=DEFAULT_MODEL, choices=sorted(MODELS), help="the model the build used")
    pack.add_argument("--threads", type=int, default=2, help="the build's llama.cpp threads (for its command)")
    pack.add_argument("--llama", default="portable", choices=LLAMA_BUILDS,
                      help="the llama-cpp build that served it (for its command)")
    pack.add_argument("--order", default="catalogue", choices=["catalogue", "popularity"],
                      help="the build's item order (for its command)")
    pack.add_argument("--out", default=None, help="folder (default: inference/knowledge/data)")
    pack.add_argument("--data-dir", default=None, help="the dataset's folder, as for build (the pack is checked to "
                      "hold none of its titles)")

    embed = actions.add_parser("embed", help="encode each item's knowledge text (all-MiniLM-L6-v2) into a "
                               "versioned knowledge-embeddings artifact")
    embed.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    embed.add_argument("--data-dir", default=None)
    embed.add_argument("--knowledge", default="LATEST",
                       help="knowledge artifact version to add to the evidence text: LATEST (default, "
                            "falls back to evidence alone when none exists), a version, or 'none'")


    weights = actions.add_parser(
        "weights", help="put a local model's verified GGUF weights into a folder (the LLM's models volume: the "
        "Kubernetes Job in deploy/k8s/components/llm runs this), or with --check only verify them")
    weights.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    weights.add_argument("--dest", required=True, help="folder that receives <model name>.gguf")
    weights.add_argument("--check", action="store_true", help="download nothing: exit 1 unless the folder "
                         "already holds the published weights (size and sha256)")


def main_from_args(args: argparse.Namespace) -> int:
    if args.knowledge_command == "weights":
        return _weights(args)
    if args.knowledge_command == "embed":
        return _embed(args)
    if args.knowledge_command == "build":
        return _build(args)
    if args.knowledge_command == "pack":
        return _pack(args)
    raise ValueError(f"unknown knowledge action {args.knowledge_command!r}")


def _weights(args: argparse.Namespace) -> int:
    from inference.knowledge.llama_server import MODELS, fetch_model, weights_problem

    model = MODELS[args.model]
    target = Path(args.dest) / f"{model.name}.gguf"
    if args.check:
        problem = weights_problem(model, target)
        if problem:
            print(f"error: {problem}: the models volume is not filled yet (the reaseq-llm-weights Job fills it: "
                  f"`reaseq knowledge weights --model {args.model} --dest {args.dest}`)", file=sys.stderr)
            return 1
        print(f"{target}: {model.name}, {model.size:,} bytes, sha256 {model.sha256} (verified)")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetch_model(model, target=target)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{target}: {model.name}, {model.size:,} bytes, sha256 {model.sha256} (verified)")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from inference.knowledge.embeddings import build_item_embeddings

    records, version = None, None
    if args.knowledge != "none":
        from inference.knowledge.build import load_records

        try:
            records, version = load_records(args.dataset, None if args.knowledge == "LATEST" else args.knowledge)
        except FileNotFoundError as error:
            if args.knowledge != "LATEST":
                raise
            print(f"no knowledge artifact yet ({error}); embedding evidence alone", file=sys.stderr)
    embeddings_version = build_item_embeddings(args.dataset, records, version, args.data_dir)
    print(json.dumps({"embeddings_version": embeddings_version, "knowledge_version": version,
                      "items_with_knowledge": len(records or {})}))
    return 0


def build_command(dataset: str, llm: str, threads: int, llama: str = "portable", order: str = "catalogue") -> str:
    """The `reaseq knowledge build` command line a pack records as its provenance (defaults left out)."""
    command = f"reaseq knowledge build --dataset {dataset} --llm {llm} --threads {threads}"
    return command + (f" --llama {llama}" if llama != "portable" else "") + (
        f" --order {order}" if order != "catalogue" else "")


def _pack(args: argparse.Namespace) -> int:
    from inference.knowledge.answers import BOOK_FILE
    from inference.knowledge.llama_server import MODELS
    from inference.knowledge.shipped import (
        RECORDS_NOT_SHIPPED,
        SHIPPED_DIR,
        ShippedResultsError,
        pack_answers,
    )
    from ranking.data import load_dataset
    from ranking.paths import cache_dir

    command = build_command(args.dataset, args.llm, args.threads, args.llama, args.order)
    cache = cache_dir() / "knowledge" / args.dataset
    folder = Path(args.out) if args.out else SHIPPED_DIR
    model = MODELS[args.llm].name
    print(f"packing the model's answers only: {RECORDS_NOT_SHIPPED}", file=sys.stderr)
    try:
        titles = load_dataset(args.dataset, args.data_dir).items.title.astype(str)
        provenance = pack_answers(cache / BOOK_FILE, args.dataset, model, command, folder, titles)
        if provenance["withheld"]:
            print(f"withheld {provenance['withheld']} replies that repeat one of the dataset's titles; a build "
                  "from the pack asks the model those again", file=sys.stderr)
    except ShippedResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(provenance, indent=2))
    return 0


def _build_config(args: argparse.Namespace) -> BuildConfig:
    from inference.knowledge.build import BuildConfig

    return BuildConfig(dataset=args.dataset, limit=args.limit, items=args.items, order=args.order,
                       llm_verifier=args.llm_verifier,
                       tagline=args.tagline, reask=args.reask, cached_only=args.cached_only,
                       director_claims=not args.no_director_claims, director_names=args.director_names,
                       shipped=not args.no_shipped)


def _no_model_backend(args: argparse.Namespace) -> OpenAIChatBackend:
    """A backend that is never reached (a closed port, no retries): what --cached-only builds with."""
    from inference.knowledge.backends import OpenAIChatBackend
    from inference.knowledge.llama_server import DEFAULT_MODEL, MODELS

    return OpenAIChatBackend("http://127.0.0.1:9/v1", args.model or MODELS[args.llm or DEFAULT_MODEL].name,
                             max_retries=0)


def build_from_shipped(dataset: str, root: Path | None = None, cache: Path | None = None,
                       shipped_dir: Path | None = None) -> BuildSummary | None:
    """A knowledge artifact from the model's answers shipped with the project, with no model: exactly what
    `reaseq knowledge build --dataset DATASET --cached-only` writes. None when no answers ship for it."""
    from inference.knowledge.build import build_knowledge
    from inference.knowledge.shipped import SHIPPED_DIR, answers_path

    shipped_dir = shipped_dir or SHIPPED_DIR
    if not answers_path(dataset, shipped_dir).is_file():
        return None
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["build", "--dataset", dataset, "--cached-only"])
    return build_knowledge(_no_model_backend(args), _build_config(args), root=root, cache=cache, progress=False,
                           shipped_dir=shipped_dir)


def _build(args: argparse.Namespace) -> int:
    import contextlib

    from inference.knowledge.backends import OpenAIChatBackend, VLLMOfflineBackend
    from inference.knowledge.build import build_knowledge, print_examples
    from inference.knowledge.llama_server import DEFAULT_MODEL, MODELS, LlamaBuildError, LlamaServer, ServerConfig
    from inference.knowledge.shipped import ShippedResultsError
    from ranking.paths import cache_dir

    cfg = _build_config(args)
    gguf = MODELS[args.llm or DEFAULT_MODEL]
    with contextlib.ExitStack() as stack:
        if args.backend == "vllm":
            backend = VLLMOfflineBackend(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
        elif args.cached_only:
            backend = _no_model_backend(args)
        elif args.base_url:
            backend = OpenAIChatBackend(args.base_url, args.model or "default", timeout_s=args.timeout,
                                        max_concurrency=args.concurrency)
        else:
            log_path = cache_dir() / "knowledge" / "llama-server.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                server = stack.enter_context(LlamaServer(config=ServerConfig(n_threads=args.threads, llama=args.llama),
                                                         log_path=log_path, model=gguf))
            except LlamaBuildError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print(f"llama.cpp server {server.model} on {server.base_url} ({args.threads} thread(s), "
                  f"{args.llama} llama-cpp)", flush=True)
            backend = OpenAIChatBackend(server.base_url, server.model, timeout_s=args.timeout,
                                        max_concurrency=args.concurrency)
        try:
            summary = build_knowledge(backend, cfg, data_dir=args.data_dir, progress=not args.quiet)
        except ShippedResultsError as error:
            print(f"error: {error} (or build without them: --no-shipped)", file=sys.stderr)
            return 1
    provenance = json.loads((summary.path / "provenance.json").read_text())
    print(json.dumps({"version": summary.version, "path": str(summary.path), **summary.counts,
                      "wall_seconds": round(summary.wall_seconds, 1), "model_report": provenance["model_report"],
                      "director_claims": provenance["director_claims"]},
                     indent=2))
    print_examples(summary.path, args.examples)
    return 0
