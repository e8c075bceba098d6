"""The streaming job for real: Apache Kafka, PyFlink with Flink's Kafka connector, Ray Serve (CPU).

Each test runs the job as its own process against an embedded broker and a local Serve app, all on
127.0.0.1, and checks what a read_committed consumer sees.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import pytest

from streaming.events import Event
from streaming.job import StreamConfig
from streaming.pipeline import JobProcess, OutputMonitor, latest_checkpoint
from streaming.replay import ReplayConfig, interactions_to_events, replay
from streaming.scoring import covered_events
from streaming.topics import TopicsConfig, ensure_topics
from tests.helpers import send_raw, wait_for

pytestmark = pytest.mark.slow


def _topics() -> TopicsConfig:
    tag = uuid.uuid4().hex[:6]
    return TopicsConfig(events=f"ev-{tag}", user_state=f"st-{tag}", user_scores=f"sc-{tag}", dead_letter=f"dl-{tag}")


def _config(kafka, serve, topics, tmp_path, ml100k, **overrides) -> StreamConfig:
    return StreamConfig(bootstrap_servers=kafka, serve_url=serve.url, known_items=list(ml100k.items.item_id),
                        topics=topics, checkpoint_dir=str(tmp_path / "checkpoints"),
                        group_id=f"job-{topics.events}", transactional_id_prefix=f"tx-{topics.events}",
                        **overrides)


def _check_exact_outputs(monitor: OutputMonitor, events: list[Event]) -> None:
    """Every event's effect exactly once: one state and one scores record per event, versions 1..n per user."""
    per_user: dict[str, list[Event]] = defaultdict(list)
    version_of: dict[str, int] = {}
    for event in events:
        per_user[event.user_id].append(event)
        version_of[event.event_id] = len(per_user[event.user_id])
    states = [json.loads(v) for _, v in monitor.records[monitor.topics.user_state]]
    scores = [json.loads(v) for _, v in monitor.records[monitor.topics.user_scores]]
    assert len(states) == len(events)
    covered = [event_id for record in scores for event_id, _ in covered_events(record)]
    assert sorted(covered) == sorted(e.event_id for e in events)  # each event answered exactly once
    for record in scores:  # a record is scored on the newest state of the events it covers
        newest = max(version_of[event_id] for event_id, _ in covered_events(record))
        assert record["version"] == newest
    versions: dict[str, list[int]] = defaultdict(list)
    for state in states:
        versions[state["user_id"]].append(state["version"])
    for user, user_events in per_user.items():
        assert versions[user] == list(range(1, len(user_events) + 1)), user
        final = monitor.latest_state[user]
        assert final["recent_items"] == [e.item_id for e in user_events][-len(final["recent_items"]):]
        assert final["last_event_id"] == user_events[-1].event_id
    for record in scores:
        assert len(record["items"]) == 10 and record["model_version"]


def test_events_to_states_and_scores_with_dead_letters(kafka, serve, ml100k, tmp_path):
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=1500)
    bad = {
        "bad_json": b"{oops",
        "missing_field": json.dumps({"event_id": "x1", "user_id": "1", "action": "view", "ts": 1}).encode(),
        "wrong_type": json.dumps({"event_id": "x2", "user_id": "1", "item_id": "5", "action": "view",
                                  "ts": "soon"}).encode(),
        "unknown_item": json.dumps({"event_id": "x3", "user_id": "1", "item_id": "nope", "action": "view",
                                    "ts": 1}).encode(),
        "oversized": b'{"pad":"' + b"x" * 10_000 + b'"}',
        "not_utf8": b'{"event_id": "\xff\xfe"}',
    }
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(_config(kafka, serve, topics, tmp_path, ml100k, mode="transactional",
                             checkpoint_interval_ms=1000), tmp_path).start()
    try:
        send_raw(kafka, topics.events, list(bad.values()))
        replay(events, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events) and monitor.snapshot().dead_letters >= len(bad),
                  job, 240, "all scores and dead letters")
        time.sleep(3)  # a later checkpoint must not add anything
    finally:
        job.stop()
        monitor.stop()
    _check_exact_outputs(monitor, events)
    dead = {json.loads(v)["reason"]: (k, json.loads(v)) for k, v in monitor.records[topics.dead_letter]}
    assert set(dead) == set(bad)
    for reason, (key, letter) in dead.items():
        import base64

        assert base64.b64decode(letter["original_b64"]) == bad[reason]
        assert letter["detail"] and key.startswith(b"bad-")


def test_killed_job_restores_from_checkpoint_exactly_once(kafka, serve, ml100k, tmp_path):
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=3000)
    cfg = _config(kafka, serve, topics, tmp_path, ml100k, mode="transactional", checkpoint_interval_ms=1000)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path / "first").start()
    try:
        replay(events[:1500], kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= 300 and latest_checkpoint(cfg.checkpoint_dir) is not None,
                  job, 240, "first checkpointed outputs")
        replay(events[1500:2000], kafka, topics.events, ReplayConfig(rate=None))
        job.kill()  # SIGKILL mid-stream: no clean cancel, no final checkpoint
        checkpoint = latest_checkpoint(cfg.checkpoint_dir)
        assert checkpoint is not None
        replay(events[2000:], kafka, topics.events, ReplayConfig(rate=None))
        cfg.restore_from = str(checkpoint)
        job = JobProcess(cfg, tmp_path / "second").start()
        wait_for(lambda: monitor.snapshot().scores >= len(events), job, 240, "all scores after restore")
        time.sleep(3)
    finally:
        job.stop()
        monitor.stop()
    _check_exact_outputs(monitor, events)
    assert monitor.snapshot().version_regressions == 0


def test_killed_serve_replica_loses_nothing(kafka, serve, ml100k, tmp_path):
    import ray

    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=2000)
    cfg = _config(kafka, serve, topics, tmp_path, ml100k, mode="low-latency", serve_timeout_s=2.0,
                  serve_retries=1, retry_backoff_ms=300)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path).start()
    try:
        replay(events[:800], kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= 100, job, 240, "first scores")
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "Ranker" in a["name"]]
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        replay(events[800:], kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events), job, 240, "all scores after the replica kill")
        time.sleep(2)
    finally:
        job.stop()
        monitor.stop()
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    covered = {event_id for record in scores for event_id, _ in covered_events(record)}
    assert covered == {e.event_id for e in events}  # at-least-once: none lost
