"""A soak: the local cluster under a steady replay for a long while, sampled every `every_s` seconds — the
resident memory of every process (each member's whole session), the job's consumer lag, the event→score
p99 of the window, the latest checkpoint's size — then a loss check and a plot.

Memory is called flat when, after the warm-up, no member grows by more than `flat_tolerance` of its mean
over the run (least-squares slope × duration). A JVM's resident memory keeps growing until its heap has
reached the size it was given, whether or not anything leaks, so JVMs are judged by their *live heap*
instead: every `heap_every_s` each JVM is asked for a full collection and the heap still used after it
(`jcmd <pid> GC.run`, then `GC.heap_info`) — what a leak would make grow. Their RSS is reported beside."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from streaming.local.checker import TopicReader
from streaming.local.cluster import LocalCluster, session_processes
from streaming.scoring import covered_events


def session_rss_mib(session: int) -> float:
    """Resident memory (MiB) of every process in a session."""
    total_kib = 0
    for pid in session_processes(session):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


def session_jvm(session: int) -> int | None:
    """The pid of the JVM in a session (a member's `java` process, under its start script), if any."""
    for pid in session_processes(session):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                return pid
        except OSError:
            continue
    return None


def jvm_live_heap_mib(pid: int) -> float | None:
    """Heap in use (MiB) right after a full collection of the JVM `pid` (None when it does not answer)."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60, check=True)
        info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = re.search(r"heap\s+total\s+\d+K,\s+used\s+(\d+)K", info)
    return int(used.group(1)) / 1024 if used else None


def growth(times_s: list[float], values: list[float], warmup_s: float) -> dict[str, float] | None:
    """Least-squares slope (per minute) of `values` after the warm-up, and the growth it makes over that span
    relative to the mean (None with fewer than 3 samples after the warm-up)."""
    kept = [(t, v) for t, v in zip(times_s, values, strict=True) if t >= warmup_s]
    if len(kept) < 3:
        return None
    t, v = np.array([k[0] for k in kept]), np.array([k[1] for k in kept])
    slope = float(np.polyfit(t, v, 1)[0])  # per second
    span = float(t[-1] - t[0])
    mean = float(v.mean())
    return {"slope_per_min": slope * 60, "relative_growth": slope * span / mean if mean else 0.0, "mean": mean}


class ScoreWatcher(TopicReader):
    """The scores and dead-letter topics from their current ends: which events were answered, and each
    answer's event→score latency (ms) with the time it was seen."""

    def __init__(self, bootstrap_servers: str, scores_topic: str, dead_letter_topic: str) -> None:
        super().__init__(bootstrap_servers, (scores_topic, dead_letter_topic))
        self.answered: set[str] = set()
        self.latencies: list[tuple[int, int]] = []  # (seen ms, latency ms)
        self.dead_letters = 0

    def observe(self, topic: str, partition: int, offset: int, seen_ms: int, body: dict[str, Any]) -> None:
        if topic == self.topic_names[1]:
            self.dead_letters += 1
            self.answered.update(body.get("event_ids") or ())
            return
        for event_id, kafka_ts in covered_events(body):
            self.answered.add(event_id)
            self.latencies.append((seen_ms, seen_ms - kafka_ts))
        if len(self.latencies) > 400_000:  # keep the last minutes only
            del self.latencies[:200_000]

    def window_p99(self, since_ms: int) -> float | None:
        with self._lock:
            values = [lat for seen, lat in self.latencies if seen >= since_ms]
        return float(np.percentile(values, 99)) if values else None

    def count(self) -> int:
        with self._lock:
            return len(self.answered)


@dataclass
class SoakRun:
    """Samples and the verdict of a soak."""

    rate: float
    minutes: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    lost: int = 0
    settle_s: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    heaps: list[dict[str, Any]] = field(default_factory=list)  # live-heap samples of the JVMs


def sample(cluster: LocalCluster, watcher: ScoreWatcher, started: float, every_s: float) -> dict[str, Any]:
    """One sample: seconds since the start, RSS per member, lag, the window's p99, the latest checkpoint."""
    from streaming.pipeline import consumer_lag

    now = time.time()
    row: dict[str, Any] = {"t": round(now - started, 1),
                           "rss_mib": {name: round(session_rss_mib(m.pid), 1) if m.pid else None
                                       for name, m in cluster.state.members.items()},
                           "lag": consumer_lag(cluster.bootstrap_servers, cluster.layout.topics().events,
                                               cluster.job_config()["group_id"]),
                           "p99_ms": watcher.window_p99(int((now - every_s) * 1000)), "answered": watcher.count()}
    try:
        latest = cluster.rest(f"/jobs/{cluster.state.job_id}/checkpoints")["latest"]["completed"] or {}
        row["checkpoint_bytes"] = latest.get("checkpointed_size") or latest.get("state_size")
        row["checkpoint_full_bytes"] = latest.get("state_size")
    except Exception:
        row["checkpoint_bytes"] = None
    return row


def live_heaps(cluster: LocalCluster, started: float) -> dict[str, Any]:
    """One live-heap sample of every JVM member: {"t": seconds since the start, "heap_mib": {name: MiB}}."""
    heaps = {}
    for name, member in cluster.state.members.items():
        pid = session_jvm(member.pid) if member.pid else None
        if pid is not None:
            heaps[name] = jvm_live_heap_mib(pid)
    return {"t": round(time.time() - started, 1), "heap_mib": heaps}


def verdict(samples: list[dict[str, Any]], heaps: list[dict[str, Any]], warmup_s: float,
            tolerance: float) -> dict[str, Any]:
    """Per member the growth after the warm-up (JVMs: live heap, with RSS beside; others: RSS) and `flat`."""
    memory: dict[str, Any] = {}
    times = [row["t"] for row in samples]
    judged = []
    for name in (samples[0]["rss_mib"] if samples else {}):
        values = [row["rss_mib"].get(name) for row in samples]
        rss = growth(times, values, warmup_s) if all(v is not None for v in values) else None
        heap_rows = [(row["t"], row["heap_mib"].get(name)) for row in heaps if name in row["heap_mib"]]
        heap = None
        if heap_rows and all(v is not None for _, v in heap_rows):
            heap = growth([t for t, _ in heap_rows], [v for _, v in heap_rows], warmup_s)
        memory[name] = {"rss": rss, "live_heap": heap, "judged_by": "live_heap" if heap_rows else "rss"}
        judged.append(heap if heap_rows else rss)
    memory["flat"] = all(g is None or g["relative_growth"] <= tolerance for g in judged)
    return memory


def run(cluster: LocalCluster, events: list, rate: float, minutes: float, every_s: float = 10.0,
        warmup_s: float = 300.0, settle_timeout_s: float = 300.0, flat_tolerance: float = 0.10,
        heap_every_s: float = 120.0, progress: Callable[[str], None] = print) -> SoakRun:
    """Replay `events` (cycled, with ids unique per pass) at `rate`/s for `minutes`, sampling every `every_s`."""
    from kafka import KafkaProducer

    topics = cluster.layout.topics()
    result = SoakRun(rate, minutes)
    watcher = ScoreWatcher(cluster.bootstrap_servers, topics.user_scores, topics.dead_letter).start()
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=20, batch_size=64 * 1024)
    run_id = f"s{int(time.time())}"
    started = time.time()
    start = time.monotonic()
    end = start + minutes * 60
    next_sample = start
    next_heap = start + 60.0
    index = 0
    while (now := time.monotonic()) < end:
        due = start + index / rate
        if now < due:
            time.sleep(min(0.005, due - now))
            continue
        event = events[index % len(events)]
        producer.send(topics.events, key=event.user_id.encode(),
                      value=replace(event, event_id=f"{run_id}-{index // len(events)}:{event.event_id}").to_json())
        index += 1
        if now >= next_sample:
            row = sample(cluster, watcher, started, every_s)
            result.samples.append(row)
            progress(f"[{row['t']:6.0f} s] sent {index:,} answered {row['answered']:,} lag {row['lag']} "
                     f"p99 {row['p99_ms']} ms rss {sum(v for v in row['rss_mib'].values() if v):,.0f} MiB "
                     f"checkpoint {row['checkpoint_bytes']}")
            next_sample += every_s
        if now >= next_heap:
            result.heaps.append(live_heaps(cluster, started))
            progress(f"[{result.heaps[-1]['t']:6.0f} s] live heap after a full GC (MiB): "
                     + ", ".join(f"{n} {v:.0f}" for n, v in result.heaps[-1]["heap_mib"].items() if v is not None))
            next_heap += heap_every_s
    producer.flush(120)
    producer.close()
    result.sent = index
    settle = time.monotonic()
    while time.monotonic() - settle < settle_timeout_s and watcher.count() < result.sent:
        time.sleep(2)
    result.settle_s = round(time.monotonic() - settle, 1)
    watcher.stop()
    result.answered = min(watcher.count(), result.sent)
    result.lost = result.sent - result.answered
    result.memory = verdict(result.samples, result.heaps, warmup_s, flat_tolerance)
    progress(f"sent {result.sent:,}, answered {result.answered:,}, lost {result.lost:,}; memory flat: "
             f"{result.memory['flat']}")
    return result


