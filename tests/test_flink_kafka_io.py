"""The Kafka glue for PyFlink: raw records in, per-record topic and key out, exactly once.

Real Apache Kafka (embedded, 127.0.0.1) and a real PyFlink local job. The job runs in a child
process (this file run as a script) so that its JVM gateway, PYTHONPATH and class loader are its
own and end with it; every process started here is stopped here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyflink.common import Row

from streaming import jvm_deps
from streaming.jvm_deps import JvmJars, JvmSetupError, glue_hash, resolve_glue_jar, resolve_jars
from streaming.procnet import is_loopback

IN_TOPIC = "io.in"
TEXT_TOPIC = "io.text"
BINARY_TOPIC = "io.binary"
META_TOPIC = "io.meta"
N_RECORDS = 2_000
BASE_TS = 1_700_000_000_000
JOB_TIMEOUT_S = 120


# -- the job (runs in the child process) -------------------------------------------------------


def route(row: Row) -> Iterator[Row]:
    """Original key and bytes to the text or binary topic by UTF-8 validity, plus a metadata record."""
    key, value, partition, offset, timestamp = row[0], row[1], row[2], row[3], row[4]
    try:
        value.decode("utf-8")
        topic = TEXT_TOPIC
    except UnicodeDecodeError:
        topic = BINARY_TOPIC
    yield Row(topic, key, value)
    meta = {"partition": partition, "offset": offset, "timestamp": timestamp, "value": value.hex()}
    yield Row(META_TOPIC, key, json.dumps(meta).encode())


def _run_job(args: dict) -> None:
    """Build and run the bounded job; print timings and the TCP listeners (JVM, this process) as JSON."""
    t0 = time.monotonic()
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    from streaming.kafka_io import OUTPUT_TYPE, flink_configuration, keyed_kafka_sink, raw_kafka_source, raw_stream
    from streaming.procnet import listening_sockets

    conf = flink_configuration(args["jars"], args["checkpoint_dir"], 1_000, thread_mode=True, parallelism=1)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    stops = {int(p): off for p, off in args["stops"].items()}
    source = raw_kafka_source(args["servers"], IN_TOPIC, "io-test", "earliest", stopping_offsets=stops)
    sink = keyed_kafka_sink(args["servers"], exactly_once=True, transactional_id_prefix=args["txn_prefix"],
                            transaction_timeout_ms=60_000)
    raw_stream(env, source).flat_map(route, output_type=OUTPUT_TYPE).sink_to(sink)
    jvm_pid = int(get_gateway().jvm.java.lang.ProcessHandle.current().pid())
    t1 = time.monotonic()
    result = env.execute_async("kafka-io-test").get_job_execution_result()
    listeners: set[tuple[str, int]] = set()
    while not result.done():  # sample the listeners while the job runs (thread mode: the Python worker is in the JVM)
        listeners.update(listening_sockets(jvm_pid) + listening_sockets(os.getpid()))
        time.sleep(0.3)
    net_ms = result.result().get_net_runtime()
    t2 = time.monotonic()
    print(json.dumps({"setup_s": round(t1 - t0, 2), "execute_s": round(t2 - t1, 2), "net_runtime_ms": net_ms,
                      "listeners": sorted(listeners)}))


# -- helpers -----------------------------------------------------------------------------------


def _records() -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs: mostly JSON text, every 7th value not UTF-8, a few null keys."""
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(N_RECORDS):
        key = None if i % 101 == 0 else f"user-{i % 37}".encode()
        if i % 7 == 3:
            value = b"\xff\xfe\x00" + i.to_bytes(4, "big") + bytes(range(128, 256))
        else:
            value = json.dumps({"i": i, "text": "ü€" * (i % 5)}).encode()
        out.append((key, value))
    return out


