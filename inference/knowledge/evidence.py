"""The extractor's tools: deterministic evidence about an item from its catalogue row and the Freebase KG.

The KG's entities are opaque Freebase ids, so its value is relational: which catalogue items share a
director, writer, cast, producer, subject or studio with this one, which are its sequels and prequels,
how many awards it won. Everything here is code: no LLM is involved, and every fact carries an
evidence id (E1, E2, …) that records and verifier checks refer to.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import pandas as pd

# relation → (kind, item side): the item is the triple's head ("head") or tail ("tail")
RELATIONS: dict[str, tuple[str, str]] = {
    "film.film.directed_by": ("director", "head"), "film.director.film": ("director", "tail"),
    "film.film.actor": ("cast", "head"), "film.actor.film": ("cast", "tail"),
    "film.film.written_by": ("writer", "head"), "film.writer.film": ("writer", "tail"),
    "film.film.produced_by": ("producer", "head"), "film.producer.film": ("producer", "tail"),
    "film.film.cinematography": ("cinematographer", "head"), "film.cinematographer.film": ("cinematographer", "tail"),
    "film.film.production_companies": ("studio", "head"), "film.production_company.films": ("studio", "tail"),
    "film.film.subjects": ("subject", "head"), "film.film_subject.films": ("subject", "tail"),
    "film.film.genre": ("kg_genre", "head"), "film.film_genre.films_in_this_genre": ("kg_genre", "tail"),
    "film.film.award_won": ("award_won", "head"), "film.film.award_nomination": ("award_nomination", "head"),
    "film.film.language": ("language", "head"), "film.film.country": ("country", "head"),
    "film.film.rating": ("content_rating", "head"),
    "film.film.sequel": ("sequel", "head"), "film.film.prequel": ("prequel", "head"),
}
# kinds whose shared entities link items to each other, with the phrase used in evidence text
SHARED_KINDS = {
    "director": "same director as", "writer": "same writer as", "cast": "shares cast with",
    "producer": "same producer as", "subject": "same subject as", "studio": "same studio as",
    "cinematographer": "same cinematographer as",
}
RELATED_LIMIT = 4  # titles named per relation


@dataclass(frozen=True)
class Fact:
    """One piece of evidence: id, kind, text, the catalogue items it links to, and whether it is trusted.

    Catalogue facts are always trusted; KG facts only when the link audit passes (see `audit_links`).
    """

    id: str
    kind: str
    text: str
    items: tuple[str, ...] = ()
    trusted: bool = True


@dataclass
class Evidence:
    """Everything the extractor found about one item."""

    item_id: str
    title: str
    year: str
    genres: list[str]
    facts: list[Fact] = field(default_factory=list)

    def by_kind(self, kind: str) -> list[Fact]:
        return [f for f in self.facts if f.kind == kind]

    def trusted(self) -> list[Fact]:
        return [f for f in self.facts if f.trusted]

    def ids(self) -> set[str]:
        return {f.id for f in self.facts}

    def related_items(self) -> dict[str, list[str]]:
        """Relation kind → linked catalogue item ids."""
        return {f.kind: list(f.items) for f in self.facts if f.items}

    def text(self, trusted_only: bool = True) -> str:
        """The evidence as compact text: one line per (trusted) fact."""
        return "\n".join(f"[{f.id}] {f.text}" for f in self.facts if f.trusted or not trusted_only)

    def to_dict(self) -> dict:
        return asdict(self)


def decade_of(year: str) -> str | None:
    return f"{year[:3]}0s" if len(year) == 4 and year.isdigit() else None


@dataclass
class KnowledgeGraph:
    """The retrieval tool over the item ↔ Freebase links and the KG triples."""

    titles: dict[str, str]                      # item id → 'Title (year)'
    entity_of: dict[str, str]                   # item id → Freebase id
    attrs: dict[str, dict[str, set[str]]]       # item id → kind → neighbour entities
    holders: dict[tuple[str, str], set[str]]    # (kind, entity) → items holding it
    majority: dict[str, str]                    # kind → the catalogue's most common entity (language, country)

    @classmethod
    def from_frames(cls, items: pd.DataFrame, kg: pd.DataFrame | None) -> KnowledgeGraph:
        titles = {r.item_id: f"{r.title} ({r.year})" if r.year else str(r.title) for r in items.itertuples()}
        entity_of = {r.item_id: r.freebase_id for r in items.itertuples() if r.freebase_id}
        item_of: dict[str, list[str]] = defaultdict(list)
        for item, entity in entity_of.items():
            item_of[entity].append(item)
        attrs: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        if kg is not None:
            for head, relation, tail in zip(kg["head"], kg["relation"], kg["tail"], strict=True):
                kind, side = RELATIONS.get(relation, (None, None))
                if kind is None:
                    continue
                film, other = (head, tail) if side == "head" else (tail, head)
                for item in item_of.get(film, ()):
                    attrs[item][kind].add(other)
        holders: dict[tuple[str, str], set[str]] = defaultdict(set)
        for item, kinds in attrs.items():
            for kind, entities in kinds.items():
                for entity in entities:
                    holders[(kind, entity)].add(item)
        majority = {}
        for kind in ("language", "country"):
            counts = Counter(e for kinds in attrs.values() for e in kinds.get(kind, ()))
            if counts:
                majority[kind] = counts.most_common(1)[0][0]
        item_by_entity = {e: items_[0] for e, items_ in item_of.items()}
        for kinds in attrs.values():  # sequel/prequel entities → catalogue items where linked
            for kind in ("sequel", "prequel"):
                if kind in kinds:
                    kinds[kind] = {item_by_entity.get(e, f"?{e}") for e in kinds[kind]}
        return cls(titles, entity_of, {k: dict(v) for k, v in attrs.items()}, dict(holders), majority)

    def lookup(self, item_id: str, kind: str) -> set[str]:
        """Raw neighbour entities of an item for one relation kind (the tool the extractor calls)."""
        return set(self.attrs.get(item_id, {}).get(kind, ()))

    def shared(self, item_id: str, kind: str) -> list[str]:
        """Other catalogue items sharing an entity of `kind`, most shared first, then by id."""
        counts: Counter[str] = Counter()
        for entity in self.lookup(item_id, kind):
            for other in self.holders.get((kind, entity), ()):
                if other != item_id:
                    counts[other] += 1
        return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], _id_key(kv[0])))]


def _id_key(item_id: str) -> tuple[int, str]:
    return (int(item_id), "") if item_id.isdigit() else (1 << 62, item_id)


@dataclass(frozen=True)
class LinkAudit:
    """Do the item ↔ Freebase links agree with the catalogue? KG genre entities should predict catalogue genres.

    For each catalogue genre with enough items, the precision of the KG genre entity that best matches it
    (among entities held by ≥ `min_support` items); correct links give high precision (an 'Animation'
    entity held almost only by Animation films), misaligned links give about the base rate.
    """

    precision: dict[str, float]
    base_rate: dict[str, float]
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def audit_links(items: pd.DataFrame, graph: KnowledgeGraph, min_items: int = 20, min_support: int = 8,
                threshold: float = 0.5) -> LinkAudit:
    """Audit the links once per dataset: passed when the median best precision reaches `threshold`."""
    genres = {str(r.item_id): set(r.genres) for r in items.itertuples()}
    linked = [i for i in genres if graph.lookup(i, "kg_genre")]
    entities = [(e, holders) for (kind, e), holders in graph.holders.items()
                if kind == "kg_genre" and len(holders) >= min_support]
    precision, base = {}, {}
    for genre in sorted({g for gs in genres.values() for g in gs} - {"unknown"}):
        members = [i for i in linked if genre in genres[i]]
        if len(members) < min_items or not entities:
            continue
        base[genre] = round(len(members) / len(linked), 3)
        precision[genre] = round(max(sum(genre in genres[h] for h in holders) / len(holders)
                                     for _, holders in entities), 3)
    values = sorted(precision.values())
    passed = bool(values) and values[len(values) // 2] >= threshold
    return LinkAudit(precision, base, passed)


def extract_evidence(item: pd.Series | object, graph: KnowledgeGraph, kg_trusted: bool = True) -> Evidence:
    """The extractor: catalogue facts (title, year, genres) then KG facts, each with an evidence id."""
    item_id, title, year = str(item.item_id), str(item.title), str(item.year or "")
    genres = [g for g in item.genres if g != "unknown"]
    facts: list[tuple[str, str, tuple[str, ...]]] = [("title", f"title: {title}", ())]
    if year:
        facts.append(("year", f"released {year} ({decade_of(year)})", ()))
    facts.append(("genres", f"genres: {', '.join(genres) if genres else 'unknown'}", ()))
    for kind, phrase in SHARED_KINDS.items():
        others = graph.shared(item_id, kind)
        if others:
            named = others[:RELATED_LIMIT]
            more = f" and {len(others) - len(named)} more" if len(others) > len(named) else ""
            facts.append((kind, f"{phrase} {'; '.join(graph.titles[o] for o in named)}{more}", tuple(named)))
    for kind, phrase in (("sequel", "sequel"), ("prequel", "prequel")):
        linked = sorted(graph.lookup(item_id, kind))
        if linked:
            known = tuple(i for i in linked if not i.startswith("?"))
            names = [graph.titles[i] for i in known] + (["a film outside the catalogue"] if len(known) < len(linked)
                                                        else [])
            facts.append((kind, f"its {phrase}: {'; '.join(names)}", known))
    won, nominated = len(graph.lookup(item_id, "award_won")), len(graph.lookup(item_id, "award_nomination"))
    if won or nominated:
        facts.append(("awards", f"awards: won {won}, nominated for {nominated}", ()))
    for kind, label in (("language", "language"), ("country", "country of production")):
        values = graph.lookup(item_id, kind)
        if values and kind in graph.majority:
            same = graph.majority[kind] in values
            text = f"{label}: {'the catalogue majority' if same else 'not the catalogue majority'}"
            facts.append((f"{kind}_majority" if same else f"{kind}_other", text, ()))
    catalogue = {"title", "year", "genres"}
    return Evidence(item_id, title, year, genres,
                    [Fact(f"E{n}", kind, text, linked, kind in catalogue or kg_trusted)
                     for n, (kind, text, linked) in enumerate(facts, start=1)])


def extract_all(items: pd.DataFrame, kg: pd.DataFrame | None,
                graph: KnowledgeGraph | None = None) -> tuple[dict[str, Evidence], LinkAudit]:
    """Evidence for every catalogue item (keyed by item id) and the link audit that decides KG trust."""
    graph = graph or KnowledgeGraph.from_frames(items, kg)
    audit = audit_links(items, graph)
    evidence = {str(row.item_id): extract_evidence(row, graph, audit.passed) for row in items.itertuples()}
    return evidence, audit


def evidence_text(evidence: Evidence, extra: Iterable[str] = ()) -> str:
    """One paragraph for the text encoder: what the evidence says, plus optional knowledge phrases."""
    parts = [f"{evidence.title} ({evidence.year})" if evidence.year else evidence.title,
             f"Genres: {', '.join(evidence.genres) or 'unknown'}."]
    for fact in evidence.trusted():
        if fact.kind not in ("title", "genres"):
            parts.append(fact.text[0].upper() + fact.text[1:] + ".")
    parts.extend(extra)
    return " ".join(parts)
