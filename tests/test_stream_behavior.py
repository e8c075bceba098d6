"""Nearline behaviour inference in the real pipeline: Kafka, PyFlink, Ray Serve with both apps (CPU).

The job refreshes users' inferred items through the BehaviorReasoner in the background and keeps
them in user state with the model version; scores never wait for it, even when it hangs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest

from streaming.config import StreamConfig
from streaming.pipeline import JobProcess, OutputMonitor, latest_checkpoint
from streaming.replay import ReplayConfig, interactions_to_events, replay
from streaming.scoring import covered_events
from streaming.topics import TopicsConfig, ensure_topics
from tests.helpers import kill_mid_stream_and_restore, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_both(tmp_path_factory, ml100k, ml100k_sequences):
    """Ray Serve with the knowledge-aware Ranker (reading 5 inferred items; KG reasons) and the BehaviorReasoner,
    on tiny artifacts."""
    from inference.serve.local import LocalServe
    from tests.helpers import tiny_ranker_and_behavior

    ranker, behavior = tiny_ranker_and_behavior(ml100k, ml100k_sequences, tmp_path_factory.mktemp("artifacts"))
    with LocalServe(str(ranker.path), behavior_artifact=str(behavior.path)) as served:
        yield served


def serve_both_knowledge(served) -> str:
    """The knowledge version the served Ranker reports."""
    from inference.serve.client import RankerClient

    reply = RankerClient(served.url, timeout_s=10.0).score([{"user_id": "probe", "recent_items": ["50"]}], top_k=1)
    return reply["knowledge_version"]


def _topics() -> TopicsConfig:
    tag = uuid.uuid4().hex[:6]
    return TopicsConfig(events=f"ev-{tag}", user_state=f"st-{tag}", user_scores=f"sc-{tag}", dead_letter=f"dl-{tag}")


def _config(kafka, serve_url, behavior_url, topics, tmp_path, ml100k, **overrides) -> StreamConfig:
    return StreamConfig(bootstrap_servers=kafka, serve_url=serve_url, behavior_url=behavior_url,
                        known_items=list(ml100k.items.item_id), topics=topics,
                        checkpoint_dir=str(tmp_path / "checkpoints"), group_id=f"job-{topics.events}",
                        transactional_id_prefix=f"tx-{topics.events}", **overrides)


def test_nearline_refresh_updates_inferred_items_in_user_state(kafka, serve_both, ml100k, tmp_path):
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=1500)
    cfg = _config(kafka, serve_both.url, serve_both.behavior_url, topics, tmp_path, ml100k,
                  behavior_refresh_events=3, behavior_refresh_ms=60_000)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path).start()
    try:
        replay(events, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events), job, 240, "all scores")
        users = {e.user_id for e in events}
        wait_for(lambda: sum(bool(monitor.latest_state.get(u, {}).get("inferred_items")) for u in users) == len(users),
                 job, 120, "an inference for every user")
        time.sleep(2)
    finally:
        job.stop()
        monitor.stop()
    items_of: dict[str, list[str]] = {}
    for event in events:
        items_of.setdefault(event.user_id, []).append(event.item_id)
    states = [json.loads(v) for _, v in monitor.records[topics.user_state]]
    refreshed = [s for s in states if s["inferred_items"]]
    assert refreshed
    for state in refreshed:
        assert state["inferred_model_version"] == serve_both.behavior_version
        assert len(state["inferred_items"]) == 5
        seen = items_of[state["user_id"]][:state["inferred_at_events"]]
        assert not set(state["inferred_items"]) & set(seen[-20:])  # never re-infers what the user has
    for user in items_of:  # refreshed again as events arrive: the latest inference is recent
        final = monitor.latest_state[user]
        assert len(items_of[user]) - final["inferred_at_events"] < 3 + 1
    versions: dict[str, list[int]] = {}
    for state in states:
        versions.setdefault(state["user_id"], []).append(state["version"])
    assert all(v == sorted(v) and len(set(v)) == len(v) for v in versions.values())
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    assert {e for r in scores for e, _ in covered_events(r)} == {e.event_id for e in events}


def test_a_hanging_behaviour_service_never_holds_back_scores(kafka, serve_both, ml100k, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections, never answers
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=600)
    cfg = _config(kafka, serve_both.url, f"http://127.0.0.1:{silent.getsockname()[1]}/behavior", topics,
                  tmp_path, ml100k, behavior_timeout_s=600.0)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path).start()
    try:
        wait_for(lambda: latest_checkpoint(cfg.checkpoint_dir) is not None, job, 120, "the job running")
        started = time.monotonic()
        replay(events, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events), job, 120, "all scores")
        took = time.monotonic() - started
    finally:
        job.stop()
        monitor.stop()
        stop.set()
        silent.close()
        for conn in accepted:
            conn.close()
    assert accepted, "the job never asked the behaviour service"
    assert took < 90.0, f"scores waited for the hanging behaviour service ({took:.0f} s)"
    assert not any(json.loads(v)["inferred_items"] for _, v in monitor.records[topics.user_state])


def test_killed_job_with_refresh_on_restores_exactly_once(kafka, serve_both, ml100k, tmp_path):
    """SIGKILL mid-stream with the nearline refresh on, transactional: after the restore every event is
    answered exactly once, each user's state versions run 1..n once each (events and refreshes), and the
    final state holds exactly the user's events."""
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=2500)
    cfg = _config(kafka, serve_both.url, serve_both.behavior_url, topics, tmp_path, ml100k, mode="transactional",
                  checkpoint_interval_ms=1000, behavior_refresh_events=3, state_records="every-event")
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    kill_mid_stream_and_restore(cfg, kafka, events, monitor, tmp_path, first=1200, before_kill=1800)
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    covered = [e for r in scores for e, _ in covered_events(r)]
    assert sorted(covered) == sorted(e.event_id for e in events)  # each event answered exactly once
    # the knowledge-aware Ranker scored them all: its knowledge version on every record, KG reasons on some
    knowledge_version = serve_both_knowledge(serve_both)
    assert knowledge_version and {r["knowledge_version"] for r in scores} == {knowledge_version}
    assert all(len(r["reasons"]) == len(r["items"]) for r in scores)
    assert any(reason for r in scores for reason in r["reasons"]), "no recommendation was explained"
    states = [json.loads(v) for _, v in monitor.records[topics.user_state]]
    assert any(s["inferred_items"] for s in states), "no refresh reached user state"
    assert monitor.snapshot().refreshes > 0  # state records made by a refresh, told apart from event records
    versions: dict[str, list[int]] = {}
    for state in states:
        versions.setdefault(state["user_id"], []).append(state["version"])
    per_user: dict[str, list[str]] = {}
    for event in events:
        per_user.setdefault(event.user_id, []).append(event.item_id)
    for user, items in per_user.items():
        assert versions[user] == list(range(1, len(versions[user]) + 1)), user  # no version twice, none lost
        final = monitor.latest_state[user]
        assert sum(final["counts"].values()) == len(items)
        assert final["recent_items"] == items[-len(final["recent_items"]):]


