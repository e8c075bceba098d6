"""The knowledge agents against the real local LLM: SmolLM2-135M-Instruct behind llama.cpp's
OpenAI-compatible server on 127.0.0.1 (one thread), on a small slice of ML-100K."""

from __future__ import annotations

import json

import pytest

from inference.knowledge.agents import Agents, Prompts
from inference.knowledge.backends import OpenAIChatBackend, complete_json
from inference.knowledge.build import BuildConfig, build_knowledge
from inference.knowledge.claims import check_director_claims, collect_director_claims, with_director
from inference.knowledge.evidence import KnowledgeGraph, extract_all
from inference.knowledge.llama_server import LlamaServer, ServerConfig
from inference.knowledge.rules import CONTRADICTED, check_choice
from inference.knowledge.schema import JUDGEMENT_JSON_SCHEMA, Judgement, KnowledgeRecord
from inference.knowledge.store import read_jsonl

pytestmark = pytest.mark.slow
SLICE = ["1", "183"]  # Toy Story, Alien


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LlamaServer(config=ServerConfig(n_threads=1), log_path=log) as server:
        yield server
    assert server.process is None


@pytest.fixture(scope="module")
def evidence(ml100k):
    return extract_all(ml100k.items, ml100k.kg)[0]


def test_real_build_slice_then_resume_without_calls(llm, tmp_path):
    backend = OpenAIChatBackend(llm.base_url, llm.model, timeout_s=120)
    cfg = BuildConfig(items=SLICE)
    first = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    assert first.counts["built"] + first.counts["failed"] == len(SLICE)
    assert first.counts["built"] == len(SLICE), read_jsonl(first.path / "failures.jsonl")
    assert first.counts["llm_calls"] >= 3 * len(SLICE) and first.counts["prompt_tokens"] > 0
    for record in read_jsonl(first.path / "records.jsonl"):
        KnowledgeRecord.model_validate(record)
    provenance = json.loads((first.path / "provenance.json").read_text())
    assert provenance["model"] == llm.model and provenance["kg_link_audit"]["passed"] is True
    claims = read_jsonl(first.path / "claims.jsonl")  # Toy Story and Alien both have a KG director
    assert sorted(c["item_id"] for c in claims) == SLICE and all(c["answer"] for c in claims)
    assert provenance["director_claims"]["films"] == len(SLICE)

    calls = backend.stats.calls
    again = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    assert backend.stats.calls == calls  # resumed from the cache: not one model call
    assert read_jsonl(again.path / "records.jsonl") == read_jsonl(first.path / "records.jsonl")


def test_real_model_claims_survive_the_verifier(llm, evidence):
    """Whatever SmolLM2 prefers, no accepted claim contradicts the genres; its vetoed picks are recorded."""
    agents = Agents(OpenAIChatBackend(llm.base_url, llm.model, timeout_s=120), Prompts.load("v2"))
    agents.calibrate()
    result = agents.run(evidence["183"])  # Alien: Action, Horror, Sci-Fi, Thriller
    assert result.record is not None, result.failures
    for name in ("audience", "moods", "occasions"):
        for option in result.record[name]:
            assert check_choice(name, option, evidence["183"].genres).status != CONTRADICTED
        assert result.choices[name], "the model's ranking is kept for the report"
    assert all(rejection["reason"] for rejection in result.rejections)
    assert "children" not in result.record["audience"]


def test_real_model_json_is_schema_constrained(llm, evidence):
    backend = OpenAIChatBackend(llm.base_url, llm.model, timeout_s=120)
    prompts = Prompts.load("v2")
    messages = [{"role": "system", "content": prompts.system},
                {"role": "user", "content": prompts.tagline.format(evidence=evidence["1"].text())}]
    outcome = complete_json(backend, messages, Judgement, JUDGEMENT_JSON_SCHEMA, max_tokens=40)
    assert outcome.ok, outcome.errors
    assert 3 <= len(outcome.value.tagline) <= 120 and outcome.completion_tokens > 0


def test_both_llm_call_counters_see_a_call(llm):
    """The two guards the stream is checked with (tests/test_demo_listeners.py) fail when a call is made: the
    process count the job exports as reaseq_llm_calls, and the server's own access log."""
    from inference.knowledge.backends import ChatRequest, llm_calls_made

    process_before, server_before = llm_calls_made(), llm.completion_requests()
    backend = OpenAIChatBackend(llm.base_url, llm.model, timeout_s=120)
    backend.chat(ChatRequest([{"role": "user", "content": "Say hi."}], max_tokens=2))
    assert llm_calls_made() == process_before + 1
    assert llm.completion_requests() == server_before + 1


def test_llama_cpp_is_built_portably():
    """A -march=native build of llama.cpp segfaults on Intel AMX CPUs (GCC 12), and a wheel cached on one
    machine must run on any x86-64 one: the Makefile builds the AVX2 baseline (GGML_NATIVE=OFF)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info and "AMX" not in info and "AVX512" not in info, info


DIRECTED = ["185", "443", "479", "480", "82", "174", "210", "234", "13", "152", "514"]  # Hitchcock, Spielberg, Allen


def test_real_model_director_claims_are_vetoed_by_the_kg(llm, ml100k):
    """SmolLM2 names the directors of films by three KG directors; the KG vetoes what it contradicts."""
    graph = KnowledgeGraph.from_frames(ml100k.items, ml100k.kg)
    backend = OpenAIChatBackend(llm.base_url, llm.model, timeout_s=120)
    store: dict[str, dict] = {}
    names, answers, stats = collect_director_claims(backend, graph, DIRECTED, store.get, store.__setitem__)
    assert stats.asked == len(DIRECTED) and stats.completion_tokens > 0
    verdicts = check_director_claims(names, graph)
    vetoed = [v for v in verdicts.values() if v.status == CONTRADICTED]
    assert vetoed, answers  # SmolLM2-135M knows few directors: the KG catches the claims that cannot all hold
    for verdict in vetoed:
        mine = graph.lookup(verdict.item_id, "director")
        same_name_other_director = [o for o in names if o != verdict.item_id and names[o] == verdict.name
                                    and not graph.lookup(o, "director") & mine]
        other_name_same_director = [o for o in graph.shared(verdict.item_id, "director")
                                    if names.get(o) and names[o] != verdict.name]
        assert same_name_other_director or other_name_same_director, verdict
        assert with_director({"attributes": []}, verdict) == {"attributes": []}  # never enters a record
    again = collect_director_claims(backend, graph, DIRECTED, store.get, store.__setitem__)
    assert again[2].asked == 0 and again[0] == names  # answers are cached
