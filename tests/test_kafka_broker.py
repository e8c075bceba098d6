"""The embedded Apache Kafka broker, the topic set-up and the JVM jar resolution.

Starts real Kafka (KRaft, single node) on 127.0.0.1 with free ports; every broker started here
is stopped here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streaming import jvm_deps
from streaming.jvm_deps import JvmJars, JvmSetupError, pom_hash, resolve_jars
from streaming.kafka_broker import EmbeddedKafka
from streaming.procnet import is_loopback, listening_sockets
from streaming.topics import TopicsConfig, ensure_topics

REPO = Path(__file__).resolve().parents[1]
TOPICS = TopicsConfig()

# -- helpers ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _read_to_end(consumer: KafkaConsumer, tps: list[TopicPartition]) -> list:
    """Every record of ``tps`` up to their end offsets (the LSO under read_committed)."""
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    records = []
    deadline = time.monotonic() + 20
    while any(consumer.position(tp) < end[tp] for tp in tps):
        assert time.monotonic() < deadline, "timed out reading back"
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jars() -> JvmJars:
    return resolve_jars()


@pytest.fixture(scope="module")
def kafka(jars: JvmJars) -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka(jars=jars) as broker:
        ensure_topics(broker.bootstrap_servers, TOPICS)
        yield broker


@pytest.fixture
def admin(kafka: EmbeddedKafka) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    yield client
    client.close()


# -- the jars -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_and_connector_jars_are_kept_apart(jars: JvmJars) -> None:
    broker = {p.name for p in jars.broker_dir.glob("*.jar")}
    assert any(n.startswith("kafka_2.13-4.") for n in broker)
    assert any(n.startswith("log4j-slf4j-impl-") for n in broker)
    assert not any("flink" in n for n in broker)
    connector = [p.name for p in jars.connector_jars]
    assert any(n.startswith("flink-sql-connector-kafka-") for n in connector)
    assert not any(n.startswith(("kafka-clients", "kafka_2.13")) for n in connector)
    assert all(u.startswith("file://") for u in jars.pipeline_jars.split(";"))


def test_missing_mvn_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        jvm_deps.shutil, "which", lambda name, *a, **k: None if name == "mvn" else real_which(name)
    )
    with pytest.raises(JvmSetupError, match=r"install Maven 3\.8\+ \(apt-get install maven\)"):
        resolve_jars(cache=tmp_path)


def test_missing_java_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(jvm_deps.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(JvmSetupError, match=r"install OpenJDK 17"):
        resolve_jars(cache=tmp_path)


def test_resolved_cache_needs_no_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text("<project/>")
    root = tmp_path / "cache" / "jvm" / pom_hash(pom)
    for group, name in (("broker", "a.jar"), ("connector", "b.jar")):
        (root / group).mkdir(parents=True)
        (root / group / name).write_bytes(b"")
    (root / "resolved.json").write_text(json.dumps({"broker": ["a.jar"], "connector": ["b.jar"]}))
    monkeypatch.setattr(jvm_deps.shutil, "which", lambda name, *a, **k: None)
    jars = resolve_jars(cache=tmp_path / "cache", pom=pom, glue=None)  # the glue jar: test_flink_kafka_io
    assert jars.broker_dir == root / "broker"
    assert jars.connector_jars == (root / "connector" / "b.jar",)


# -- the broker ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_topics_have_their_partitions_and_policies(
    kafka: EmbeddedKafka, admin: KafkaAdminClient
) -> None:
    assert ensure_topics(kafka.bootstrap_servers, TOPICS) == []  # idempotent
    described = {t["name"]: t for t in admin.describe_topics([s.name for s in TOPICS.specs()])}
    for spec in TOPICS.specs():
        assert len(described[spec.name]["partitions"]) == spec.partitions
    assert len(described["reaseq.events"]["partitions"]) == 4
    resources = [ConfigResource(ConfigResourceType.TOPIC, t, {"cleanup.policy": None})
                 for t in (TOPICS.user_state, TOPICS.events)]
    configs = admin.describe_configs(resources, config_filter="all")["topic"]
    assert configs[TOPICS.user_state]["cleanup.policy"]["value"] == "compact"
    assert configs[TOPICS.events]["cleanup.policy"]["value"] == "delete"


@pytest.mark.slow
def test_produce_consume_round_trip(kafka: EmbeddedKafka) -> None:
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    sent = [(f"user-{i % 7}".encode(), f"event-{i}".encode()) for i in range(300)]
    futures = [producer.send(TOPICS.events, key=k, value=v) for k, v in sent]
    producer.flush()
    assert {f.get(timeout=10).partition for f in futures} == set(range(TOPICS.partitions))
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    tps = [TopicPartition(TOPICS.events, p) for p in range(TOPICS.partitions)]
    got = _read_to_end(consumer, tps)
    consumer.close()
    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    for key in {k for k, _ in sent}:  # per key (one partition), order is kept
        in_log = sorted((r for r in got if r.key == key), key=lambda r: r.offset)
        assert [r.value for r in in_log] == [v for k, v in sent if k == key]


@pytest.mark.slow
def test_aborted_transactions_are_invisible_to_read_committed(kafka: EmbeddedKafka) -> None:
    topic = TOPICS.user_scores
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, transactional_id="reaseq-test-tx"
    )
    producer.init_transactions()
    for value, commit in ((b"committed-1", True), (b"aborted-1", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.send(topic, key=b"u1", value=value, partition=0)
        producer.send(topic, key=b"u1", value=value + b"b", partition=0)
        producer.flush()
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()

    tps = [TopicPartition(topic, 0)]
    committed = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, isolation_level="read_committed"
    )
    uncommitted = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, isolation_level="read_uncommitted"
    )
    try:
        seen = [r.value for r in _read_to_end(committed, tps)]
        raw = [r.value for r in _read_to_end(uncommitted, tps)]
    finally:
        committed.close()
        uncommitted.close()
    assert seen == [b"committed-1", b"committed-1b", b"committed-2", b"committed-2b"]
    assert b"aborted-1" in raw  # the aborted records were written, then hidden


@pytest.mark.slow
def test_broker_listens_on_loopback_only(kafka: EmbeddedKafka) -> None:
    assert kafka.pid is not None
    sockets = listening_sockets(kafka.pid)
    ports = {port for _, port in sockets}
    assert {kafka.broker_port, kafka.controller_port} <= ports
    assert all(is_loopback(addr) for addr, _ in sockets), sockets
    ss = shutil.which("ss")
    if ss:  # cross-check with ss(8) where it is installed
        out = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True, check=True).stdout
        mine = [line.split()[3] for line in out.splitlines() if f"pid={kafka.pid}," in line]
        assert mine and all(a.startswith(("127.", "[::ffff:127.", "[::1]")) for a in mine), mine


@pytest.mark.slow
def test_ctrl_c_in_the_with_block_stops_the_broker(jars: JvmJars) -> None:
    with pytest.raises(KeyboardInterrupt), EmbeddedKafka(jars=jars) as broker:
        pid, work_dir = broker.pid, broker.work_dir
        assert pid is not None and _alive(pid)
        raise KeyboardInterrupt
    assert not _alive(pid)
    assert work_dir is not None and not work_dir.exists()
    assert not broker.is_running()


@pytest.mark.slow
def test_exit_without_stop_leaves_no_process(jars: JvmJars, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from streaming.jvm_deps import JvmJars
        from streaming.kafka_broker import EmbeddedKafka
        jars = JvmJars(Path(sys.argv[1]), ())
        broker = EmbeddedKafka(jars=jars).start()
        print(json.dumps({"pid": broker.pid, "work_dir": str(broker.work_dir)}), flush=True)
        sys.exit(3)  # no stop(): atexit must do it
        """
    )
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", script, str(jars.broker_dir)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert _wait_gone(info["pid"])
    assert not Path(info["work_dir"]).exists()