def test_killed_low_latency_job_with_refresh_on_loses_nothing(kafka, serve_both, ml100k, tmp_path):
    """SIGKILL mid-stream, low-latency (at-least-once) with the refresh on and the knowledge-aware Ranker: the
    events after the last checkpoint are processed again, so records repeat, but every event is answered, and
    the state a consumer keeps (only newer versions: streaming.state.newer) holds exactly the user's events —
    none lost, none applied twice."""
    from streaming.state import newer

    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=2500)
    cfg = _config(kafka, serve_both.url, serve_both.behavior_url, topics, tmp_path, ml100k, mode="low-latency",
                  checkpoint_interval_ms=1000, behavior_refresh_events=3)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    kill_mid_stream_and_restore(cfg, kafka, events, monitor, tmp_path, first=1200, before_kill=1800)
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    covered = {e for r in scores for e, _ in covered_events(r)}
    assert covered == {e.event_id for e in events}  # every event answered (some more than once)
    assert {r["knowledge_version"] for r in scores} == {serve_both_knowledge(serve_both)}
    kept: dict[str, dict] = {}
    for _, value in monitor.records[topics.user_state]:
        state = json.loads(value)
        before = kept.get(state["user_id"])
        if newer(state["version"], None if before is None else before["version"]):
            kept[state["user_id"]] = state
    assert any(s["inferred_items"] for s in kept.values()), "no refresh reached user state"
    per_user: dict[str, list[str]] = {}
    for event in events:
        per_user.setdefault(event.user_id, []).append(event.item_id)
    for user, items in per_user.items():
        assert sum(kept[user]["counts"].values()) == len(items), user
        assert kept[user]["recent_items"] == items[-len(kept[user]["recent_items"]):]
        assert kept[user]["version"] >= len(items)  # each event raised the version; the restore reset nothing
