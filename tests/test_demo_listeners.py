"""The embedded default listens on loopback only, its job's metrics reach Flink's Prometheus reporter, and
the stream makes no LLM call while a real LLM server is up and advertised.

Runs the whole pipeline (Kafka, Ray Serve, the Flink job, a short replay) as `reaseq stream run`
does, lists the listening TCP sockets of every process it started, and scrapes the reporter.
"""

from __future__ import annotations

import io
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from bench.cpu import descendants
from inference.serve.local import free_port
from monitoring import exported
from monitoring import metrics as names
from streaming.procnet import is_loopback, listening_sockets
from streaming.runner import PipelineOptions, run_pipeline

pytestmark = pytest.mark.slow

# Listeners allowed off loopback, each for a reason outside this project's code:
# - Flink's PrometheusReporter has no host option: its HTTP server binds every interface.
# - Ray's core processes (gcs_server, raylet, workers, dashboard agent, runtime-env agent) bind their
#   gRPC/HTTP servers to all interfaces or to the node IP, and ray.init maps 127.0.0.1 to the node IP
#   on purpose (ray._private.services.resolve_ip_for_localhost).
REQUIRED_METRICS = (names.EVENTS_IN, names.STATES_OUT, names.SCORES_OUT, names.EVENT_TO_SCORE_MS,
                    names.SCORE_BATCH_SIZE, names.INFERENCE_LATENCY_MS, names.LLM_CALLS)


def servers(samples: list[set[tuple]]) -> set[tuple]:
    """Listeners seen in two samples or more (0.5 s apart): servers, not port probes.

    Flink's `NetUtils.getAvailablePort()` opens a ServerSocket on all interfaces at port 0 and closes it
    a few milliseconds later, to learn a free port, before the PyFlink gateway binds 127.0.0.1 (seen with
    `strace -f -e trace=bind,listen` on the job: at gateway start and again when the Python operator
    opens). Such a probe accepts no connection, but a sampler that happens to land in those milliseconds
    sees a listener on `::` at a random port — more often on some machines than others.
    """
    counts = Counter(listener for sample in samples for listener in sample)
    return {listener for listener, count in counts.items() if count >= 2}


def test_port_probes_are_not_servers_but_lasting_listeners_are():
    probe, server, local = ("::", 40565, "java", "java"), ("0.0.0.0", 8080, "java", "java"), ("127.0.0.1", 1, "x", "")
    samples = [{local}, {local, probe}, {local, server}, {local, server}]
    assert servers(samples) == {local, server}


def _is_ray_process(name: str, cmdline: str) -> bool:
    return name in ("gcs_server", "raylet") or name.startswith("ray::") or "/ray/" in cmdline


def _descendants(root: int) -> set[int]:
    return descendants(root) - {root}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return ""


def _listeners(pids: set[int]) -> set[tuple[str, int, str, str]]:
    """(address, port, process name, command line) of every TCP listener of these processes."""
    found = set()
    for pid in pids:
        try:
            sockets = listening_sockets(pid)
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # the process ended meanwhile
            continue
        for host, port in sockets:
            found.add((host, port, name, _cmdline(pid)))
    return found


def test_demo_listens_on_loopback_only_exports_job_metrics_and_calls_no_llm(tmp_path, ml100k_sequences,
                                                                          monkeypatch):
    import os

    from inference.knowledge.llama_server import LlamaServer
    from ranking.experiment import train_and_save
    from tests.helpers import TINY_RANKER, scrape

    artifact = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=tmp_path / "artifacts").artifact
    metrics_port = free_port()
    opts = PipelineOptions(artifact=str(artifact.path), rate=150.0, limit=3000, work_dir=tmp_path / "work",
                           metrics_port=metrics_port, show_users=1)
    output = io.StringIO()
    result: dict = {}
    with LlamaServer(log_path=tmp_path / "llm.log") as llm:
        # advertised where OpenAI-compatible clients look for a server: the job's process inherits it
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        runner = threading.Thread(target=lambda: result.update(run_pipeline(opts, out=output)), daemon=True)
        runner.start()
        samples: list[set[tuple[str, int, str, str]]] = []
        scraped, llm_calls = "", []
        while runner.is_alive():
            samples.append(_listeners(_descendants(os.getpid())))
            if not all(name in scraped for name in REQUIRED_METRICS):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
                        scraped = response.read().decode()
                except OSError:
                    pass
            llm_calls.append(scrape(metrics_port).get(exported.flink(names.LLM_CALLS)))
            time.sleep(0.5)
        runner.join()
        assert llm.completion_requests() == 0, "the stream sent requests to the LLM server"
    assert result.get("scores") == 3000, output.getvalue()[-3000:]
    exported_values = [v for v in llm_calls if v is not None]
    assert exported_values and max(exported_values) == 0, llm_calls  # scraped while running, and zero
    lasting = servers(samples)
    assert lasting, "no listening sockets found for the demo's processes"
    off_loopback = {(h, p, n, c) for h, p, n, c in lasting if not is_loopback(h)}
    unexpected = {(h, p, n, c) for h, p, n, c in off_loopback if p != metrics_port and not _is_ray_process(n, c)}
    assert not unexpected, f"listeners off loopback beyond Ray's and the reporter's: {sorted(unexpected)}"
    # Kafka, the Flink job (REST, RPC, blob, data), its Python side and Serve's HTTP proxy are on loopback
    ours = {(h, p, n) for h, p, n, c in lasting if not _is_ray_process(n, c) and p != metrics_port}
    assert ours and all(is_loopback(h) for h, _, _ in ours), sorted(ours)
    for name in REQUIRED_METRICS:
        assert name in scraped, f"{name} not exported by Flink's Prometheus reporter"
    assert "KafkaSource" in scraped or "kafka" in scraped.lower()
