"""A real Prometheus scrapes the running pipeline: the key series exist and the rules evaluate on them.

Runs the whole pipeline (embedded Kafka, Ray Serve, the Flink job with its Prometheus reporter, a replay
plus some malformed events), scrapes Flink's reporter and Ray's metrics agent every second with the
project's rules loaded, then queries Prometheus and plots the main dashboard from it
(set REASEQ_DASHBOARD_PNG=docs/dashboard-pipeline.png to keep the picture).
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import time
from pathlib import Path

import pytest

from deploy.validate import tool
from inference.serve.local import free_port
from monitoring import exported
from monitoring import metrics as names
from monitoring.dashboards import all_dashboards
from monitoring.local_prometheus import LocalPrometheus
from monitoring.render import render
from streaming.runner import PipelineOptions, run_pipeline
from tests.helpers import send_raw

pytestmark = pytest.mark.slow

EVENTS = 3000
BAD = 120  # malformed events: 4% of the stream, over the dead-letter alert's 1%
# series the running pipeline must export (project metrics as exported, and the engines' own)
KEY_SERIES = (
    *(exported.flink(n) for n in (names.EVENTS_IN, names.STATES_OUT, names.SCORES_OUT, names.EVENT_TO_SCORE_MS,
                                  names.INFERENCE_LATENCY_MS, names.SCORE_BATCHES, names.SCORE_BATCH_SIZE,
                                  names.PENDING_SCORES, names.INFERENCE_ERRORS, names.LLM_CALLS)),
    exported.flink(names.DEAD_LETTERS) + "_bad_json",
    *exported.serve(names.RANKER_BATCHES), *exported.serve(names.RANKER_USERS_SCORED),
    *exported.serve(names.RANKER_BATCH_SECONDS), *exported.serve(names.RANKER_BATCH_REQUESTS),
    *sorted(exported.engine_series(local_only=True) - {"up"}),
)


def _ray_metrics_port() -> int | None:
    import ray

    node = ray._private.worker.global_worker.node if ray.is_initialized() else None
    return getattr(node, "metrics_export_port", None)


def test_prometheus_scrapes_the_pipeline_and_rules_evaluate(tmp_path, ml100k_sequences):
    from ranking.experiment import train_and_save
    from tests.helpers import TINY_RANKER

    artifact = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=tmp_path / "artifacts").artifact
    flink_port = free_port()
    opts = PipelineOptions(artifact=str(artifact.path), rate=200.0, limit=EVENTS, work_dir=tmp_path / "work",
                           metrics_port=flink_port, show_users=0,
                           linger_s=12.0)  # Ray exports every ~10 s: rates over its histograms need two samples
    output = io.StringIO()
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_pipeline(opts, out=output)), daemon=True)
    runner.start()
    ray_port = None
    while ray_port is None and runner.is_alive():
        time.sleep(0.5)
        ray_port = _ray_metrics_port()
    assert ray_port, output.getvalue()[-3000:]
    targets = {"flink": f"127.0.0.1:{flink_port}", "ray": f"127.0.0.1:{ray_port}"}
    with LocalPrometheus(tool("prometheus"), targets, tmp_path / "prometheus") as prom:
        sent_bad = False
        start = time.time()
        last_up = start
        while runner.is_alive():
            time.sleep(1)
            match = re.search(r"job running after .*\n", output.getvalue())
            # a counter whose first scraped sample already holds the burst has no increase to rate over:
            # send the malformed events only once Prometheus has scraped the dead-letter counters at zero
            if match and not sent_bad and prom.query("reaseq:dead_letters:total == 0"):
                bootstrap = re.search(r"Kafka (\S+) \|", output.getvalue()).group(1)
                send_raw(bootstrap, "reaseq.events", [b"{not json"] * BAD)
                sent_bad = True
            if prom.query('up{job="flink"} == 1'):
                last_up = time.time()
        runner.join()
        end = last_up
        time.sleep(2)  # the last rule evaluations
        assert sent_bad and result.get("scores", 0) >= EVENTS - BAD, output.getvalue()[-3000:]

        def over_run(expr: str) -> float:
            found = prom.query(f"max(max_over_time(({expr})[{int(end - start) + 30}s:1s]))", at=end)
            return float(found[0]["value"][1]) if found else float("nan")

        missing = [s for s in KEY_SERIES if not prom.query(f"count(last_over_time({s}[{int(end - start) + 30}s]))",
                                                            at=end)]
        assert not missing, f"series not scraped: {missing}"
        assert over_run(exported.flink(names.EVENTS_IN)) >= EVENTS
        assert over_run(exported.flink(names.SCORES_OUT)) >= EVENTS - BAD
        assert over_run("reaseq:dead_letters:total") == BAD
        assert over_run("reaseq:events_in:rate1m") > 10
        assert over_run("reaseq:event_to_score_ms:p99_5m") > 0
        assert over_run("reaseq:ranker_batch_seconds:p99_5m") > 0
        assert over_run("flink_jobmanager_job_numberOfCompletedCheckpoints") >= 1
        # every rule evaluated without error; the dead-letter alert saw 4% and went pending
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert len(rules) >= 20
        broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok" or r.get("lastError")]
        assert not broken, broken
        assert over_run("reaseq:dead_letter_ratio:rate5m") > 0.01
        assert over_run('ALERTS{alertname="ReaseqDeadLetterRateHigh"}') == 1
        # the LLM-call series was scraped and stayed 0 (NaN, never scraped, fails), so the alert never fired;
        # monitoring/rules/reaseq.rules.test.yml shows it firing when the series grows
        assert over_run(exported.flink(names.LLM_CALLS)) == 0
        assert math.isnan(over_run('ALERTS{alertname="ReaseqStreamCallsLLM"}'))

        out = Path(os.environ.get("REASEQ_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        plotted = render(prom.url, all_dashboards()["reaseq-pipeline"], start, end, out)
    assert out.stat().st_size > 20_000
    for title in ("Events in, states and scores out", "Event → score latency", "Ranker batches and users scored",
                  "Dead letters by reason (since start)", "Checkpoints"):
        assert plotted[title] > 0, (title, plotted)
