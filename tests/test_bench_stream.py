"""The pure parts of `reaseq bench stream`: perf-tool output parsing, medians, ratios, padding, the table."""

from __future__ import annotations

import json
import os

import pytest

from bench.stream import (
    encode_event,
    markdown_table,
    median,
    parse_consumer_perf,
    parse_job_settings,
    parse_producer_perf,
    percentiles,
    rate_between,
    ratio,
    summarize,
    take_events,
    write_result,
)
from streaming.events import Event, parse_event

PRODUCER_OUTPUT = """\
Option --producer-props has been deprecated and will be removed in a future version. Use --command-property instead.
14001 records sent, 2799.6 records/sec (0.53 MB/sec), 1234.5 ms avg latency, 1794.0 ms max latency.
20000 records sent, 5415.651232 records/sec (1.03 MB/sec), 427.36 ms avg latency, 1794.00 ms max latency, \
485 ms 50th, 616 ms 95th, 633 ms 99th, 722 ms 99.9th.
"""

CONSUMER_OUTPUT = """\
Warning: --messages is deprecated. Use --num-records instead.
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, \
fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-22 20:46:11:423, 2026-11-22 20:46:15:961, 3.8147, 0.8406, 20000, 4407.2279, 2476, 2062, 1.8500, 9699.3210
"""


def test_parse_producer_perf_takes_the_summary_line():
    parsed = parse_producer_perf(PRODUCER_OUTPUT)
    assert parsed["records"] == 20000
    assert parsed["records_per_s"] == pytest.approx(5415.651232)
    assert parsed["mb_per_s"] == pytest.approx(1.03)
    assert parsed["avg_latency_ms"] == pytest.approx(427.36)
    assert (parsed["p50_ms"], parsed["p95_ms"], parsed["p99_ms"], parsed["p999_ms"]) == (485, 616, 633, 722)


def test_parse_consumer_perf_reads_header_and_row():
    parsed = parse_consumer_perf(CONSUMER_OUTPUT)
    assert parsed["records"] == 20000
    assert parsed["records_per_s"] == pytest.approx(4407.2279)
    assert parsed["fetch_records_per_s"] == pytest.approx(9699.321)
    assert parsed["rebalance_ms"] == 2476


@pytest.mark.parametrize("parse", [parse_producer_perf, parse_consumer_perf])
def test_parsers_reject_output_without_a_result(parse):
    with pytest.raises(ValueError):
        parse("Exception in thread main: org.apache.kafka.common.errors.TimeoutException\n")


def test_median_ratio_percentiles():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None
    assert ratio(3000.0, 12000.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None
    p50, p99 = percentiles(list(range(1, 101)))
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.01)
    assert percentiles([]) == [None, None]


def test_rate_between_skips_the_first_arrival_batch():
    # 100 records visible at once at t=0 (first commit), then 200 more up to t=2 s: 100 events/s
    arrivals = [0] * 100 + [1000] * 100 + [2000] * 100
    assert rate_between(arrivals) == pytest.approx(100.0)
    assert rate_between([5, 5]) is None and rate_between([]) is None


def test_padded_event_has_the_size_and_still_parses():
    event = Event("1-2-3", "1", "2", "rate", 3000, 4.0)
    raw = encode_event(event, 200)
    assert len(raw) == 200
    assert parse_event(raw, {"2"}) == event
    assert encode_event(event, 0) == event.to_json()


def test_take_events_wraps_with_fresh_ids():
    events = [Event(f"e{i}", "1", "2", "rate", i) for i in range(3)]
    taken = take_events(events, 2, 4)
    assert [e.event_id for e in taken] == ["e2", "e0~1", "e1~1", "e2~1"]
    assert len({e.event_id for e in take_events(events, 0, 9)}) == 9


def _fake_result() -> dict:
    result = {
        "machine": "2 CPU threads (Test CPU), torch 2.x", "cpu_count": 2, "loadavg_start": [1.0, 1.0, 1.0],
        "loadavg_end": [2.0, 1.5, 1.0], "model_version": "v1", "command": "reaseq bench stream --runs 2",
        "options": {"events": 20000, "runs": 2, "step_seconds": 20.0, "checkpoint_interval_ms": 2000},
        "kafka": {
            "kafka_python_loop": {"event_bytes": 200, "runs": [{"events_per_s": 10000.0}, {"events_per_s": 12000.0}]},
            "perf_tools": {"version": "4.3.1", "note": "cached"},
            "producer_perf": {"runs": [{"records_per_s": 40000.0}, {"records_per_s": 50000.0}]},
            "consumer_perf": {"runs": [{"records_per_s": 4000.0, "fetch_records_per_s": 9000.0},
                                       {"records_per_s": 5000.0, "fetch_records_per_s": 11000.0}]},
        },
        "pipeline": [{"design": "thread-batched", "mode": "low-latency",
                      "runs": [{"events_per_s": 5000.0, "events_per_s_from_start": 1000.0, "startup_s": 12.0},
                               {"error": "the Flink job exited early"},
                               {"events_per_s": 6000.0, "events_per_s_from_start": 1200.0, "startup_s": 10.0}]}],
        "latency": [{"design": "thread-batched", "mode": "low-latency", "rate": 500.0,
                     "runs": [{"p50_ms": 40.0, "p99_ms": 90.0, "sent_rate": 499.0, "drain_s": 0.1, "kept_up": True},
                              {"p50_ms": 60.0, "p99_ms": 110.0, "sent_rate": 501.0, "drain_s": 0.3,
                               "kept_up": False}]}],
    }
    summarize(result)
    return result


