"""Helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ranking.train import TrainConfig
from streaming.pipeline import JobProcess

# A ranker that trains in seconds: the integration tests need a real artifact, not a good one.
# rotary positions and a window, as the shipped configs: Serve scores it through its state cache
TINY_RANKER = TrainConfig(epochs=1, batch_size=256, model={"max_len": 20, "dim": 16, "layers": 1, "heads": 1,
                                                           "positions": "rotary", "window": 10})


def wait_for(predicate: Callable[[], bool], job: JobProcess, timeout: float, what: str) -> None:
    """Poll until `predicate` holds; fail with the job's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert job.running(), f"job exited while waiting for {what}:\n{job.log_tail()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{job.log_tail()}")


def send_raw(bootstrap_servers: str, topic: str, values: list[bytes]) -> None:
    """Produce raw (possibly malformed) values, keyed bad-0, bad-1, … in order."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    for n, value in enumerate(values):
        producer.send(topic, key=f"bad-{n}".encode(), value=value)
    producer.flush()
    producer.close()

# A behaviour model that trains in seconds (K=5 slots, 2 steps): real artifact, not a good one.
TINY_BEHAVIOR_CONFIG = {"epochs": 1, "batch_size": 256, "cuts_per_user": 2, "holdout": 2,
                        "model": {"max_history": 20, "slots": 5, "dim": 16, "layers": 1, "heads": 1},
                        "sampling": {"slots": 5, "steps": 2}}


class _ReusableServer(ThreadingHTTPServer):
    allow_reuse_address = True  # a restarted server takes its port back at once


class PostServer:
    """A real HTTP server on 127.0.0.1 (a free port, kept across restarts) answering every POST with
    `reply(request body)` → (status, JSON bytes); `down()` refuses connections inside its block."""

    def __init__(self, reply: Callable[[bytes], tuple[int, bytes]]) -> None:
        import socket

        self.reply = reply
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/rank"
        self._server: ThreadingHTTPServer | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reply = self.reply

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                status, payload = reply(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args) -> None:
                pass

        return Handler

    def start(self) -> PostServer:
        self._server = _ReusableServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Unreachable (connection refused) inside the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@contextlib.contextmanager
def http_server(reply: Callable[[dict], tuple[int, bytes]]) -> Iterator[str]:
    """A PostServer answering every POST with `reply(JSON body as a dict)`; yields its URL."""
    import json

    server = PostServer(lambda raw: reply(json.loads(raw or b"{}"))).start()
    try:
        yield server.url
    finally:
        server.stop()


def scrape(port: int) -> dict[str, float]:
    """{series name: summed value} from a Prometheus text endpoint on 127.0.0.1 (empty if it does not answer)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$", line)
        if match:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values


class FaultyProxy(PostServer):
    """A fault injector in front of a real Serve route: forwards each POST unchanged, except that it
    answers HTTP 400 to a request holding one of `reject_users`, and refuses connections while `down()`."""

    def __init__(self, upstream: str) -> None:
        super().__init__(self._forward)
        self.upstream = upstream
        self.reject_users: set[str] = set()

    def _forward(self, raw: bytes) -> tuple[int, bytes]:
        import json
        import urllib.error
        import urllib.request

        refused = {u.get("user_id") for u in json.loads(raw).get("users", [])} & self.reject_users
        if refused:
            return 400, json.dumps({"error": f"user {sorted(refused)} refused"}).encode()
        request = urllib.request.Request(self.upstream, data=raw, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def kill_mid_stream_and_restore(cfg, kafka: str, events: list, monitor, work, first: int, before_kill: int) -> None:
    """Replay `events[:first]`, wait for checkpointed outputs, replay up to `before_kill`, SIGKILL the job
    (no clean cancel, no final checkpoint; calls may be in flight), replay the rest, restore the job from
    its latest checkpoint and wait until every event is answered. Stops the job and the monitor."""
    from streaming.pipeline import latest_checkpoint
    from streaming.replay import ReplayConfig, replay

    topic = cfg.topics.events
    job = JobProcess(cfg, work / "first").start()
    try:
        replay(events[:first], kafka, topic, ReplayConfig(rate=None))
        wait_for(lambda: monitor.snapshot().scores >= 300 and latest_checkpoint(cfg.checkpoint_dir) is not None,
                 job, 240, "first checkpointed outputs")
        replay(events[first:before_kill], kafka, topic, ReplayConfig(rate=None))
        job.kill()
        checkpoint = latest_checkpoint(cfg.checkpoint_dir)
        assert checkpoint is not None
        replay(events[before_kill:], kafka, topic, ReplayConfig(rate=None))
        cfg.restore_from = str(checkpoint)
        job = JobProcess(cfg, work / "second").start()
        wait_for(lambda: monitor.snapshot().scores >= len(events), job, 240, "all scores after restore")
        time.sleep(3)
    finally:
        job.stop()
        monitor.stop()


def tiny_knowledge(dataset, root) -> dict:
    """A knowledge-embeddings artifact under `root` (random text vectors, the real KG's relational vectors and
    reasons) and the ranker's training inputs from it: a knowledge-aware ranker without the text encoder."""
    import numpy as np

    from inference.knowledge.embeddings import (
        knowledge_training_inputs,
        l2_normalise,
        save_embeddings,
        save_kg_relations,
    )
    from inference.knowledge.store import EMBEDDINGS, resolve_version

    ids = [str(i) for i in dataset.items.item_id]
    text = l2_normalise(np.random.default_rng(0).normal(size=(len(ids), 384)).astype(np.float32))
    version = save_embeddings(dataset.name, ids, ids, text, {"source": "test", "knowledge_version": "k-test"}, root)
    save_kg_relations(resolve_version(EMBEDDINGS, dataset.name, version, root), dataset.items, dataset.kg, ids)
    return knowledge_training_inputs(dataset.name, ids, version, root)


def tiny_ranker_and_behavior(dataset, sequences, root) -> tuple:
    """A tiny knowledge-aware ranker (gate fusion, inferred behaviours as extra sequence) and a tiny behaviour
    model trained under `root`: the artifacts a LocalServe with both apps needs. Returns (ranker, behaviour)."""
    from dataclasses import replace

    from inference.behavior.train import BehaviorTrainConfig, save_behavior, train_behavior
    from ranking.experiment import dataset_record, train_and_save

    knowledge = tiny_knowledge(dataset, root)
    ranker_cfg = replace(TINY_RANKER, model={**TINY_RANKER.model, "extra_len": 5, "side_mode": "gate"},
                         knowledge=knowledge["provenance"]["embeddings_version"])
    ranker = train_and_save(sequences, ranker_cfg, progress=False, root=root, **knowledge).artifact
    cfg = BehaviorTrainConfig(**TINY_BEHAVIOR_CONFIG)
    behavior = save_behavior(train_behavior(sequences, cfg, users=range(200), progress=False), cfg,
                             dataset_record(sequences), root=root)
    return ranker, behavior
