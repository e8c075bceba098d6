"""The whole pipeline on one machine: Kafka, Ray Serve, the Flink job, a replay, live progress, results.

`reaseq stream run` and `make demo` call `run_pipeline`. Everything listens on 127.0.0.1 and is
stopped on the way out, also on Ctrl-C. With `bootstrap_servers` set, a user's own Kafka is used and
no broker is started.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.config import StreamConfig
from streaming.pipeline import JobProcess, MonitorStats, OutputMonitor, consumer_lag, latest_checkpoint
from streaming.topics import TopicsConfig, ensure_topics


@dataclass
class PipelineOptions:
    """What to run: dataset events at a rate, in one of the two output modes."""

    artifact: str = "ml-100k"
    rate: float = 500.0
    limit: int | None = None
    mode: str = "low-latency"
    bootstrap_servers: str | None = None
    checkpoint_interval_ms: int = 2000
    work_dir: Path | None = None
    settle_timeout_s: float = 120.0
    show_users: int = 3
    metrics_port: int | None = None  # Flink's Prometheus reporter; None = off
    linger_s: float = 0.0  # keep everything running this long after the last score (lets scrapers catch up)
    behavior_artifact: str | None = None  # serve the BehaviorReasoner too; the job refreshes inferences nearline
    job_overrides: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def kafka_cluster(bootstrap_servers: str | None, topics: TopicsConfig) -> Iterator[str]:
    """The user's Kafka, or an embedded one started (and stopped) here; topics ensured either way."""
    if bootstrap_servers:
        ensure_topics(bootstrap_servers, topics)
        yield bootstrap_servers
        return
    from streaming.kafka_broker import EmbeddedKafka

    with EmbeddedKafka() as kafka:
        ensure_topics(kafka.bootstrap_servers, topics)
        yield kafka.bootstrap_servers


def progress_line(sent: int, total: int, stats: MonitorStats, lag: int | None, elapsed: float) -> str:
    p50, p99 = stats.latency_percentiles()
    lag_text = "?" if lag is None else f"{lag:,}"
    return (f"\r[{elapsed:6.1f}s] events in {sent:,}/{total:,} | states {stats.states:,} | "
            f"scores {stats.scores:,} | dead letters {stats.dead_letters:,} | lag {lag_text} | "
            f"event→score p50 {p50:.0f} ms p99 {p99:.0f} ms{_refresh_text(stats)}   ")


def _refresh_text(stats: MonitorStats) -> str:
    """The nearline refresh part of the live line (empty while nothing was refreshed)."""
    if not stats.refreshes:
        return ""
    return f" | refreshes {stats.refreshes:,}, staleness p99 {stats.staleness_p99():.0f} events"


