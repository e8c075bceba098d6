"""KG relations: grounded reasons, relational item vectors, and a knowledge-aware ranker that explains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.knowledge.embeddings import (
    KG_VECTORS,
    RELATIONS,
    knowledge_training_inputs,
    l2_normalise,
    save_embeddings,
    save_kg_relations,
)
from inference.knowledge.evidence import KnowledgeGraph
from inference.knowledge.relations import RelationIndex, relational_vectors
from inference.serve.scoring import LoadedRanker, score_users
from ranking.model import RankerConfig, SequentialRanker
from streaming.scoring import PendingScore, score_records
from streaming.state import UserState

STAR_WARS, EMPIRE, JEDI = "50", "172", "181"


@pytest.fixture(scope="module")
def graph(ml100k) -> KnowledgeGraph:
    return KnowledgeGraph.from_frames(ml100k.items, ml100k.kg)


@pytest.fixture(scope="module")
def relations(graph, ml100k) -> RelationIndex:
    return RelationIndex.from_graph(graph, [str(i) for i in ml100k.items.item_id])


def test_reasons_follow_the_sequel_chain_and_prefer_the_strongest_relation(relations):
    assert relations.reason(EMPIRE, [STAR_WARS]) == "sequel of Star Wars (1977), which you watched"
    assert relations.reason(JEDI, ["1", EMPIRE, "1"]) == "sequel of Empire Strikes Back, The (1980), which you watched"
    assert relations.reason(STAR_WARS, [EMPIRE]) == "prequel of Empire Strikes Back, The (1980), which you watched"
    # a sequel link beats a shared writer, even when the writer's film was watched more recently
    assert relations.reason(EMPIRE, [STAR_WARS, JEDI]).startswith("sequel of Star Wars")
    assert relations.reason(STAR_WARS, ["1"]) is None  # Toy Story shares nothing with it
    assert relations.reason("no-such-item", [STAR_WARS]) is None


def test_shared_cast_is_counted(relations, graph):
    item, (other, (_, count)) = next((i, pair) for i, pairs in relations.related.items()
                                        for pair in pairs.items() if pair[1][0] == "cast" and pair[1][1] >= 3)
    assert count == len(graph.lookup(item, "cast") & graph.lookup(other, "cast"))
    expected = f"shares {count} cast members with {graph.titles[other]}, which you watched"
    assert relations.reason(item, [other]) == expected


def test_relations_round_trip(relations, tmp_path):
    relations.save(tmp_path / "relations.json")
    loaded = RelationIndex.load(tmp_path / "relations.json")
    assert loaded.related[EMPIRE] == relations.related[EMPIRE]
    assert loaded.reason(JEDI, [EMPIRE]) == relations.reason(JEDI, [EMPIRE])


def test_relational_vectors_put_a_franchise_together(graph, ml100k):
    ids = [str(i) for i in ml100k.items.item_id]
    vectors = relational_vectors(graph, ids)
    assert vectors.shape == (len(ids), 64) and vectors.dtype == np.float32
    row = {item: n for n, item in enumerate(ids)}
    linked = np.abs(vectors).sum(axis=1) > 0
    assert linked.sum() > 1200  # about every item with a KG link
    np.testing.assert_allclose(np.linalg.norm(vectors[linked], axis=1), 1.0, rtol=1e-5)
    similarity = vectors[row[STAR_WARS]] @ vectors[linked].T
    assert vectors[row[STAR_WARS]] @ vectors[row[EMPIRE]] > np.quantile(similarity, 0.99)


def test_relational_vectors_are_the_same_bytes_in_every_process(tmp_path):
    """Python salts string hashes per process, so iterating a set of KG entities differs between runs."""
    import os
    import subprocess
    import sys

    script = ("import sys; from ranking.data import load_dataset; "
              "from inference.knowledge.evidence import KnowledgeGraph; "
              "from inference.knowledge.relations import relational_vectors; "
              "d = load_dataset('ml-100k'); g = KnowledgeGraph.from_frames(d.items, d.kg); "
              "sys.stdout.buffer.write(relational_vectors(g, [str(i) for i in d.items.item_id]).tobytes())")
    outputs = [subprocess.run([sys.executable, "-c", script], capture_output=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert len(outputs[0]) == 1682 * 64 * 4 and outputs[0] == outputs[1]


def _tiny_knowledge_artifact(ml100k, root):
    ids = [str(i) for i in ml100k.items.item_id]
    text = l2_normalise(np.random.default_rng(0).normal(size=(len(ids), 384)).astype(np.float32))
    save_embeddings("ml-100k", ids, ids, text, {"source": "test", "knowledge_version": "k-test"}, root)
    folder = root / "knowledge-embeddings" / "ml-100k"
    folder = folder / (folder / "LATEST").read_text().strip()
    save_kg_relations(folder, ml100k.items, ml100k.kg, ids)
    return ids, folder


def test_knowledge_inputs_fuse_text_and_kg_vectors_and_ship_the_reasons(ml100k, tmp_path):
    ids, folder = _tiny_knowledge_artifact(ml100k, tmp_path)
    inputs = knowledge_training_inputs("ml-100k", ids, "LATEST", tmp_path)
    side = inputs["side_embeddings"]
    assert side.shape == (len(ids) + 1, 384 + 64) and not side[0].any()
    assert inputs["attachments"][RELATIONS] == folder / RELATIONS
    assert inputs["provenance"] == {"embeddings_version": folder.name, "knowledge_version": "k-test"}
    assert knowledge_training_inputs("ml-100k", ids, "none", tmp_path) == {}
    (folder / KG_VECTORS).unlink()
    with pytest.raises(FileNotFoundError, match="reaseq knowledge embed"):
        knowledge_training_inputs("ml-100k", ids, "LATEST", tmp_path)


def test_a_knowledge_aware_ranker_explains_its_items_and_records_carry_them(ml100k, relations, tmp_path):
    ids = [str(i) for i in ml100k.items.item_id]
    torch.manual_seed(0)
    model = SequentialRanker(RankerConfig(num_items=len(ids), max_len=10, dim=8, heads=1, side_dim=4),
                             torch.randn(len(ids) + 1, 4)).eval()
    ranker = LoadedRanker(model, ids, {item: n + 1 for n, item in enumerate(ids)}, "r-test", "cpu",
                          relations=relations, knowledge_version="e-test")
    with torch.no_grad():  # make the sequel the top item for a Star Wars fan
        model.item_emb.weight[int(EMPIRE)] += 50 * model.encode(torch.tensor([[int(STAR_WARS)]]))[0, -1]
    result = score_users(ranker, [{"user_id": "u", "recent_items": [STAR_WARS]}], top_k=3)[0]
    assert result["items"][0] == EMPIRE and len(result["reasons"]) == 3
    assert result["reasons"][0] == "sequel of Star Wars (1977), which you watched"
    state = UserState(user_id="u", version=1, recent_items=(STAR_WARS,), counts={"view": 1}, last_event_ts=1)
    body = json.loads(score_records([PendingScore(state, "e1", 5)],
                                    {"model_version": "r-test", "knowledge_version": "e-test", "results": [result]},
                                    "scores", lambda: 9)[0][2])
    assert body["knowledge_version"] == "e-test" and body["reasons"] == result["reasons"]


def test_a_ranker_with_an_intent_index_composes_the_users_intents(ml100k):
    from inference.knowledge.intents import IntentIndex

    ids = [str(i) for i in ml100k.items.item_id]
    records = {STAR_WARS: {"intents": ["epic space adventure", "evening with friends", "1970s sci-fi"]},
               EMPIRE: {"intents": ["epic space adventure", "movie for teens", "1980s sci-fi"]}}
    index = IntentIndex.from_records(records, lambda texts: np.eye(len(texts), 4, dtype=np.float32))
    model = SequentialRanker(RankerConfig(num_items=len(ids), max_len=10, dim=8, heads=1)).eval()
    ranker = LoadedRanker(model, ids, {item: n + 1 for n, item in enumerate(ids)}, "r-test", "cpu", intents=index)
    result = score_users(ranker, [{"user_id": "u", "recent_items": [STAR_WARS, EMPIRE, "1"]}], top_k=2)[0]
    assert result["intents"][0] == "epic space adventure" and len(result["intents"]) == 3
    assert "reasons" not in result  # no relation index, no reasons
