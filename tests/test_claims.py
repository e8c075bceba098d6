"""`reaseq bench claims`: answers are checked against the KG — right sequels counted, false 'same director'
claims vetoed. A scripted stand-in answers here; the bench runs the real model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.claims import names_title, normalise_name, normalise_title, run_claims
from inference.knowledge.evidence import KnowledgeGraph


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