def run_pipeline(opts: PipelineOptions, out=sys.stdout) -> dict[str, Any]:
    """Start everything, replay the events, wait until every event has its scores, report, stop."""
    from inference.serve.local import LocalServe
    from ranking.data import load_dataset
    from streaming.replay import ReplayConfig, interactions_to_events, replay

    dataset = load_dataset("ml-100k")
    titles = dataset.title_of()
    events = interactions_to_events(dataset.interactions, opts.limit)
    topics = TopicsConfig()
    work = Path(opts.work_dir or tempfile.mkdtemp(prefix="reaseq-pipeline-"))
    started = time.monotonic()
    print(f"starting Kafka, Ray Serve and the Flink job (work dir {work}) …", file=out, flush=True)
    with (kafka_cluster(opts.bootstrap_servers, topics) as bootstrap,
          LocalServe(opts.artifact, behavior_artifact=opts.behavior_artifact) as served):
        cfg = StreamConfig(bootstrap_servers=bootstrap, serve_url=served.url, known_items=list(dataset.items.item_id),
                           topics=topics, mode=opts.mode, checkpoint_interval_ms=opts.checkpoint_interval_ms,
                           checkpoint_dir=str(work / "checkpoints"), metrics_port=opts.metrics_port,
                           behavior_url=served.behavior_url or None,
                           **opts.job_overrides)
        monitor = OutputMonitor(bootstrap, topics).start()
        job = JobProcess(cfg, work).start()
        try:
            print(f"Kafka {bootstrap} | Serve {served.url} | job log {job.log_path}", file=out, flush=True)
            if opts.metrics_port:
                print(f"Flink metrics (Prometheus): http://127.0.0.1:{opts.metrics_port}/metrics", file=out, flush=True)
            # replay once the job's tasks run (Flink checkpoints as soon as they start): start-up time
            # would otherwise show up as event→score latency
            ready_by = time.monotonic() + opts.settle_timeout_s
            while latest_checkpoint(cfg.checkpoint_dir) is None and time.monotonic() < ready_by:
                if not job.running():
                    raise RuntimeError(f"the Flink job exited early:\n{job.log_tail()}")
                time.sleep(0.5)
            print(f"job running after {time.monotonic() - started:.0f} s; replaying {len(events):,} events",
                  file=out, flush=True)
            sent = [0]
            replay_errors: list[BaseException] = []

            def produce() -> None:
                try:
                    sent[0] = replay(events, bootstrap, topics.events, ReplayConfig(rate=opts.rate),
                                     lambda n: sent.__setitem__(0, n))
                except BaseException as error:  # reported in the summary: the run must not look complete
                    replay_errors.append(error)

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            deadline = None
            lag: int | None = None
            last_lag = 0.0
            while True:
                time.sleep(0.5)
                if not job.running():
                    raise RuntimeError(f"the Flink job exited early:\n{job.log_tail()}")
                stats = monitor.snapshot()
                if time.monotonic() - last_lag > 2:
                    lag, last_lag = consumer_lag(bootstrap, topics.events, cfg.group_id), time.monotonic()
                print(progress_line(sent[0], len(events), stats, lag, time.monotonic() - started),
                      end="", file=out, flush=True)
                if not producer.is_alive():
                    deadline = deadline or time.monotonic() + opts.settle_timeout_s
                    if stats.scores + stats.dead_letters >= len(events) or time.monotonic() > deadline:
                        break
            print(file=out)
            time.sleep(opts.linger_s)
        finally:
            job.stop()
            monitor.stop()
        stats = monitor.snapshot()
        p50, p99 = stats.latency_percentiles()
        summary = {"events": len(events), "sent": sent[0], "states": stats.states, "scores": stats.scores,
                   "dead_letters": stats.dead_letters, "p50_ms": p50, "p99_ms": p99,
                   "model_version": served.model_version, "seconds": round(time.monotonic() - started, 1),
                   "refreshes": stats.refreshes, "staleness_p99_events": stats.staleness_p99(),
                   "replay_error": repr(replay_errors[0]) if replay_errors else None}
        print(f"\n{stats.scores:,} of {len(events):,} events scored, {stats.states:,} states, "
              f"{stats.dead_letters} dead letters; event→score p50 {p50:.0f} ms, p99 {p99:.0f} ms"
              f"{_refresh_text(stats)}", file=out)
        for user in sorted(monitor.latest_scores, key=lambda u: int(u) if u.isdigit() else 0)[:opts.show_users]:
            scores = monitor.latest_scores[user]
            state = monitor.latest_state.get(user, {})
            recent = ", ".join(titles.get(i, i) for i in state.get("recent_items", [])[-3:])
            print(f"\nuser {user} (state version {state.get('version')}): recently {recent}", file=out)
            if state.get("inferred_items"):
                inferred = ", ".join(titles.get(i, i) for i in state["inferred_items"][:4])
                print(f"   inferred beyond the log ({state.get('inferred_model_version')}): {inferred}", file=out)
            if scores.get("intents"):
                print(f"   intents: {'; '.join(scores['intents'])}", file=out)
            reasons = scores.get("reasons") or [None] * len(scores["items"])
            for item, score, reason in list(zip(scores["items"], scores["scores"], reasons, strict=True))[:5]:
                print(f"   {score:7.3f}  {titles.get(item, item)}{f'  — {reason}' if reason else ''}", file=out)
        problem = incomplete(summary)
        if problem:
            print(f"\nINCOMPLETE: {problem}", file=out)
        return summary


def report_incomplete(summary: dict[str, Any]) -> bool:
    """Say on stderr why a run is incomplete (lost events, a failed replay); True if it is."""
    problem = incomplete(summary)
    if problem:
        print(f"reaseq: error: the pipeline run is incomplete: {problem}", file=sys.stderr)
    return problem is not None


def incomplete(summary: dict[str, Any]) -> str | None:
    """Why a run lost something (its replay failed, or events have neither scores nor a dead letter), or None."""
    if summary.get("replay_error"):
        return f"the replay failed after {summary.get('sent', 0):,} events: {summary['replay_error']}"
    missing = summary["events"] - summary["scores"] - summary["dead_letters"]
    if missing > 0:
        return f"{missing:,} of {summary['events']:,} events have neither scores nor a dead letter"
    return None
