"""The streaming job for real: Apache Kafka, PyFlink with Flink's Kafka connector, Ray Serve (CPU).

Each test runs the job as its own process against an embedded broker and a local Serve app, all on
127.0.0.1, and checks what a read_committed consumer sees.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import defaultdict

import pytest

from monitoring import exported
from monitoring import metrics as names
from streaming.config import StreamConfig
from streaming.events import MAX_EVENT_BYTES, Event
from streaming.pipeline import JobProcess, OutputMonitor, consumer_lag
from streaming.replay import ReplayConfig, interactions_to_events, replay
from streaming.scoring import covered_events
from streaming.topics import TopicsConfig, ensure_topics
from tests.helpers import kill_mid_stream_and_restore, send_raw, wait_for

pytestmark = pytest.mark.slow


def _topics() -> TopicsConfig:
    tag = uuid.uuid4().hex[:6]
    return TopicsConfig(events=f"ev-{tag}", user_state=f"st-{tag}", user_scores=f"sc-{tag}", dead_letter=f"dl-{tag}")


def _config(kafka, serve, topics, tmp_path, ml100k, **overrides) -> StreamConfig:
    settings = {"serve_url": serve.url, **overrides}
    return StreamConfig(bootstrap_servers=kafka, known_items=list(ml100k.items.item_id),
                        topics=topics, checkpoint_dir=str(tmp_path / "checkpoints"),
                        group_id=f"job-{topics.events}", transactional_id_prefix=f"tx-{topics.events}",
                        **settings)


def _check_exact_outputs(monitor: OutputMonitor, events: list[Event], every_event: bool) -> None:
    """Every event's effect exactly once: each event answered by one scores record; with a state record per
    event, versions 1..n per user; with states sent with the scores, versions that never go down and end
    at n (a restore may send the same version again, never an older one)."""
    per_user: dict[str, list[Event]] = defaultdict(list)
    version_of: dict[str, int] = {}
    for event in events:
        per_user[event.user_id].append(event)
        version_of[event.event_id] = len(per_user[event.user_id])
    states = [json.loads(v) for _, v in monitor.records[monitor.topics.user_state]]
    scores = [json.loads(v) for _, v in monitor.records[monitor.topics.user_scores]]
    if every_event:
        assert len(states) == len(events)
    else:
        assert len(states) < len(events)  # the newest state per user and call, not one per event
    covered = [event_id for record in scores for event_id, _ in covered_events(record)]
    assert sorted(covered) == sorted(e.event_id for e in events)  # each event answered exactly once
    for record in scores:  # a record is scored on the newest state of the events it covers
        newest = max(version_of[event_id] for event_id, _ in covered_events(record))
        assert record["version"] == newest
    versions: dict[str, list[int]] = defaultdict(list)
    for state in states:
        versions[state["user_id"]].append(state["version"])
    for user, user_events in per_user.items():
        if every_event:
            assert versions[user] == list(range(1, len(user_events) + 1)), user
        else:
            assert versions[user] == sorted(versions[user]) and versions[user][-1] == len(user_events), user
        final = monitor.latest_state[user]
        assert final["recent_items"] == [e.item_id for e in user_events][-len(final["recent_items"]):]
        assert final["last_event_id"] == user_events[-1].event_id
    for record in scores:
        assert len(record["items"]) == 10 and record["model_version"]


def _valid(event_id: str, **changes) -> bytes:
    return json.dumps({"event_id": event_id, "user_id": "1", "item_id": "5", "action": "view", "ts": 1,
                       **changes}).encode()


# One of each documented malformed kind, then the inputs that once stopped the job for good or would
# break the state or the sink (streaming/events.py): (expected reason, raw value)
BAD = [
    ("bad_json", b"{oops"),
    ("missing_field", json.dumps({"event_id": "x1", "user_id": "1", "action": "view", "ts": 1}).encode()),
    ("wrong_type", _valid("x2", ts="soon")),
    ("unknown_item", _valid("x3", item_id="nope")),
    ("oversized", b'{"pad":"' + b"x" * 10_000 + b'"}'),
    ("not_utf8", b'{"event_id": "\xff\xfe"}'),
    ("bad_json", b"[" * 5_000),  # 5 KB of nesting: RecursionError in json.loads
    ("bad_json", b'{"ts": ' + b"9" * 5_000 + b"}"),  # an int over Python's 4,300-digit limit: ValueError
    ("bad_json", _valid("x4").replace(b'"ts": 1', b'"ts": 1, "value": NaN')),
    ("bad_value", _valid("x5", value=10**400)),  # an int no float can hold
    ("bad_value", _valid("\ud800")),  # a lone surrogate: no UTF-8 Kafka key can carry it
    ("bad_value", _valid("x6", ts=2**64)),  # beyond a Java long
    ("bad_value", _valid("x7", user_id="u" * 5_000)),  # would bloat the user's state
    ("bad_json", b""),
    ("oversized", b'{"pad":"' + b"y" * 900_000 + b'"}'),  # the letter keeps 8 KB of it, not 1.2 MB of base64
]


def test_hostile_and_malformed_events_never_stop_the_job(kafka, serve, ml100k, tmp_path):
    """Every bad input ends as a dead letter with its reason, the valid events after them all come through,
    and the job never restarts (read from Flink's own restart counter)."""
    import hashlib

    from kafka import KafkaProducer

    from inference.serve.local import free_port
    from tests.helpers import scrape

    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=1500)
    metrics_port = free_port()
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(_config(kafka, serve, topics, tmp_path, ml100k, mode="transactional",
                             checkpoint_interval_ms=1000, metrics_port=metrics_port, state_records="every-event"),
                     tmp_path).start()
    huge_key = b"k" * 100_000
    try:
        send_raw(kafka, topics.events, [raw for _, raw in BAD])
        producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
        producer.send(topics.events, key=huge_key, value=b"{oops").get(30)
        producer.close()
        replay(events, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events)
                 and monitor.snapshot().dead_letters >= len(BAD) + 1, job, 240, "all scores and dead letters")
        # the source commits the group's offsets on checkpoints (what `consumer_lag` monitoring reads)
        wait_for(lambda: consumer_lag(kafka, topics.events, f"job-{topics.events}") == 0, job, 60,
                 "the job's committed offsets to reach the end of the events topic")
        time.sleep(3)  # a later checkpoint must not add anything
        metrics = scrape(metrics_port)
    finally:
        job.stop()
        monitor.stop()
    assert metrics.get("flink_jobmanager_job_numRestarts") == 0, sorted(metrics)[:20]
    _check_exact_outputs(monitor, events, every_event=True)
    letters = {key: json.loads(value) for key, value in monitor.records[topics.dead_letter]}
    assert len(letters) == len(BAD) + 1
    for n, (reason, raw) in enumerate(BAD):
        letter = letters[f"bad-{n}".encode()]
        assert letter["reason"] == reason, (n, letter["detail"])
        assert letter["original_size"] == len(raw) and letter["original_sha256"] == hashlib.sha256(raw).hexdigest()
        assert base64.b64decode(letter["original_b64"]) == raw[:MAX_EVENT_BYTES] and letter["detail"]
        assert letter["truncated"] == (len(raw) > MAX_EVENT_BYTES)
    assert letters[b"sha256:" + hashlib.sha256(huge_key).hexdigest().encode()]["reason"] == "bad_json"


