"""The async-io job design (streaming/job_async.py): its pieces without the engines, then the job for real.

The integration test runs the job as its own process (process mode, Flink's async I/O) against an
embedded Apache Kafka and a local Ray Serve Ranker, all on 127.0.0.1, and checks what a
read_committed consumer sees.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import defaultdict

import pytest

from inference.serve.client import ServeUnavailable
from streaming.job import StreamConfig
from streaming.job_async import MicroBatcher, surface_async_errors_at_bundle_end
from streaming.pipeline import JobProcess, OutputMonitor
from streaming.replay import ReplayConfig, interactions_to_events, replay
from streaming.topics import TopicsConfig, ensure_topics
from tests.helpers import send_raw, wait_for


def _fake_ranker(calls: list[int], failures: int = 0):
    async def call(users):
        calls.append(len(users))
        if len(calls) <= failures:
            raise ServeUnavailable("Ranker down")
        await asyncio.sleep(0.001)
        return {"model_version": "v1", "results": [{"user_id": u["user_id"], "items": ["1"], "scores": [0.5]}
                                                   for u in users]}
    return call


def test_micro_batcher_coalesces_concurrent_requests_by_size_and_time():
    calls: list[int] = []

    async def run():
        batcher = MicroBatcher(_fake_ranker(calls), batch_size=4, max_wait_s=0.02)
        results = await asyncio.gather(*(batcher.score({"user_id": str(n)}) for n in range(10)))
        return batcher, results

    batcher, results = asyncio.run(run())
    assert calls == [4, 4, 2]  # two full batches at once, the rest after max_wait
    assert [result["user_id"] for result, _ in results] == [str(n) for n in range(10)]
    assert {version for _, version in results} == {"v1"}
    assert (batcher.calls, batcher.scored, batcher.failures, batcher.in_flight) == (3, 10, 0, 0)


def test_micro_batcher_retries_failed_calls_and_fails_on_rejection():
    calls: list[int] = []

    async def run():
        batcher = MicroBatcher(_fake_ranker(calls, failures=2), batch_size=8, max_wait_s=0.01, backoff_s=0.01)
        return batcher, await asyncio.gather(*(batcher.score({"user_id": str(n)}) for n in range(3)))

    batcher, results = asyncio.run(run())
    assert calls == [3, 3, 3] and batcher.failures == 2 and len(results) == 3

    async def rejected(users):
        raise ValueError("Serve rejected the request")

    async def run_rejected():
        return await MicroBatcher(rejected, batch_size=8, max_wait_s=0.01).score({"user_id": "1"})

    with pytest.raises(ValueError, match="rejected"):
        asyncio.run(run_rejected())


def test_micro_batcher_deadline_fails_the_request_and_stops_retrying():
    calls: list[int] = []

    async def run():
        batcher = MicroBatcher(_fake_ranker(calls, failures=10**6), batch_size=8, max_wait_s=0.01, backoff_s=0.01)
        with pytest.raises(TimeoutError):
            await batcher.score({"user_id": "1"}, timeout_s=0.1)
        attempts = len(calls)
        await asyncio.sleep(0.1)  # nobody waits any more: the batch is dropped, not retried
        return batcher, attempts

    batcher, attempts = asyncio.run(run())
    assert attempts >= 2 and len(calls) <= attempts + 1 and batcher.in_flight == 0


def test_async_timeout_fails_the_bundle_before_a_checkpoint():
    """PyFlink 2.3 completes a timed-out element with no output; the guard makes the bundle's end raise."""
    from pyflink.fn_execution.datastream.process.async_function.operation import AsyncOperation, ResultHandler
    from pyflink.fn_execution.datastream.process.async_function.queue import UnorderedStreamElementQueue

    class Output:
        def __init__(self):
            self.rows = []

        def process_outputs(self, windowed_value, results):
            self.rows.extend(results)

    def timeout(record):
        raise TimeoutError(f"no scores for {record}")

    op = AsyncOperation.__new__(AsyncOperation)  # just the parts the end of a bundle uses
    op._exception = None
    op._queue = UnorderedStreamElementQueue(4, op._raise_exception_if_exists)
    entry = op._queue.put(object(), 0, 0, "event-1")
    ResultHandler("RankerScoring", timeout, op._mark_exception, "event-1", entry)._timer_triggered()
    output = Output()
    op._queue.emit_completed_element(output)  # what PyFlink's emitter thread does next
    assert output.rows == [] and op._queue.is_empty()  # the event left the operator with no output
    surface_async_errors_at_bundle_end()
    surface_async_errors_at_bundle_end()  # idempotent
    AsyncOperation._wait_for_in_flight_inputs_finished.__wrapped__(op)  # PyFlink alone: the bundle ends cleanly
    with pytest.raises(Exception, match="no scores for event-1"):
        op._wait_for_in_flight_inputs_finished()