def _read_all(servers: str, topics: list[str]) -> list:
    """Every committed record of ``topics`` up to their end offsets (read_committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=servers, isolation_level="read_committed", enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, "timed out reading back"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jars() -> JvmJars:
    return resolve_jars()


@pytest.fixture(scope="module")
def kafka(jars: JvmJars) -> Iterator[str]:
    from kafka.admin import KafkaAdminClient, NewTopic

    from streaming.kafka_broker import EmbeddedKafka

    with EmbeddedKafka(jars=jars) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        try:
            admin.create_topics([NewTopic(t, 2, 1) for t in (IN_TOPIC, TEXT_TOPIC, BINARY_TOPIC, META_TOPIC)])
            admin.wait_for_topics([IN_TOPIC, TEXT_TOPIC, BINARY_TOPIC, META_TOPIC], timeout_ms=30_000)
        finally:
            admin.close()
        yield broker.bootstrap_servers


# -- the glue jar ------------------------------------------------------------------------------


def test_glue_jar_is_in_pipeline_jars(jars: JvmJars) -> None:
    assert jars.glue_jar is not None
    assert jars.glue_jar.name.startswith("reaseq-flink-glue-")
    assert jars.glue_jar.resolve().as_uri() in jars.pipeline_jars.split(";")
    assert any(p.name.startswith("flink-sql-connector-kafka-") for p in jars.connector_jars)
    with zipfile.ZipFile(jars.glue_jar) as jar:
        names = set(jar.namelist())
    assert {"io/reaseq/flink/RawRecordDeserializer.class", "io/reaseq/flink/TopicKeyValueSerializer.class",
            "io/reaseq/flink/ShardedRecordDeserializer.class"} <= names


SHARD_CHECK = """
import io.reaseq.flink.ShardedRecordDeserializer;
import java.nio.file.Files;
import java.nio.file.Path;

