"""A real cluster on one machine, on loopback: three Kafka KRaft nodes, a Flink standalone session cluster,
a Ray cluster with the Ranker on Serve, and the job submitted to the session cluster.

- Kafka: `brokers` nodes, each its own JVM with combined broker+controller roles, a static controller quorum,
  its own ports and log dirs; topics with replication factor 3, `min.insync.replicas=2`, unclean leader
  election off. Producers use acks=all and idempotence (streaming/replay.py).
- Flink: one JobManager and `taskmanagers` TaskManagers from the scripts PyFlink ships
  (`jobmanager.sh` / `taskmanager.sh start-foreground`), one slot each, the job at parallelism
  `taskmanagers` (each TaskManager holds a share of the keyed state), checkpoints on a shared local path,
  RocksDB. JobManager high availability (`ha`, on by default): Flink's ZooKeeper HA against one ZooKeeper
  server, the ZooKeeper 3 that Flink's own distribution ships shaded inside flink-dist (the server
  `pyflink/bin/zookeeper.sh` starts, and the version Flink's HA client is built against; nothing to
  download); the job graph, its artifacts and the checkpoint pointers live under `<work>/flink/ha`, so a
  JobManager killed and started again recovers the running job from its latest checkpoint.
- Ray: a head node and `ray_workers` worker nodes (`ray start --block`), the Ranker with one replica per node
  (`max_replicas_per_node: 1`), Serve's HTTP proxy on the head.

Memory (24 GiB, 2 cores): Kafka 3 × (384 MiB heap, ≈0.6 GiB resident), ZooKeeper 128 MiB heap,
JobManager 1 GiB, TaskManagers 2 × 1.5 GiB (their embedded Python included), Ray head ≈1.5 GiB and
worker ≈1 GiB with one Ranker replica each: ≈9 GiB in all. Every process runs in its own session;
`down` kills each session whole and checks that none of its processes is left. The harness writes what
it started to `<work>/cluster.json`, so `status`, `down` and the nemesis work from another process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streaming.kafka_broker import HOST, free_port, log4j2_properties, new_cluster_id, server_properties
from streaming.topics import TopicsConfig

ROOT = Path(__file__).resolve().parents[2]
# Ray rewrites 127.0.0.1 in an address to the machine's network address (so that other machines could join);
# another loopback address keeps its nodes on loopback. Its GCS listens on every interface whatever it is
# told (a Ray limitation), so the cluster runs with token authentication and a token of its own.
RAY_HOST = "127.0.0.2"


@dataclass(frozen=True)
class Layout:
    """How big the cluster is and what each process may use."""

    brokers: int = 3
    taskmanagers: int = 2
    ray_workers: int = 1
    kafka_heap: str = "384m"
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "1536m"
    partitions: int = 4
    checkpoint_interval_ms: int = 2_000
    artifact: str = "ml-100k"
    shards: int = 8
    ha: bool = True  # JobManager high availability through ZooKeeper
    zookeeper_heap: str = "128m"

    def topics(self) -> TopicsConfig:
        return TopicsConfig(partitions=self.partitions, replication_factor=min(3, self.brokers))


@dataclass
class Member:
    """One process of the cluster: how to start it again, and its pid while it runs."""

    name: str
    role: str  # kafka | zookeeper | jobmanager | taskmanager | ray-head | ray-worker
    command: list[str]
    env: dict[str, str]
    log: str
    pid: int | None = None
    started_at: float | None = None


@dataclass
class ClusterState:
    """What `up` started, as data (`<work>/cluster.json`)."""

    work: str
    layout: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    cluster_id: str = ""
    job_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_json(text: str) -> ClusterState:
        data = json.loads(text)
        data["members"] = {name: Member(**m) for name, m in data["members"].items()}
        return ClusterState(**data)


# the ZooKeeper 3 server inside flink-dist (relocated by Flink's shading, as pyflink/bin/zookeeper.sh runs it)
ZOOKEEPER_MAIN = "org.apache.flink.shaded.zookeeper3.org.apache.zookeeper.server.ZooKeeperServerMain"


def zookeeper_answers(port: int) -> bool:
    """True when a ZooKeeper server on loopback answers the `srvr` four-letter command."""
    import socket

    try:
        with socket.create_connection((HOST, port), timeout=2) as conn:
            conn.sendall(b"srvr")
            return b"Zookeeper version" in conn.recv(1024)
    except OSError:
        return False


class ClusterError(RuntimeError):
    """A part of the local cluster failed to start or answer in time."""


def session_processes(session: int) -> list[int]:
    """Pids of the live processes in a session (everything a member started, its JVM's children included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session and fields[0] != "Z":  # field 6 of stat: the session id
            found.append(int(entry.name))
    return found


def kill_session(session: int, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to every process of a session; returns how many there were."""
    pids = session_processes(session)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(pids)


@contextlib.contextmanager
def quiet_kafka():
    """kafka-python logs every refused connection as an error: while the harness polls a node that is still
    starting (or was killed on purpose), that is expected."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def wait_until(what: str, check, timeout_s: float, every_s: float = 0.5,
               gave_up: Callable[[], str | None] | None = None, explain: Callable[[], str] | None = None):
    """Poll `check()` until it returns something truthy (returned), or raise ClusterError naming `what`.

    `gave_up()` returns a reason to stop at once (a process it waits for has exited); `explain()` adds what
    would help to the error (the last lines of the logs)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as error:  # not up yet
            last = error
        reason = gave_up() if gave_up else None
        if reason:
            raise ClusterError(f"{reason} while waiting for {what} (last: {last!r})"
                               + (f"\n{explain()}" if explain else ""))
        time.sleep(every_s)
    raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})"
                       + (f"\n{explain()}" if explain else ""))


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kafka_properties(node: int, work: Path, broker_port: int, voters: str, brokers: int) -> dict[str, str]:
    """One node of the KRaft cluster: broker and controller, a static quorum, replicated internal topics."""
    props = server_properties(work, broker_port, int(voters.split(",")[node - 1].rsplit(":", 1)[1]), node_id=node)
    props.pop("controller.quorum.bootstrap.servers")
    replicas = str(min(3, brokers))
    props.update({
        "controller.quorum.voters": voters,
        "default.replication.factor": replicas,
        "min.insync.replicas": str(min(2, brokers)),
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": str(min(2, brokers)),
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": str(min(2, brokers)),
        "num.partitions": "4",
        # a killed node's partitions move within seconds, not the defaults' tens of seconds
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "controller.quorum.fetch.timeout.ms": "2000",
        "controller.quorum.election.timeout.ms": "1000",
    })
    return props


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def flink_cluster_configuration(layout: Layout, work: Path, ports: dict[str, int]) -> dict[str, str]:
    """The session cluster's config.yaml: loopback addresses, one slot per TaskManager, checkpoints on a
    shared local path, the venv's Python in thread mode, restarts that never give up."""
    python = sys.executable
    return {
        "jobmanager.rpc.address": HOST, "jobmanager.bind-host": HOST, "jobmanager.rpc.port": str(ports["flink-rpc"]),
        "rest.address": HOST, "rest.bind-address": HOST, "rest.port": str(ports["flink-rest"]),
        "taskmanager.host": HOST, "taskmanager.bind-host": HOST,
        "taskmanager.numberOfTaskSlots": "1",
        "parallelism.default": str(layout.taskmanagers),
        "jobmanager.memory.process.size": layout.jobmanager_memory,
        "taskmanager.memory.process.size": layout.taskmanager_memory,
        "execution.checkpointing.interval": f"{layout.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": (work / "flink" / "checkpoints").as_uri(),
        "execution.checkpointing.num-retained": "3",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.tolerable-failed-checkpoints": "5",
        "state.backend.type": "rocksdb",
        "execution.checkpointing.incremental": "true",
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "10 s",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": "1000000",
        # a SIGKILLed TaskManager is noticed by its heartbeat (no Kubernetes pod watch here)
        "heartbeat.timeout": "8000", "heartbeat.interval": "2000",
        "python.executable": python, "python.client.executable": python, "python.execution-mode": "thread",
        "io.tmp.dirs": str(work / "flink" / "tmp"),
        "env.java.opts.all": " ".join(java_module_options()),
        **(flink_ha_configuration(work, ports["zookeeper"]) if layout.ha else {}),
    }


def flink_ha_configuration(work: Path, zookeeper_port: int) -> dict[str, str]:
    """Flink's ZooKeeper HA: leader election and the job's recovery data. A short session timeout lets a
    restarted JobManager take over from a SIGKILLed one within seconds (its leader node expires with it)."""
    return {"high-availability.type": "zookeeper",
            "high-availability.zookeeper.quorum": f"{HOST}:{zookeeper_port}",
            "high-availability.storageDir": (work / "flink" / "ha").as_uri(),
            "high-availability.cluster-id": "/reaseq-local",
            "high-availability.zookeeper.client.session-timeout": "6000",
            "high-availability.zookeeper.client.connection-timeout": "5000"}


def zookeeper_configuration(data_dir: Path, port: int) -> str:
    """zoo.cfg of a standalone ZooKeeper on loopback (no admin server, no client limit)."""
    return (f"tickTime=1000\ndataDir={data_dir}\nclientPort={port}\nclientPortAddress={HOST}\n"
            "admin.enableServer=false\nmaxClientCnxns=0\nminSessionTimeout=2000\n")


def java_module_options() -> list[str]:
    """The --add-opens/--add-exports Flink's own conf/config.yaml gives the JVM on Java 17."""
    import yaml

    conf = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text()) or {}
    opts = (conf.get("env", {}).get("java", {}).get("opts", {}).get("all")
            if isinstance(conf.get("env"), dict) else conf.get("env.java.opts.all"))
    return str(opts or "").split()