def plot(result: SoakRun, path: Path) -> Path:
    """RSS per member, consumer lag, event→score p99 and checkpoint size over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [row["t"] / 60 for row in result.samples]
    fig, axes = plt.subplots(5, 1, figsize=(9, 13), sharex=True)
    names = list(result.samples[0]["rss_mib"]) if result.samples else []
    for name in names:
        axes[0].plot(times, [row["rss_mib"].get(name) for row in result.samples], label=name)
    axes[0].set_ylabel("resident memory (MiB)")
    axes[0].legend(fontsize=7, ncol=4)
    jvms = sorted({name for row in result.heaps for name in row["heap_mib"]})
    for name in jvms:
        rows = [(row["t"] / 60, row["heap_mib"].get(name)) for row in result.heaps]
        axes[1].plot([t for t, v in rows if v is not None], [v for _, v in rows if v is not None], marker=".",
                     label=name)
    axes[1].set_ylabel("JVM live heap after full GC (MiB)")
    if jvms:
        axes[1].legend(fontsize=7, ncol=4)
    axes[2].plot(times, [row["lag"] for row in result.samples])
    axes[2].set_ylabel("consumer lag (events)")
    axes[3].plot(times, [row["p99_ms"] for row in result.samples])
    axes[3].set_ylabel("event→score p99 (ms)")
    axes[4].plot(times, [(row["checkpoint_bytes"] or 0) / 2**20 for row in result.samples])
    axes[4].set_ylabel("checkpoint (MiB)")
    axes[4].set_xlabel("minutes")
    fig.suptitle(f"soak: {result.rate:.0f} events/s for {result.minutes:.0f} min, lost {result.lost}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
