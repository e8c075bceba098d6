"""An embedded single-node Apache Kafka (KRaft) for local runs and tests.

Real Apache Kafka from the pinned jars (``streaming/jvm/pom.xml``), started the way Kafka's own
scripts do it::

    java -cp 'broker/*' kafka.tools.StorageTool format -t <id> -c server.properties --standalone
    java -Xmx512m -cp 'broker/*' kafka.Kafka server.properties

One process is both broker and controller; both listeners are on 127.0.0.1 with free ports, and
the data and logs live in a work directory (a temporary one by default, removed on stop)::

    with EmbeddedKafka() as kafka:
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from streaming.jvm_deps import JvmJars, require_java, resolve_jars

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_PORT_RETRIES = 3


class BrokerError(RuntimeError):
    """The embedded broker failed to format, start or answer in time."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # a leading '-' would read as a CLI option
            return cid


def server_properties(
    work_dir: Path, broker_port: int, controller_port: int, node_id: int = 1
) -> dict[str, str]:
    """Broker settings for one node acting as broker and controller, loopback only."""
    broker = f"{HOST}:{broker_port}"
    controller = f"{HOST}:{controller_port}"
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(work_dir / "data"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "transaction.max.timeout.ms": "900000",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }


def log4j2_properties(log_dir: Path) -> str:
    """A log4j2 configuration writing the broker's log to ``log_dir/server.log`` (rolled)."""
    server_log = log_dir / "server.log"
    quiet = ("kafka.request.logger", "kafka.network.RequestChannel$", "state.change.logger")
    lines = [
        "status = warn",
        "name = reaseq-embedded-kafka",
        "appender.server.type = RollingFile",
        "appender.server.name = server",
        f"appender.server.fileName = {server_log}",
        f"appender.server.filePattern = {server_log}.%i",
        "appender.server.layout.type = PatternLayout",
        "appender.server.layout.pattern = [%d] %p %m (%c)%n",
        "appender.server.policies.type = Policies",
        "appender.server.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.server.policies.size.size = 50MB",
        "appender.server.strategy.type = DefaultRolloverStrategy",
        "appender.server.strategy.max = 2",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.server.ref = server",
    ]
    for i, name in enumerate(quiet):
        lines += [f"logger.q{i}.name = {name}", f"logger.q{i}.level = WARN"]
    return "\n".join(lines) + "\n"


def _write_properties(path: Path, props: Mapping[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this process dies (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked dies, so it is used only from the
    main thread, where that thread's end is the process's end.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EmbeddedKafka:
    """A single-node KRaft Apache Kafka on 127.0.0.1; a context manager.

    Every start formats a fresh cluster (new id, new free ports, empty ``work_dir/data``): data
    does not survive a restart. Broker settings can be overridden with ``properties``.

    Stops on ``stop()``, on leaving the ``with`` block (exceptions such as KeyboardInterrupt
    pass through), at interpreter exit (atexit), and, when started from the main thread,
    when this process dies (parent-death signal).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        jars: JvmJars | None = None,
        heap: str = "512m",
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 30.0,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_work_dir = Path(work_dir) if work_dir is not None else None
        self._jars = jars
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_properties = dict(properties or {})
        self.work_dir: Path | None = None
        self.broker_port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._owns_work_dir = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the PLAINTEXT listener (after start)."""
        if self.broker_port is None:
            raise BrokerError("the embedded Kafka is not started")
        return f"{HOST}:{self.broker_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker's JVM, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """The broker's log4j log file."""
        if self.work_dir is None:
            raise BrokerError("the embedded Kafka is not started")
        return self.work_dir / "logs" / "server.log"

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedKafka:
        """Format the storage, start the broker and wait until it answers metadata requests."""
        if self._proc is not None:
            raise BrokerError("the embedded Kafka is already started")
        java = require_java()
        jars = self._jars or resolve_jars()
        if self._requested_work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="reaseq-kafka-"))
            self._owns_work_dir = True
        else:
            self.work_dir = self._requested_work_dir
            self.work_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            for attempt in range(1, _PORT_RETRIES + 1):
                try:
                    self._start_once(java, jars)
                    return self
                except BrokerError as exc:
                    clash = "Address already in use" in str(exc)
                    self._stop_process()
                    if not clash or attempt == _PORT_RETRIES:
                        raise
                    log.warning("embedded Kafka: port clash, retrying with new ports")
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the broker (SIGTERM, wait, then SIGKILL) and remove a temporary work dir."""
        self._stop_process()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self._owns_work_dir = False

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _start_once(self, java: str, jars: JvmJars) -> None:
        assert self.work_dir is not None
        data_dir, log_dir = self.work_dir / "data", self.work_dir / "logs"
        shutil.rmtree(data_dir, ignore_errors=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.broker_port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.broker_port:
            self.controller_port = free_port()
        self.cluster_id = new_cluster_id()

        props = server_properties(self.work_dir, self.broker_port, self.controller_port)
        props.update(self.extra_properties)
        config = self.work_dir / "server.properties"
        _write_properties(config, props)
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(log4j2_properties(log_dir))

        jvm_opts = [
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={log_dir}",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
        ]
        cp = ["-cp", jars.broker_classpath]
        fmt = [
            # a short-lived tool: C1 only starts ~40% faster
            java, "-Xmx256m", "-XX:TieredStopAtLevel=1", *jvm_opts, *cp,
            "kafka.tools.StorageTool", "format",
            "--cluster-id", self.cluster_id, "--config", str(config), "--standalone",
        ]
        try:
            done = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError("kafka.tools.StorageTool format timed out after 120 s") from exc
        if done.returncode != 0:
            raise BrokerError(
                f"kafka.tools.StorageTool format failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )

        server = [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", *jvm_opts, *cp, "kafka.Kafka", str(config),
        ]
        self._stdout = open(log_dir / "stdout.log", "ab")  # noqa: SIM115 - closed in stop
        self._proc = subprocess.Popen(
            server,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,  # Ctrl-C reaches Python, which then stops the broker
            preexec_fn=_parent_death_signal(),
        )
        self._wait_ready()

    def _failure(self, reason: str) -> BrokerError:
        assert self.work_dir is not None
        logs = self.work_dir / "logs"
        return BrokerError(
            f"embedded Kafka {reason}\n--- tail of {logs / 'server.log'} ---\n"
            f"{_tail(logs / 'server.log')}\n--- tail of {logs / 'stdout.log'} ---\n"
            f"{_tail(logs / 'stdout.log', 20)}"
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.broker_port is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "never reachable"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._failure(f"exited during start-up with code {self._proc.returncode}")
            try:
                with socket.create_connection((HOST, self.broker_port), timeout=1):
                    pass
                if self._metadata_ok():
                    return
                last_error = "metadata has no registered broker yet"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise self._failure(
            f"did not become ready within {self.start_timeout_s:.0f} s ({last_error})"
        )

    def _metadata_ok(self) -> bool:
        from kafka.admin import KafkaAdminClient  # local: kafka-python is slow to import

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="reaseq-embedded-ready",
                request_timeout_ms=5000,
            )
        except Exception:  # NoBrokersAvailable and friends: not up yet
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except Exception:
            return False
        finally:
            admin.close()

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("embedded Kafka still up after %.0f s; killing it", self.stop_timeout_s)
                proc.kill()
                proc.wait()
            except BaseException:  # e.g. a second Ctrl-C while waiting: leave nothing behind
                proc.kill()
                proc.wait()
                raise
        elif proc is not None:
            proc.wait()
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
