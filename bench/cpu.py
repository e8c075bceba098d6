"""CPU time of the processes a benchmark runs, by role, from /proc (Linux): where a run's cores went."""

from __future__ import annotations

import os
from pathlib import Path

ROLES = ("job", "serve", "kafka", "bench", "other")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid → (parent pid, CPU seconds used (user + system), command line)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, cmdline)
    return found


def _descendants(processes: dict[int, tuple[int, float, str]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    out, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    return _descendants(_processes(), root)


def java_below(root: int) -> int | None:
    """The first JVM among the processes below `root` (the Flink job's, under its Python launcher)."""
    processes = _processes()
    found = sorted(pid for pid in _descendants(processes, root)
                   if pid != root and processes[pid][2].split(" ", 1)[0].endswith("java"))
    return found[0] if found else None


def role_of(cmdline: str) -> str:
    """The part of the run a process belongs to, from its command line (the job is found by pid)."""
    if cmdline.startswith("ray::") or "/ray/" in cmdline or "gcs_server" in cmdline or "raylet" in cmdline:
        return "serve"
    if "kafka.Kafka" in cmdline:
        return "kafka"
    return "other"


def cpu_by_role(job_pid: int | None, bench_pid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by each role: the job's process tree, Ray (Serve), the Kafka broker, this
    benchmark process (its producer and monitor threads), and every other process."""
    processes = _processes()
    job = _descendants(processes, job_pid) if job_pid and job_pid in processes else set()
    bench = bench_pid if bench_pid is not None else os.getpid()
    totals = dict.fromkeys(ROLES, 0.0)
    for pid, (_, seconds, cmdline) in processes.items():
        role = "job" if pid in job else "bench" if pid == bench else role_of(cmdline)
        totals[role] += seconds
    return totals


def per_event_us(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """CPU microseconds per event of each role between two `cpu_by_role` snapshots."""
    if events <= 0:
        return {}
    return {role: round((after[role] - before[role]) * 1e6 / events, 1) for role in ROLES}
