"""`reaseq bench claims`: what the knowledge model gets right and wrong, checked against the Freebase KG.

The KG's people are opaque ids, so a model's free-text answer is checked relationally:
- sequels: for every KG sequel pair (A → B) inside the catalogue, "What is the sequel to A?" is right when
  the answer names B's title;
- directors: "Who directed X?" for films of pairs the KG says share a director and of pairs it says do not;
  the model's claim "X and Y have the same director" (same normalised name) is checked against the KG:
  agreement on same-director pairs, and vetoes — same name claimed where the KG says the directors differ.
Greedy decoding through the OpenAI-compatible server the knowledge build uses (llama.cpp, local GGUF).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from bench.results import write_result
from inference.knowledge.claims import DIRECTOR_QUESTION, ask, names_title, normalise_name

Pairs = list[tuple[str, str]]


def sample_pairs(graph, item_ids: list[str], count: int, seed: int) -> tuple[Pairs, Pairs]:
    """`count` pairs sharing a KG director and `count` pairs of directed films sharing none."""
    rng = random.Random(seed)
    directed = [i for i in item_ids if graph.lookup(i, "director")]
    same = sorted({tuple(sorted((i, o))) for i in directed for o in graph.shared(i, "director")[:3]})
    rng.shuffle(same)
    different: set[tuple[str, str]] = set()
    while len(different) < count and len(directed) > 1:
        a, b = rng.sample(directed, 2)
        if not graph.lookup(a, "director") & graph.lookup(b, "director"):
            different.add(tuple(sorted((a, b))))
    return same[:count], sorted(different)


def run_claims(backend, graph, item_ids: list[str], pairs: int, seed: int, progress: bool = True) -> dict[str, Any]:
    def reply(question: str) -> str:
        return ask(backend, question, max_tokens=24).text.strip()

    started = time.monotonic()
    sequels = []
    for item in item_ids:
        for sequel in sorted(graph.lookup(item, "sequel")):
            if not sequel.startswith("?"):
                answer = reply(f"What is the title of the sequel to the film {graph.titles[item]}? "
                               "Answer with the title only.")
                sequels.append({"film": graph.titles[item], "kg_sequel": graph.titles[sequel], "answer": answer,
                                "right": names_title(answer, graph.titles[sequel])})
    if progress:
        print(f"sequels: {sum(s['right'] for s in sequels)}/{len(sequels)} right", flush=True)
    same, different = sample_pairs(graph, item_ids, pairs, seed)
    directors: dict[str, str] = {}
    for item in sorted({i for pair in same + different for i in pair}):
        directors[item] = normalise_name(reply(DIRECTOR_QUESTION.format(title=graph.titles[item])))
    judged = []
    for kind, group in (("same", same), ("different", different)):
        for a, b in group:
            claimed_same = bool(directors[a]) and directors[a] == directors[b]
            judged.append({"kg": kind, "films": [graph.titles[a], graph.titles[b]],
                           "answers": [directors[a], directors[b]], "claimed_same": claimed_same})
    same_rows = [j for j in judged if j["kg"] == "same"]
    different_rows = [j for j in judged if j["kg"] == "different"]
    vetoed = [j for j in different_rows if j["claimed_same"]]
    return {
        "sequels": {"asked": len(sequels), "right": sum(s["right"] for s in sequels),
                    "accuracy": round(sum(s["right"] for s in sequels) / max(1, len(sequels)), 3),
                    "answers": sequels},
        "directors": {"films_asked": len(directors), "same_pairs": len(same_rows),
                      "different_pairs": len(different_rows),
                      "same_agreement": round(sum(j["claimed_same"] for j in same_rows) / max(1, len(same_rows)), 3),
                      "different_kept_apart": round(1 - len(vetoed) / max(1, len(different_rows)), 3),
                      "vetoed_claims": len(vetoed), "pairs": judged},
        "seconds": round(time.monotonic() - started, 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from inference.knowledge.llama_server import DEFAULT_MODEL, MODELS

    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--llm", default=DEFAULT_MODEL, choices=sorted(MODELS))
    parser.add_argument("--base-url", default=None, help="an OpenAI-compatible server instead of local llama.cpp")
    parser.add_argument("--model", default=None, help="model name at --base-url")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--pairs", type=int, default=40, help="director pairs of each kind (same / different)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")


def main_from_args(args: argparse.Namespace) -> int:
    import contextlib

    from inference.knowledge.backends import OpenAIChatBackend
    from inference.knowledge.evidence import KnowledgeGraph
    from inference.knowledge.llama_server import MODELS, LlamaServer, ServerConfig
    from ranking.data import load_dataset

    dataset = load_dataset(args.dataset)
    graph = KnowledgeGraph.from_frames(dataset.items, dataset.kg)
    item_ids = [str(i) for i in dataset.items.item_id]
    with contextlib.ExitStack() as stack:
        if args.base_url:
            backend = OpenAIChatBackend(args.base_url, args.model or "default")
            model = args.model or "default"
        else:
            config = ServerConfig(n_threads=args.threads)
            server = stack.enter_context(LlamaServer(config=config, model=MODELS[args.llm]))
            backend = OpenAIChatBackend(server.base_url, server.model, timeout_s=120)
            model = server.model
        result = run_claims(backend, graph, item_ids, args.pairs, args.seed)
    result = {"dataset": args.dataset, "model": model, **result}
    path = write_result(result, f"claims-{args.dataset}.json", args.out)
    d, s = result["directors"], result["sequels"]
    print(f"| {model} on {args.dataset}, checked against the KG | |\n|---|---:|\n"
          f"| sequel named right | {s['right']}/{s['asked']} ({s['accuracy']:.0%}) |\n"
          f"| same director claimed for KG same-director pairs | {d['same_agreement']:.0%} of {d['same_pairs']} |\n"
          f"| different directors kept apart (KG different) | {d['different_kept_apart']:.0%} of "
          f"{d['different_pairs']} |\n| claims the KG vetoes (same director, KG says not) | {d['vetoed_claims']} |\n")
    for row in s["answers"][:5]:
        verdict = "right" if row["right"] else "wrong"
        print(f"  sequel of {row['film']}: {row['answer']!r} — KG: {row['kg_sequel']} ({verdict})")
    for row in d["pairs"][:5]:
        print(f"  {row['films'][0]} / {row['films'][1]}: {row['answers']} — KG: {row['kg']} director")
    print(f"\n{result['seconds']:.0f} s; JSON: {path}")
    return 0
