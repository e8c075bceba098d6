"""`reaseq bench claims`: answers are checked against the KG — right sequels counted, false 'same director'
claims vetoed. A scripted stand-in answers here; the bench runs the real model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.claims import run_claims
from inference.knowledge.claims import (
    ClaimStats,
    check_director_claims,
    claim_counts,
    names_title,
    normalise_name,
    normalise_title,
    with_director,
)
from inference.knowledge.evidence import Evidence, KnowledgeGraph
from inference.knowledge.rules import CONTRADICTED, SUPPORTED, UNDECIDED
from inference.knowledge.text import knowledge_text


def test_titles_and_names_normalise():
    assert normalise_title("Empire Strikes Back, The (1980)") == "empire strikes back"
    assert names_title("The Empire Strikes Back", "Empire Strikes Back, The (1980)")
    assert not names_title("Return of the Jedi", "Empire Strikes Back, The (1980)")
    assert normalise_name("Directed by Ridley Scott.") == normalise_name("Ridley Scott") == "ridley scott"


@dataclass
class _Reply:
    text: str


class ScriptedModel:
    """Knows every sequel; says every film was directed by the same person (so the KG must veto)."""

    def __init__(self, graph: KnowledgeGraph) -> None:
        self.sequel_of = {graph.titles[i]: graph.titles[s] for i in graph.titles for s in graph.lookup(i, "sequel")
                          if not s.startswith("?")}

    def chat(self, request) -> _Reply:
        question = request.messages[-1]["content"]
        for film, sequel in self.sequel_of.items():
            if f"sequel to the film {film}?" in question:
                return _Reply(sequel)
        return _Reply("Alan Smithee")


@pytest.mark.parametrize("pairs", [5])
def test_claims_count_right_sequels_and_veto_false_same_director_claims(ml100k, pairs):
    graph = KnowledgeGraph.from_frames(ml100k.items, ml100k.kg)
    ids = [str(i) for i in ml100k.items.item_id]
    result = run_claims(ScriptedModel(graph), graph, ids, pairs, seed=0, progress=False)
    assert result["sequels"]["asked"] >= 50 and result["sequels"]["accuracy"] == 1.0
    directors = result["directors"]
    assert directors["same_pairs"] == directors["different_pairs"] == pairs
    assert directors["same_agreement"] == 1.0  # one name for everyone: 'same' always claimed …
    assert directors["vetoed_claims"] == pairs and directors["different_kept_apart"] == 0.0  # … and vetoed


HITCHCOCK = ["185", "443", "479", "480"]  # Psycho, The Birds, Vertigo, North by Northwest: one KG director
SPIELBERG = ["82", "234"]  # Jurassic Park, Jaws


def test_director_claims_are_judged_by_the_kg(ml100k):
    """A scripted set of answers (a stand-in for the model): the KG supports agreeing names, vetoes a name
    given to films of different directors and a name that breaks a KG same-director group."""
    graph = KnowledgeGraph.from_frames(ml100k.items, ml100k.kg)
    claims = {"185": "alfred hitchcock", "443": "alfred hitchcock", "479": "alfred hitchcock",
              "480": "james cameron",          # a name no other film got; the KG says its director is Psycho's
              "82": "steven spielberg",
              "234": "alfred hitchcock",       # Hitchcock's name for a film the KG gives another director
              "1": "", "183": "ridley scott"}  # no answer; Alien: no other film of its director asked
    verdicts = check_director_claims(claims, graph)
    assert {i: verdicts[i].status for i in claims} == {
        "185": SUPPORTED, "443": SUPPORTED, "479": SUPPORTED, "480": CONTRADICTED, "82": UNDECIDED,
        "234": CONTRADICTED, "1": UNDECIDED, "183": UNDECIDED}
    assert "Psycho (1960)" in verdicts["234"].reason and "someone else" in verdicts["234"].reason
    assert "Psycho (1960)" in verdicts["480"].reason

    record = {"attributes": ["released 1960", "1960s film"]}
    assert with_director(record, verdicts["185"])["attributes"][0] == "directed by Alfred Hitchcock"
    assert with_director(record, verdicts["234"]) == record and with_director(record, None) == record
    psycho = Evidence("185", "Psycho", "1960", ["Horror", "Thriller"])
    assert "Directed by Alfred Hitchcock." in knowledge_text(psycho, with_director(record, verdicts["185"]))
    assert "Directed by" not in knowledge_text(psycho, with_director(record, verdicts["234"]))
    counts = claim_counts(verdicts, ClaimStats())
    assert (counts["supported"], counts["vetoed_by_kg"], counts["undecided"], counts["answered"]) == (3, 2, 3, 7)


def test_director_names_are_extracted_from_sentences():
    assert normalise_name("The film Psycho (1960) is directed by Alfred Hitchcock") == "alfred hitchcock"
    assert normalise_name('The director of "Mighty Aphrodite" is Nicolas Cage') == "nicolas cage"
    assert normalise_name("Steven Spielberg and George Lucas") == "steven spielberg"
    assert normalise_name("The film that inspired the movie Raiders of the Lost Ark (19") == ""  # not a name
