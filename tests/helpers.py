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
TINY_RANKER = TrainConfig(epochs=1, batch_size=256, model={"max_len": 20, "dim": 16, "layers": 1, "heads": 1})


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


@contextlib.contextmanager
def http_server(reply: Callable[[dict], tuple[int, bytes]]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 and a free port answering every POST with `reply(json body)`."""
    import json

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            status, payload = reply(body)
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rank"
    finally:
        server.shutdown()
        server.server_close()


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


class FaultyProxy:
    """A fault injector in front of a real Serve route, on 127.0.0.1: forwards each POST unchanged, except that
    it answers HTTP 400 to a request holding one of `reject_users`, and refuses connections while `down()`."""

    def __init__(self, upstream: str) -> None:
        import socket

        self.upstream = upstream
        self.reject_users: set[str] = set()
        self.requests = 0
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/rank"
        self._server: ThreadingHTTPServer | None = None

    def _handler(self):
        import json
        import urllib.error
        import urllib.request

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests += 1
                users = {u.get("user_id") for u in json.loads(raw).get("users", [])}
                if users & proxy.reject_users:
                    status, body = 400, json.dumps({"error": f"user {sorted(users & proxy.reject_users)} refused"})
                    body = body.encode()
                else:
                    request = urllib.request.Request(proxy.upstream, data=raw,
                                                     headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(request, timeout=30) as response:
                            status, body = response.status, response.read()
                    except urllib.error.HTTPError as error:
                        status, body = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        return Handler

    def start(self) -> FaultyProxy:
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Serve unreachable (connection refused) inside the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()