def test_summarize_medians_and_ratios():
    result = _fake_result()
    assert result["kafka"]["kafka_python_loop"]["median_events_per_s"] == 11000.0
    assert result["kafka"]["producer_perf"]["median_records_per_s"] == 45000.0
    assert result["kafka"]["consumer_perf"]["median_fetch_records_per_s"] == 10000.0
    row = result["pipeline"][0]
    assert row["median_events_per_s"] == 5500.0  # the failed run is left out
    assert row["median_startup_s"] == 11.0
    assert row["ratio_to_kafka_python_loop"] == pytest.approx(0.5)
    assert row["ratio_to_producer_perf"] == pytest.approx(5500 / 45000)
    step = result["latency"][0]
    assert (step["median_p50_ms"], step["median_p99_ms"], step["kept_up_runs"]) == (50.0, 100.0, 1)


def test_markdown_table_from_a_fake_result(tmp_path):
    table = markdown_table(_fake_result())
    assert "| kafka-python consume→produce loop (acks=all, 200 B) | 11,000 | 10,000, 12,000 |" in table
    assert "| ProducerPerformance 4.3.1 (200 B, acks=all) | 45,000 |" in table
    assert "| thread-batched | low-latency | 5,500 | 1,100 | 11.0 | 0.50 | 0.12 | 5,000, error, 6,000 |" in table
    assert "| thread-batched | low-latency | 500 | 500 | 50 | 100 | 1/2 | 0.2 | 90, 110 |" in table
    assert "command: `reaseq bench stream --runs 2`" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in lines)
    result = _fake_result()
    path = write_result(result, tmp_path)
    written = json.loads(path.read_text())
    assert path.name == "stream.json" and {k: written[k] for k in result} == result
    assert len(written["git_commit"]) == 40 and isinstance(written["git_dirty"], bool)


def test_results_name_their_commit_or_say_there_is_none(tmp_path):
    import subprocess

    from bench.results import git_state

    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env={**os.environ, **env})
    clean = git_state(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    (tmp_path / "f").write_text("2")
    assert git_state(tmp_path) == {**clean, "git_dirty": True}


def test_markdown_table_without_perf_tools():
    result = _fake_result()
    result["kafka"]["perf_tools"] = {"version": None, "note": "skipped (--no-perf-tools)"}
    result["kafka"]["producer_perf"]["runs"] = []
    result["kafka"]["consumer_perf"]["runs"] = []
    summarize(result)
    table = markdown_table(result)
    assert "skipped (--no-perf-tools)" in table
    assert "| 1.00 |" not in table and result["pipeline"][0]["ratio_to_producer_perf"] is None


def test_job_settings_are_typed_like_the_config():
    assert parse_job_settings(["batch_size=256", "serve_timeout_s=2.5", "starting_offsets=latest"]) == {
        "batch_size": 256, "serve_timeout_s": 2.5, "starting_offsets": "latest"}
    with pytest.raises(ValueError):
        parse_job_settings(["no_such_field=1"])
    with pytest.raises(ValueError):
        parse_job_settings(["batch_size"])


def test_noop_ranker_answers_the_ranker_protocol_the_job_checks():
    from bench.stream import NoopRanker
    from inference.serve.client import RankerClient

    with NoopRanker() as noop:
        assert noop.url.startswith("http://127.0.0.1:")
        client = RankerClient(noop.url, retries=0)
        reply = client.score([{"user_id": "7", "recent_items": ["1"]}, {"user_id": "8"}], top_k=10)
        assert client.probe()
    assert reply["model_version"] == "noop" and [r["user_id"] for r in reply["results"]] == ["7", "8"]
    assert all(len(r["items"]) == len(r["scores"]) == 10 for r in reply["results"])


def test_cpu_by_role_counts_the_job_tree_and_per_event_us_divides_by_events():
    import subprocess
    import sys
    import time

    from bench.cpu import ROLES, cpu_by_role, per_event_us, role_of

    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    job = subprocess.Popen([sys.executable, "-c", spin])
    try:
        before = cpu_by_role(job.pid)
        time.sleep(2.0)
        after = cpu_by_role(job.pid)
    finally:
        job.kill()
        job.wait()
    assert set(before) == set(ROLES) and after["job"] - before["job"] >= 0.2
    assert per_event_us({r: 0.0 for r in ROLES}, {**{r: 0.0 for r in ROLES}, "job": 0.5}, 1000)["job"] == 500.0
    assert role_of("ray::ServeReplica:ranker") == "serve" and role_of("java -cp x kafka.Kafka s.properties") == "kafka"


def test_python_stage_costs_time_the_jobs_own_functions_on_real_events(ml100k):
    from bench.stages import python_stage_costs
    from streaming.replay import interactions_to_events

    events = interactions_to_events(ml100k.interactions, limit=300)
    costs = python_stage_costs([e.to_json() for e in events], frozenset(ml100k.items.item_id), repeats=1)
    assert set(costs) == {"parse", "state", "owed_scores", "scoring_bookkeeping"}
    assert all(0 < v < 10_000 for v in costs.values())


def test_profile_samples_go_to_the_innermost_component_named():
    from bench.jvm_profile import component_of, components

    python_calls_state = ("java/lang/Thread.run;org/apache/flink/streaming/runtime/tasks/StreamTask.invoke;"
                          "pemja/core/object/PyIterator.next;_PyEval_EvalFrameDefault;"
                          "org/apache/flink/runtime/state/heap/HeapMapState.put")
    assert component_of(python_calls_state) == "keyed state"
    assert component_of("java/lang/Thread.run;pemja/core/object/PyIterator.next;_PyEval_EvalFrameDefault") \
        .startswith("Python")
    collapsed = f"{python_calls_state} 3\njava/lang/Thread.run;KafkaWriter.write 1\n"
    assert components(collapsed) == {"keyed state": 0.75, "Kafka sink (producer)": 0.25}