class LocalCluster:
    """The cluster in `work`: `up()`, `status()`, `down()`; `kill(name)` / `start(name)` for the nemesis."""

    def __init__(self, work: Path, layout: Layout | None = None) -> None:
        self.work = Path(work)
        self.layout = layout or Layout()
        self.state = ClusterState(str(self.work), asdict(self.layout))

    # -- persisted state -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.work / "cluster.json"

    @classmethod
    def load(cls, work: Path) -> LocalCluster:
        path = Path(work) / "cluster.json"
        if not path.exists():
            raise ClusterError(f"no cluster in {work} (start one with `reaseq cluster up --work {work}`)")
        state = ClusterState.from_json(path.read_text())
        cluster = cls(Path(state.work), Layout(**state.layout))
        cluster.state = state
        return cluster

    def save(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(self.state.to_json())

    # -- addresses -------------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{self.state.ports[f'kafka-{n}']}" for n in range(1, self.layout.brokers + 1))

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.state.ports['flink-rest']}"

    @property
    def serve_url(self) -> str:
        return f"http://{HOST}:{self.state.ports['serve-http']}/rank"

    @property
    def ray_address(self) -> str:
        return f"{RAY_HOST}:{self.state.ports['ray-gcs']}"

    @property
    def ray_env(self) -> dict[str, str]:
        """What every Ray process and client of this cluster needs: its token, no usage reports."""
        return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.work / "ray" / "auth_token")}

    def members(self, role: str) -> list[Member]:
        return [m for m in self.state.members.values() if m.role == role]

    # -- processes -------------------------------------------------------------------------------------

    def _add(self, name: str, role: str, command: list[str], env: dict[str, str]) -> Member:
        log = self.work / "logs" / f"{name}.log"
        member = Member(name, role, command, env, str(log))
        self.state.members[name] = member
        return member

    def start(self, name: str) -> Member:
        """(Re)start a member with the command it was first started with, in a session of its own."""
        member = self.state.members[name]
        Path(member.log).parent.mkdir(parents=True, exist_ok=True)
        with open(member.log, "ab") as out:
            out.write(f"\n--- start {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            process = subprocess.Popen(member.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **member.env}, cwd=self.work, start_new_session=True)
        member.pid, member.started_at = process.pid, time.time()
        self.save()
        return member

    def alive(self, name: str) -> bool:
        member = self.state.members[name]
        return member.pid is not None and bool(session_processes(member.pid))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """SIGKILL (by default) every process of a member; returns how many processes there were."""
        member = self.state.members[name]
        count = kill_session(member.pid, sig) if member.pid else 0
        member.pid = None
        self.save()
        return count

    def wait_for(self, what: str, check, timeout_s: float, watch: list[str]):
        """wait_until, giving up as soon as one of the `watch`ed members has exited, and naming the
        last lines of their logs in the error."""
        def exited() -> str | None:
            dead = [name for name in watch if not self.alive(name)]
            return f"{', '.join(dead)} exited" if dead else None

        def logs() -> str:
            return "\n".join(f"--- last lines of {name} ({self.state.members[name].log}):\n"
                             f"{log_tail(Path(self.state.members[name].log))}" for name in watch)

        return wait_until(what, check, timeout_s, gave_up=exited, explain=logs)

    def revive(self, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Start again every member whose processes have all exited, as Kubernetes restarts a pod whose
        container exited (a TaskManager exits on a fatal task error); `exclude`: members stopped on purpose.
        Returns the names started."""
        revived = [name for name in self.state.members if name not in exclude and not self.alive(name)]
        for name in revived:
            self.start(name)
        return revived

    # -- up --------------------------------------------------------------------------------------------

    def up(self, progress=print) -> None:
        """Start everything, wait until each part answers, create the topics, deploy Serve, submit the job."""
        if self.state_path.exists():  # its folder is about to be replaced: its processes would be orphaned
            previous = ClusterState.from_json(self.state_path.read_text())
            if any(m.pid and session_processes(m.pid) for m in previous.members.values()):
                raise ClusterError(f"a cluster is already running in {self.work}: `reaseq cluster down` first")
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "logs").mkdir(parents=True)
        started = time.monotonic()
        try:
            self._kafka(progress)
            if self.layout.ha:
                self._zookeeper(progress)
            self._flink(progress)
            self._ray(progress)
            self._serve(progress)
            self._submit(progress)
        except BaseException:
            progress("start failed: stopping what was started")
            self.down(progress=lambda *_: None)
            raise
        progress(f"cluster up in {time.monotonic() - started:.0f} s ({self.work})")

    def _kafka(self, progress) -> None:
        from streaming.jvm_deps import require_java, resolve_jars

        java, jars = require_java(), resolve_jars()
        brokers = self.layout.brokers
        for n in range(1, brokers + 1):
            self.state.ports[f"kafka-{n}"], self.state.ports[f"kafka-controller-{n}"] = free_port(), free_port()
        voters = ",".join(f"{n}@{HOST}:{self.state.ports[f'kafka-controller-{n}']}" for n in range(1, brokers + 1))
        self.state.cluster_id = new_cluster_id()
        for n in range(1, brokers + 1):
            node = self.work / f"kafka-{n}"
            (node / "logs").mkdir(parents=True)
            props = kafka_properties(n, node, self.state.ports[f"kafka-{n}"], voters, brokers)
            (node / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
            (node / "log4j2.properties").write_text(log4j2_properties(node / "logs"))
            opts = [f"-Dlog4j2.configurationFile={node / 'log4j2.properties'}", f"-Dkafka.logs.dir={node / 'logs'}",
                    "-Djava.net.preferIPv4Stack=true"]
            formatted = subprocess.run([java, "-Xmx256m", *opts, "-cp", jars.broker_classpath,
                                        "kafka.tools.StorageTool", "format", "--cluster-id", self.state.cluster_id,
                                        "--config", str(node / "server.properties")],
                                       capture_output=True, text=True, timeout=120)
            if formatted.returncode != 0:
                raise ClusterError(f"formatting kafka-{n} failed: {formatted.stdout}{formatted.stderr}")
            self._add(f"kafka-{n}", "kafka", [java, f"-Xmx{self.layout.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
                                              "-XX:+ExitOnOutOfMemoryError", *opts, "-cp", jars.broker_classpath,
                                              "kafka.Kafka", str(node / "server.properties")], {})
        for n in range(1, brokers + 1):
            self.start(f"kafka-{n}")
        self.wait_for(f"{brokers} Kafka brokers", lambda: len(self.kafka_brokers()) == brokers, 120,
                      [f"kafka-{n}" for n in range(1, brokers + 1)])
        from streaming.topics import ensure_topics

        with quiet_kafka():
            ensure_topics(self.bootstrap_servers, self.layout.topics())
        progress(f"kafka: {brokers} KRaft nodes at {self.bootstrap_servers}; topics with replication factor "
                 f"{self.layout.topics().replication_factor}, min.insync.replicas {min(2, brokers)}")

    def kafka_brokers(self) -> list[int]:
        """Ids of the brokers the cluster's metadata lists as serving (not fenced)."""
        from kafka.admin import KafkaAdminClient

        with quiet_kafka():
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="reaseq-cluster",
                                     request_timeout_ms=5000)
            try:
                brokers = admin.describe_cluster()["brokers"]
            finally:
                admin.close()
        return sorted(b.get("broker_id", b.get("node_id")) for b in brokers if not b.get("is_fenced"))

    def _zookeeper(self, progress) -> None:
        from streaming.jvm_deps import require_java

        java, lib = require_java(), flink_home() / "lib"
        node = self.work / "zookeeper"
        (node / "data").mkdir(parents=True)
        self.state.ports["zookeeper"] = free_port()
        (node / "zoo.cfg").write_text(zookeeper_configuration(node / "data", self.state.ports["zookeeper"]))
        classpath = os.pathsep.join(str(jar) for jar in sorted(lib.glob("*.jar"))
                                    if jar.name.startswith(("flink-dist", "log4j")))
        self._add("zookeeper", "zookeeper", [java, f"-Xmx{self.layout.zookeeper_heap}", "-XX:+ExitOnOutOfMemoryError",
                                             "-cp", classpath, ZOOKEEPER_MAIN, str(node / "zoo.cfg")], {})
        self.start("zookeeper")
        self.wait_for("ZooKeeper", lambda: zookeeper_answers(self.state.ports["zookeeper"]), 60, ["zookeeper"])
        progress(f"zookeeper: {HOST}:{self.state.ports['zookeeper']} (JobManager HA, recovery data under "
                 f"{self.work / 'flink' / 'ha'})")

    def _flink(self, progress) -> None:
        from streaming.jvm_deps import require_java, resolve_jars

        java, jars = require_java(), resolve_jars()
        home = flink_home()
        conf, lib = self.work / "flink" / "conf", self.work / "flink" / "lib"
        for folder in (conf, lib, self.work / "flink" / "tmp", self.work / "flink" / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        # the session cluster's classpath: Flink's lib, the Python runtime, the Kafka connector and glue jars
        for jar in [*sorted((home / "lib").glob("*.jar")), *sorted((home / "opt").glob("flink-python-*.jar")),
                    *jars.connector_jars]:
            (lib / jar.name).symlink_to(jar)
        for name in ("flink-rpc", "flink-rest"):
            self.state.ports[name] = free_port()
        import yaml

        (conf / "config.yaml").write_text(yaml.safe_dump(flink_cluster_configuration(self.layout, self.work,
                                                                                     self.state.ports)))
        for name in ("log4j-console.properties", "log4j.properties", "logback-console.xml"):
            if (home / "conf" / name).exists():
                shutil.copy2(home / "conf" / name, conf / name)
        site = next(p for p in map(Path, sys.path) if p.name == "site-packages")
        env = {"FLINK_CONF_DIR": str(conf), "FLINK_LIB_DIR": str(lib),
               "FLINK_LOG_DIR": str(self.work / "flink" / "log"),
               "JAVA_HOME": str(Path(os.path.realpath(java)).parent.parent),
               # thread mode: the TaskManager's embedded interpreter imports the job's modules from here
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
        bin_dir = home / "bin"
        self._add("jobmanager", "jobmanager", ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"], env)
        for n in range(1, self.layout.taskmanagers + 1):
            self._add(f"taskmanager-{n}", "taskmanager",
                      ["bash", str(bin_dir / "taskmanager.sh"), "start-foreground",
                       "-D", f"taskmanager.resource-id=taskmanager-{n}"], env)
        self.start("jobmanager")
        for n in range(1, self.layout.taskmanagers + 1):
            self.start(f"taskmanager-{n}")
        # 240 s: a JobManager's first start on 2 busy cores (JVM, ZooKeeper leader election, REST) has taken
        # over 120 s; one that exits fails at once with its log instead
        self.wait_for(f"{self.layout.taskmanagers} TaskManagers registered",
                      lambda: len(self.rest("/taskmanagers")["taskmanagers"]) == self.layout.taskmanagers, 240,
                      ["jobmanager", *(f"taskmanager-{n}" for n in range(1, self.layout.taskmanagers + 1))])
        progress(f"flink: session cluster at {self.rest_url}, {self.layout.taskmanagers} TaskManagers × 1 slot")

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(self.rest_url + path, timeout=10) as reply:
            return json.loads(reply.read())

    def _ray(self, progress) -> None:
        import secrets

        ray = str(Path(sys.executable).with_name("ray"))
        self.state.ports["ray-gcs"], self.state.ports["serve-http"] = free_port(RAY_HOST), free_port()
        token = self.work / "ray" / "auth_token"
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {**self.ray_env, "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120", "PYTHONPATH": str(ROOT)}
        common = ["--block", "--node-ip-address", RAY_HOST, "--num-cpus", "1",
                  "--object-store-memory", str(200 * 2**20)]
        self._add("ray-head", "ray-head", [ray, "start", "--head", "--port", str(self.state.ports["ray-gcs"]),
                                           "--include-dashboard", "false", "--disable-usage-stats", *common], env)
        self.start("ray-head")
        self.wait_for("the Ray head", lambda: self.ray_nodes() >= 1, 120, ["ray-head"])
        for n in range(1, self.layout.ray_workers + 1):
            self._add(f"ray-worker-{n}", "ray-worker", [ray, "start", "--address", self.ray_address, *common], env)
            self.start(f"ray-worker-{n}")
        self.wait_for(f"{1 + self.layout.ray_workers} Ray nodes",
                      lambda: self.ray_nodes() == 1 + self.layout.ray_workers, 120,
                      ["ray-head", *(f"ray-worker-{n}" for n in range(1, self.layout.ray_workers + 1))])
        progress(f"ray: head at {self.ray_address} and {self.layout.ray_workers} worker node(s)")

    def ray_nodes(self) -> int:
        """Alive nodes of the Ray cluster (asked with `ray status`-like GCS call in a subprocess)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], log_to_driver=False, "
                "configure_logging=False); print(sum(1 for n in ray.nodes() if n['Alive']))")
        done = subprocess.run([sys.executable, "-c", code, self.ray_address, RAY_HOST], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **self.ray_env})
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0

    def _serve(self, progress) -> None:
        from ranking.artifacts import resolve_artifact

        artifact = resolve_artifact(self.layout.artifact).resolve()  # the replicas' working folder is Ray's
        done = subprocess.run([sys.executable, "-m", "streaming.local.serve_deploy", self.ray_address,
                               str(self.state.ports["serve-http"]), str(artifact),
                               str(1 + self.layout.ray_workers)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT,
                              env={**os.environ, **self.ray_env, "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            raise ClusterError(f"deploying Serve failed:\n{(done.stdout + done.stderr)[-3000:]}")
        progress(f"serve: Ranker ({self.layout.artifact}) at {self.serve_url}, {1 + self.layout.ray_workers} "
                 "replicas, one per node")

    def job_config(self) -> dict[str, Any]:
        """The StreamConfig the job runs with: the cluster's Kafka and Serve, everything Flink-level from the
        session cluster (`flink_cluster: application`)."""
        from ranking.artifacts import catalogue_item_ids, load_artifact, resolve_artifact

        return {"bootstrap_servers": self.bootstrap_servers, "serve_url": self.serve_url,
                "known_items": catalogue_item_ids(load_artifact(resolve_artifact(self.layout.artifact))),
                "topics": asdict(self.layout.topics()), "mode": "transactional", "flink_cluster": "application",
                "shards": self.layout.shards, "group_id": "reaseq-cluster-job",
                "transactional_id_prefix": "reaseq-cluster-job"}

    def _submit(self, progress) -> None:
        config = self.work / "job-config.json"
        config.write_text(json.dumps(self.job_config()))
        member = self.state.members["jobmanager"]
        flink = flink_home() / "bin" / "flink"
        done = subprocess.run(["bash", str(flink), "run", "--detached",
                               "-m", f"{HOST}:{self.state.ports['flink-rest']}", "-pym", "streaming.job",
                               "-pyclientexec", sys.executable, "-pyexec", sys.executable,
                               str(config)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, **member.env})
        output = done.stdout + done.stderr
        job_id = next((line.split()[-1] for line in output.splitlines() if "Job has been submitted with JobID" in line),
                      None)
        if done.returncode != 0 or job_id is None:
            raise ClusterError(f"submitting the job failed (exit {done.returncode}):\n{output[-3000:]}")
        self.state.job_id = job_id
        self.save()
        wait_until("the job to run", lambda: self.rest(f"/jobs/{job_id}")["state"] == "RUNNING", 120)
        progress(f"job: {job_id} running on the session cluster (parallelism {self.layout.taskmanagers})")

    # -- status / down ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Each member alive or not, and what Kafka, Flink and the job say."""
        out: dict[str, Any] = {"work": str(self.work),
                               "members": {n: {"role": m.role, "pid": m.pid, "alive": self.alive(n)}
                                           for n, m in self.state.members.items()}}
        for key, probe in (("kafka_brokers", self.kafka_brokers),
                           ("taskmanagers", lambda: len(self.rest("/taskmanagers")["taskmanagers"])),
                           ("job", lambda: self.rest(f"/jobs/{self.state.job_id}")["state"]
                            if self.state.job_id else None)):
            try:
                out[key] = probe()
            except Exception as error:
                out[key] = f"unreachable ({type(error).__name__})"
        return out

    def down(self, progress=print) -> list[int]:
        """Stop every member (SIGTERM, then SIGKILL after 15 s); returns pids still alive after (empty)."""
        for member in self.state.members.values():
            if member.pid:
                kill_session(member.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(m.pid and session_processes(m.pid)
                                                  for m in self.state.members.values()):
            time.sleep(0.5)
        left = []
        for member in self.state.members.values():
            if member.pid:
                kill_session(member.pid, signal.SIGKILL)
        time.sleep(0.5)
        for member in self.state.members.values():
            if member.pid:
                left += session_processes(member.pid)
            member.pid = None
        if self.state_path.parent.exists():
            self.save()
        progress("cluster down" + (f"; still alive: {left}" if left else ": no process left"))
        return left
