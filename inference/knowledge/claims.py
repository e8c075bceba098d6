"""The KG as the verifier of what the model claims about people: "Who directed this film?".

The KG's people are opaque Freebase ids, so a named director is checked relationally, across the
catalogue: the model answers for every film the KG knows a director of, and a claim is

- supported when other films of the same KG director got the same name (independent answers agree
  where the KG says they must);
- contradicted (vetoed) when the model gives that name to films of another KG director, or when it names
  someone else for films the KG says share this one's director;
- undecided otherwise (no answer, no KG director, or no other film of that director to compare).

Supported is consistent, not proven right: the KG cannot name anyone, so a name the model gives all of a
director's films alike is supported whoever it names. Every verdict, with its reason, is in claims.jsonl;
a supported name enters the record ("directed by …") only when the build asks for it (`director_names`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from inference.knowledge.backends import BackendError, ChatRequest, LLMBackend
from inference.knowledge.evidence import KnowledgeGraph
from inference.knowledge.rules import CONTRADICTED, SUPPORTED, UNDECIDED

ARTICLES = ("the", "a", "an", "les", "la", "le", "il", "das", "der", "die")
SYSTEM = "You are a film expert. Answer briefly."
DIRECTOR_QUESTION = "Who directed the film {title}? Answer with the director's name only."
NAMED_LIMIT = 3  # films named in a verdict's reason


def normalise_title(title: str) -> str:
    """'Empire Strikes Back, The (1980)' → 'empire strikes back'; punctuation and leading articles dropped."""
    title = re.sub(r"\(.*?\)", " ", title.lower())
    title = re.sub(rf",\s*({'|'.join(ARTICLES)})\s*$", "", title.strip())
    words = re.findall(r"[a-z0-9]+", title)
    while words and words[0] in ARTICLES:
        words = words[1:]
    return " ".join(words)


def names_title(answer: str, title: str) -> bool:
    """Does a free-text answer name the film (its normalised title inside the normalised answer)?"""
    wanted = normalise_title(title)
    return bool(wanted) and f" {wanted} " in f" {' '.join(re.findall(r'[a-z0-9]+', answer.lower()))} "


def normalise_name(answer: str) -> str:
    """'The film Psycho (1960) is directed by Alfred Hitchcock.' → 'alfred hitchcock'.

    The first line, after 'directed by' / 'director … is' / 'director:' when present, cut at punctuation or
    'and'; more than four words is not a name ('' — no claim)."""
    line = answer.strip().splitlines()[0] if answer.strip() else ""
    said = re.search(r"(?i)(?:directed by|director(?: of .*?)? (?:is|was)|director:)\s+(.+)", line)
    line = said.group(1) if said else line
    line = re.split(r"[.,;(\"]| and ", line)[0]
    words = re.findall(r"[a-z]+", line.lower())
    return " ".join(words) if len(words) <= 4 else ""


def display_name(name: str) -> str:
    """'ridley scott' → 'Ridley Scott'."""
    return " ".join(word.capitalize() for word in name.split())


def ask(backend: LLMBackend, question: str, max_tokens: int = 24):
    """One greedy question to the model; returns the backend's reply (text and token counts)."""
    return backend.chat(ChatRequest([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                    max_tokens=max_tokens))


@dataclass(frozen=True)
class ClaimVerdict:
    """The KG's verdict on the model's claim that `name` directed `item_id`."""

    item_id: str
    name: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _titles(graph: KnowledgeGraph, items: Iterable[str]) -> str:
    items = sorted(items, key=lambda i: (len(i), i))
    named = ", ".join(graph.titles[i] for i in items[:NAMED_LIMIT])
    return named + (f" and {len(items) - NAMED_LIMIT} more" if len(items) > NAMED_LIMIT else "")


def check_director_claims(claims: dict[str, str], graph: KnowledgeGraph) -> dict[str, ClaimVerdict]:
    """Verdicts for normalised director names claimed per item.

    A name belongs to one person: among the films it is claimed for, the KG director entity most of them
    hold (at least two) is taken as that person. Claims for films of that entity are supported; claims of
    the same name for films the KG gives a different director are contradicted. Then a name claimed once
    is contradicted when the KG says another film shares this film's director and the model named someone
    else there (a claim not already vetoed), and undecided otherwise.
    """
    directors = {item: graph.lookup(item, "director") for item in claims}
    claimants: dict[str, set[str]] = defaultdict(set)
    for item, name in claims.items():
        if name and directors[item]:
            claimants[name].add(item)
    owners: dict[str, str | None] = {}
    for name, items in claimants.items():
        held = Counter(e for item in items for e in directors[item])
        best = max(held.items(), key=lambda kv: (kv[1], kv[0]), default=(None, 0))
        owners[name] = best[0] if best[1] >= 2 else None
    verdicts = {}
    for item, name in claims.items():
        if not name:
            verdicts[item] = ClaimVerdict(item, name, UNDECIDED, "the model named no one")
            continue
        if not directors[item]:
            verdicts[item] = ClaimVerdict(item, name, UNDECIDED, "the KG has no director for this film")
            continue
        others = claimants[name] - {item}
        owner = owners[name]
        if owner is not None and owner in directors[item]:
            agree = {o for o in others if owner in directors[o]}
            verdicts[item] = ClaimVerdict(item, name, SUPPORTED, f"the same name for {_titles(graph, agree)}, which "
                                                                 "the KG says shares this film's director")
        elif others:
            clash = {o for o in others if not directors[o] & directors[item]} or others
            verdicts[item] = ClaimVerdict(item, name, CONTRADICTED,
                                          f"the model also names {display_name(name)} for {_titles(graph, clash)}, "
                                          "whose director the KG says is someone else")
    vetoed = {o for o, v in verdicts.items() if v.status == CONTRADICTED}
    for item, name in claims.items():  # names claimed once, against the claims the first pass did not veto
        if item in verdicts:
            continue
        differ = {o for o in graph.shared(item, "director") if claims.get(o) and claims[o] != name and o not in vetoed}
        verdicts[item] = (ClaimVerdict(item, name, CONTRADICTED,
                                       f"the KG says {_titles(graph, differ)} shares this film's director, for "
                                       "which the model names someone else") if differ else
                          ClaimVerdict(item, name, UNDECIDED, "no other film of this director to compare"))
    return {item: verdicts[item] for item in claims}


@dataclass
class ClaimStats:
    """The cost of the questions asked (cached answers cost nothing)."""

    asked: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def claim_key(item_id: str, title: str, model: str) -> str:
    payload = json.dumps(["director-claim", item_id, title, model, DIRECTOR_QUESTION, SYSTEM])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def collect_director_claims(backend: LLMBackend, graph: KnowledgeGraph, item_ids: Iterable[str],
                            get: Callable[[str], dict | None], put: Callable[[str, dict], None],
                            cached_only: bool = False, on_answer: Callable[[], None] | None = None,
                            ) -> tuple[dict[str, str], dict[str, str], ClaimStats]:
    """Ask the model who directed each film the KG knows a director of (answers cached through get/put).

    Returns item → normalised name, item → the raw answer, and the cost."""
    names: dict[str, str] = {}
    answers: dict[str, str] = {}
    stats = ClaimStats()
    for item in item_ids:
        if not graph.lookup(item, "director"):
            continue
        key = claim_key(item, graph.titles[item], backend.model)
        hit = get(key)
        if hit is not None:
            stats.cached += 1
        else:
            try:
                reply = ask(backend, DIRECTOR_QUESTION.format(title=graph.titles[item]))
            except BackendError as error:
                if cached_only and error.kind == "unrecorded":
                    continue  # a build with no model: only recorded answers count
                raise
            hit = {"answer": reply.text.strip(), "prompt_tokens": reply.prompt_tokens,
                   "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 3)}
            put(key, hit)
            stats.asked += 1
            stats.prompt_tokens += hit["prompt_tokens"]
            stats.completion_tokens += hit["completion_tokens"]
            stats.seconds += hit["seconds"]
        answers[item] = hit["answer"]
        names[item] = normalise_name(hit["answer"])
        if on_answer:
            on_answer()
    return names, answers, stats


def claim_counts(verdicts: dict[str, ClaimVerdict], stats: ClaimStats) -> dict[str, int | float]:
    """Build counts: answers, supported, vetoed by the KG, undecided; the questions' cost."""
    statuses = [v.status for v in verdicts.values()]
    return {"films": len(verdicts), "answered": sum(1 for v in verdicts.values() if v.name),
            "supported": statuses.count(SUPPORTED), "vetoed_by_kg": statuses.count(CONTRADICTED),
            "undecided": statuses.count(UNDECIDED), "asked_now": stats.asked, "cached": stats.cached,
            "completion_tokens": stats.completion_tokens, "llm_seconds": round(stats.seconds, 1)}


def with_director(record: dict, verdict: ClaimVerdict | None) -> dict:
    """The record with 'directed by …' first among its attributes when the KG supports the claim."""
    if verdict is None or verdict.status != SUPPORTED:
        return record
    attribute = f"directed by {display_name(verdict.name)}"
    return {**record, "attributes": [attribute, *(a for a in record["attributes"] if a != attribute)][:8]}
