"""`reaseq knowledge …`: build item knowledge with the LLM agents, embed it, show records."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(knowledge: argparse.ArgumentParser) -> None:
    """Register the knowledge subcommands on `reaseq knowledge`."""
    actions = knowledge.add_subparsers(dest="knowledge_command", required=True, metavar="ACTION")
    embed = actions.add_parser("embed", help="encode each item's knowledge text (all-MiniLM-L6-v2) into a "
                               "versioned knowledge-embeddings artifact")
    embed.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    embed.add_argument("--data-dir", default=None)
    embed.add_argument("--knowledge", default="LATEST",
                       help="knowledge artifact version to add to the evidence text: LATEST (default, "
                            "falls back to evidence alone when none exists), a version, or 'none'")


def main_from_args(args: argparse.Namespace) -> int:
    if args.knowledge_command == "embed":
        return _embed(args)
    raise ValueError(f"unknown knowledge action {args.knowledge_command!r}")


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