@pytest.mark.slow
def test_async_io_job_scores_every_event_once_with_dead_letters(kafka, serve, ml100k, tmp_path):
    tag = uuid.uuid4().hex[:6]
    topics = TopicsConfig(events=f"ev-{tag}", user_state=f"st-{tag}", user_scores=f"sc-{tag}", dead_letter=f"dl-{tag}")
    ensure_topics(kafka, topics)
    events = interactions_to_events(ml100k.interactions, limit=1000)
    bad = {
        "bad_json": b"{oops",
        "missing_field": json.dumps({"event_id": "x1", "user_id": "1", "action": "view", "ts": 1}).encode(),
        "unknown_item": json.dumps({"event_id": "x3", "user_id": "1", "item_id": "nope", "action": "view",
                                    "ts": 1}).encode(),
    }
    cfg = StreamConfig(bootstrap_servers=kafka, serve_url=serve.url, known_items=list(ml100k.items.item_id),
                       topics=topics, checkpoint_dir=str(tmp_path / "checkpoints"), group_id=f"job-{tag}",
                       transactional_id_prefix=f"tx-{tag}", mode="transactional", checkpoint_interval_ms=1000,
                       design="async-io", batch_size=64, async_capacity=256, async_timeout_ms=30_000)
    monitor = OutputMonitor(kafka, topics, keep_records=True).start()
    job = JobProcess(cfg, tmp_path).start()
    try:
        send_raw(kafka, topics.events, list(bad.values()))
        replay(events, kafka, topics.events, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= len(events) and monitor.snapshot().dead_letters >= len(bad),
                  job, 180, "all scores and dead letters")
        time.sleep(3)  # a later checkpoint must not add anything
    finally:
        job.stop()
        monitor.stop()

    states = [json.loads(v) for _, v in monitor.records[topics.user_state]]
    scores = [json.loads(v) for _, v in monitor.records[topics.user_scores]]
    assert len(states) == len(events) and len(scores) == len(events)
    assert sorted(s["event_id"] for s in scores) == sorted(e.event_id for e in events)
    per_user: dict[str, list] = defaultdict(list)
    for event in events:
        per_user[event.user_id].append(event)
    versions: dict[str, list[int]] = defaultdict(list)
    for state in states:
        versions[state["user_id"]].append(state["version"])
    for user, user_events in per_user.items():
        assert versions[user] == list(range(1, len(user_events) + 1)), user  # states leave in order
        assert monitor.latest_state[user]["last_event_id"] == user_events[-1].event_id
    by_event = {e.event_id: e for e in events}
    for record in scores:
        assert len(record["items"]) == 10 and record["model_version"]
        assert record["user_id"] == by_event[record["event_id"]].user_id
    dead = {json.loads(v)["reason"]: (k, json.loads(v)) for k, v in monitor.records[topics.dead_letter]}
    assert set(dead) == set(bad)
    for reason, (key, letter) in dead.items():
        assert base64.b64decode(letter["original_b64"]) == bad[reason] and key.startswith(b"bad-")
    emitted = sorted(s["emit_ts"] for s in scores)
    span_s = max((emitted[-1] - emitted[0]) / 1000, 1e-3)
    print(f"\nasync-io: {len(scores)} scores in {span_s:.2f} s from first to last, "
          f"≈ {len(scores) / span_s:.0f} events/s (rough, shared machine)")