def test_killed_job_restores_from_checkpoint_exactly_once(kafka, serve, ml100k, tmp_path):
    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=3000)
    cfg = _config(kafka, serve, topics, tmp_path, ml100k, mode="transactional", checkpoint_interval_ms=1000)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    kill_mid_stream_and_restore(cfg, kafka, events, monitor, tmp_path, first=1500, before_kill=2000)
    _check_exact_outputs(monitor, events, every_event=False)  # the default: states go out with the scores
    assert monitor.snapshot().version_regressions == 0


def test_killed_serve_replica_loses_nothing(kafka, serve, ml100k, tmp_path):
    import ray

    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=2000)
    cfg = _config(kafka, serve, topics, tmp_path, ml100k, mode="low-latency", serve_timeout_s=2.0,
                  retry_backoff_ms=300)
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


def test_serve_rejecting_one_user_and_serve_down_for_a_while(kafka, serve, ml100k, tmp_path):
    """Through a fault injector in front of the real Serve: a user Serve refuses (HTTP 400) is dead-lettered
    with its events and everyone else is scored; then Serve refuses connections for a while: nothing is lost,
    the job never restarts, and the pending requests stay within `max_pending` (backpressure)."""
    from inference.serve.local import free_port
    from tests.helpers import FaultyProxy, scrape

    topics = _topics()
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=3000)
    first, second = events[:1000], events[1000:]
    rejected = first[0].user_id
    proxy = FaultyProxy(serve.url).start()
    proxy.reject_users = {rejected}
    metrics_port = free_port()
    cfg = _config(kafka, serve, topics, tmp_path, ml100k, mode="low-latency", serve_url=proxy.url,
                  batch_size=64, max_pending=256, retry_backoff_ms=100, retry_max_backoff_ms=1000,
                  metrics_port=metrics_port)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path).start()
    pending_seen: list[float] = []
    try:
        replay(first, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores + monitor.snapshot().dead_letters >= len(first),
                 job, 240, "scores or dead letters for the first events")
        proxy.reject_users = set()
        with proxy.down():
            replay(second, kafka, topics.events, ReplayConfig(rate=None))
            down_until = time.monotonic() + 12
            while time.monotonic() < down_until:
                pending_seen.append(scrape(metrics_port).get(exported.flink(names.PENDING_SCORES), float("nan")))
                assert job.running(), job.log_tail()
                time.sleep(0.5)
        wait_for(lambda: monitor.snapshot().scores + monitor.snapshot().dead_letters >= len(events),
                 job, 240, "every event answered after Serve came back")
        time.sleep(2)
        metrics = scrape(metrics_port)
    finally:
        job.stop()
        monitor.stop()
        proxy.stop()
    assert metrics.get("flink_jobmanager_job_numRestarts") == 0
    letters = [json.loads(v) for _, v in monitor.records[topics.dead_letter]]
    assert letters and all(letter["reason"] == "unscorable" and "HTTP 400" in letter["detail"] for letter in letters)
    dead_events = sorted(event_id for letter in letters for event_id in letter["event_ids"])
    assert dead_events == sorted(e.event_id for e in first if e.user_id == rejected)
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    covered = {event_id for record in scores for event_id, _ in covered_events(record)}
    assert covered == {e.event_id for e in events} - set(dead_events)  # at-least-once: nothing else lost
    seen = [p for p in pending_seen if p == p]
    assert seen and max(seen) <= cfg.max_pending * cfg.shards, pending_seen
    assert max(seen) > cfg.batch_size  # the outage did hold requests back (the bound was exercised)