public class ShardCheck {
    public static void main(String[] args) throws Exception {
        int shards = Integer.parseInt(args[0]);
        for (int i = 1; i < args.length; i++) {
            byte[] value = Files.readAllBytes(Path.of(args[i]));
            System.out.println(ShardedRecordDeserializer.shardOf(value, shards));
        }
    }
}
"""


def test_the_source_shards_users_as_the_job_does_and_never_throws(jars: JvmJars, tmp_path: Path) -> None:
    """The Java deserializer keys each record by crc32(user_id) % shards, the job's own `shard_of`, so a
    user's state lives in one shard; records it cannot read go to shard 0 (the job dead-letters them)."""
    import pyflink

    from streaming.config import shard_of

    users = ["1", "42", "943", "user-é", "ユーザー", "a" * 300]
    values = [json.dumps({"event_id": f"e{i}", "user_id": u, "item_id": "1", "action": "rate", "ts": 1}).encode()
              for i, u in enumerate(users)]
    hostile = [b"", b"not json", b"[1,2]", b'{"user_id": 7}', b'{"x": {"user_id": "9"}}', b'{"user_id": "5"',
               b"\xff\xfe", b'{"user_id": "1", "user_id": "2"}']
    expected = [shard_of(u, 7) for u in users] + [0, 0, 0, 0, 0, shard_of("5", 7), 0, shard_of("2", 7)]
    paths = []
    for i, value in enumerate(values + hostile):
        paths.append(tmp_path / f"v{i}")
        paths[-1].write_bytes(value)
    source = tmp_path / "ShardCheck.java"
    source.write_text(SHARD_CHECK)
    dist = sorted((Path(pyflink.__file__).parent / "lib").glob("flink-dist-*.jar"))
    classpath = ":".join(str(p) for p in [jars.glue_jar, *jars.connector_jars, *dist])
    run = subprocess.run(["java", "-cp", classpath, str(source), "7", *map(str, paths)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [int(line) for line in run.stdout.split()] == expected


def _fake_glue(tmp_path: Path) -> Path:
    glue = tmp_path / "jvm" / "glue"
    (glue / "src").mkdir(parents=True)
    (glue / "pom.xml").write_text("<project/>")
    (glue / "src" / "A.java").write_text("class A {}")
    (glue.parent / "pom.xml").write_text("<project/>")
    return glue


def test_cached_glue_jar_needs_no_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    glue = _fake_glue(tmp_path)
    root = tmp_path / "cache" / "jvm" / f"glue-{glue_hash(glue)}"
    root.mkdir(parents=True)
    (root / "reaseq-flink-glue-0.1.0.jar").write_bytes(b"")
    (root / "resolved.json").write_text(json.dumps({"jar": "reaseq-flink-glue-0.1.0.jar"}))
    monkeypatch.setattr(jvm_deps.shutil, "which", lambda name, *a, **k: None)
    assert resolve_glue_jar(tmp_path / "cache", glue=glue) == root / "reaseq-flink-glue-0.1.0.jar"


def test_glue_hash_follows_sources_and_poms(tmp_path: Path) -> None:
    glue = _fake_glue(tmp_path)
    before = glue_hash(glue)
    (glue / "src" / "A.java").write_text("class A { int x; }")
    edited = glue_hash(glue)
    (glue.parent / "pom.xml").write_text("<project><version>2</version></project>")
    assert len({before, edited, glue_hash(glue)}) == 3


def test_missing_javac_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = jvm_deps.shutil.which
    monkeypatch.setattr(jvm_deps.shutil, "which", lambda name, *a, **k: None if name == "javac" else real_which(name))
    with pytest.raises(JvmSetupError, match=r"openjdk-17-jdk-headless"):
        resolve_glue_jar(tmp_path / "cache", glue=_fake_glue(tmp_path))


# -- the job -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bounded_job_copies_raw_records_exactly_once(jars: JvmJars, kafka: str, tmp_path: Path) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    records = _records()
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5)
    futures = [
        producer.send(IN_TOPIC, key=k, value=v, partition=i % 2, timestamp_ms=BASE_TS + i)
        for i, (k, v) in enumerate(records)
    ]
    producer.flush()
    sent = [f.get(timeout=30) for f in futures]
    producer.close()
    probe = KafkaConsumer(bootstrap_servers=kafka)
    end = probe.end_offsets([TopicPartition(IN_TOPIC, p) for p in (0, 1)])
    probe.close()
    stops = {str(tp.partition): off for tp, off in end.items()}
    assert sum(stops.values()) == N_RECORDS

    args = {
        "jars": jars.pipeline_jars, "servers": kafka, "stops": stops,
        "checkpoint_dir": str(tmp_path / "checkpoints"), "txn_prefix": f"io-test-{os.getpid()}",
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, __file__, json.dumps(args)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if proc.poll() is None:  # timed out or interrupted: stop the child and its JVM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - started
    assert proc.returncode == 0, f"job failed:\n{out[-3000:]}\n{err[-6000:]}"
    report = json.loads(out.strip().splitlines()[-1])
    print(f"job process {wall:.1f} s; {report}")
    assert report["listeners"], "no listener seen"
    assert all(is_loopback(addr) for addr, _ in report["listeners"]), report["listeners"]

    # No check of the group's committed offsets here: the source commits them when a checkpoint completes,
    # and a bounded job that reads everything before its first periodic checkpoint (a fast machine) ends
    # with only the final checkpoint, whose commit Flink may cut off. Exactness is checked on the outputs;
    # the commit itself is checked where the job runs on (tests/test_stream_pipeline.py, consumer lag → 0).
    got = _read_all(kafka, [TEXT_TOPIC, BINARY_TOPIC, META_TOPIC])
    by_topic = Counter(r.topic for r in got)
    n_binary = sum(1 for i in range(N_RECORDS) if i % 7 == 3)
    assert by_topic == {TEXT_TOPIC: N_RECORDS - n_binary, BINARY_TOPIC: n_binary, META_TOPIC: N_RECORDS}

    copies = Counter((r.topic, r.key, r.value) for r in got if r.topic != META_TOPIC)
    expected = Counter((BINARY_TOPIC if i % 7 == 3 else TEXT_TOPIC, k, v) for i, (k, v) in enumerate(records))
    assert copies == expected  # every record once, original key and bytes, in the right topic

    metas = {json.loads(r.value)["value"]: (r.key, json.loads(r.value)) for r in got if r.topic == META_TOPIC}
    assert len(metas) == N_RECORDS
    for (k, v), md in zip(records, sent, strict=True):
        key, meta = metas[v.hex()]
        assert key == k
        assert (meta["partition"], meta["offset"], meta["timestamp"]) == (md.partition, md.offset, md.timestamp)


if __name__ == "__main__":
    _run_job(json.loads(sys.argv[1]))


def test_fetch_jar_moves_what_maven_copied_or_says_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streaming.jvm_deps import fetch_jar

    fake = tmp_path / "bin" / "mvn"
    fake.parent.mkdir()
    # a stand-in for `mvn dependency:copy`: writes a jar into -DoutputDirectory, or fails for "bad:*"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case $a in -Dartifact=bad:*) exit 1;; "
                    "-DoutputDirectory=*) d=${a#-DoutputDirectory=};; esac; done\necho jar > \"$d/x-1.jar\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    jar = tmp_path / "cache" / "x-1" / "x-1.jar"
    assert fetch_jar("g:x:1", jar) is None and jar.read_text() == "jar\n"
    assert fetch_jar("bad:x:1", tmp_path / "cache" / "y.jar") == "bad:x:1: mvn exit 1"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["x-1"]  # no staging left behind
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fetch_jar("g:x:1", jar) == "mvn not on PATH"
