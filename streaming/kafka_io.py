"""Thin PyFlink adapters for Kafka: raw records in, per-record topic and key out.

PyFlink's Python wrappers can neither hand a job the raw value bytes of a Kafka record (with its
partition, offset and timestamp) nor give each output record its own key. Two small Java classes
do that (``streaming/jvm/glue``, built into the cache by :mod:`streaming.jvm_deps`); this module
plugs them into the connector's Java builders through py4j::

    conf = flink_configuration(resolve_jars(), ckpt_dir, 2_000)  # before any other PyFlink call
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    source = raw_kafka_source(servers, "reaseq.events", "reaseq-job", "committed")
    rows = raw_stream(env, source)                      # Row(key, value, partition, offset, timestamp)
    out = rows.map(route, output_type=OUTPUT_TYPE)      # Row(topic, key, value)
    out.sink_to(keyed_kafka_sink(servers, exactly_once=True, transactional_id_prefix="reaseq-job"))

The glue jar must be in ``pipeline.jars`` (``flink_configuration`` puts it there) before the
adapters are built: setting ``pipeline.jars`` on a Configuration loads the jars into the gateway.
"""

from __future__ import annotations

import os
import site
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pyflink import java_gateway as pyflink_gateway
from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
    KafkaTopicPartition,
)
from pyflink.java_gateway import get_gateway

from streaming.jvm_deps import JvmJars

LOOPBACK = "127.0.0.1"
DESERIALIZER_CLASS = "io.reaseq.flink.RawRecordDeserializer"
SERIALIZER_CLASS = "io.reaseq.flink.TopicKeyValueSerializer"
SHARDED_DESERIALIZER_CLASS = "io.reaseq.flink.ShardedRecordDeserializer"

RAW_FIELDS = ["key", "value", "partition", "offset", "timestamp"]
#: Type of the rows :func:`raw_kafka_source` produces: key/value bytes (key may be None), partition,
#: offset and the Kafka record timestamp (epoch ms).
RAW_TYPE = Types.ROW_NAMED(
    RAW_FIELDS,
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG(), Types.LONG()],
)
#: Type of the rows of :func:`raw_kafka_source` with ``shards``: the user's shard and the raw row.
SHARDED_TYPE = Types.ROW_NAMED(["shard", "record"], [Types.INT(), RAW_TYPE])
#: Type of the rows :func:`keyed_kafka_sink` consumes: target topic, key bytes, value bytes.
OUTPUT_TYPE = Types.ROW_NAMED(
    ["topic", "key", "value"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)

Starting = Literal["earliest", "committed", "latest"]


def _java_object(class_name: str, *args: object) -> object:
    """A new instance of a glue class, or a clear error when the glue jar is not loaded."""
    jvm = get_gateway().jvm
    try:
        cls = jvm
        for part in class_name.split("."):
            cls = getattr(cls, part)
        return cls(*args)
    except Exception as exc:  # py4j raises a generic error for an unknown class
        raise RuntimeError(
            f"Java class {class_name} is not loaded: put the glue jar (streaming.jvm_deps.resolve_jars()"
            f".pipeline_jars) in pipeline.jars, e.g. with flink_configuration(), before building Kafka adapters"
        ) from exc


def _starting_offsets(starting: Starting) -> KafkaOffsetsInitializer:
    if starting == "earliest":
        return KafkaOffsetsInitializer.earliest()
    if starting == "latest":
        return KafkaOffsetsInitializer.latest()
    if starting == "committed":  # the group's committed offsets; from the start when it has none
        return KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)
    raise ValueError(f"starting must be 'earliest', 'committed' or 'latest', not {starting!r}")


def raw_kafka_source(
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    starting: Starting,
    stopping_offsets: Mapping[int, int] | None = None,
    properties: Mapping[str, str] | None = None,
    shards: int | None = None,
) -> KafkaSource:
    """A KafkaSource of ``Row(key, value, partition, offset, timestamp)`` with the records' own bytes.

    With ``shards``, rows are :data:`SHARDED_TYPE` instead, ``Row(shard, Row(key, value, …))``, the
    shard of the JSON value's ``user_id`` computed in Java (see :func:`keyed_by_shard`).

    Reads with ``isolation.level=read_committed``. ``starting='committed'`` resumes from the
    group's committed offsets (earliest when it has none); a restore from a checkpoint or savepoint
    uses the offsets in the snapshot instead. ``stopping_offsets`` ({partition: offset, exclusive})
    makes the source bounded. ``properties`` are extra Kafka consumer / source settings.
    """
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_starting_offsets(_starting_offsets(starting))
        .set_property("isolation.level", "read_committed")
    )
    for key, value in (properties or {}).items():
        builder.set_property(key, str(value))
    if stopping_offsets is not None:
        stops = {KafkaTopicPartition(topic, int(p)): int(off) for p, off in stopping_offsets.items()}
        builder.set_bounded(KafkaOffsetsInitializer.offsets(stops))
    deserializer = (_java_object(DESERIALIZER_CLASS) if shards is None
                    else _java_object(SHARDED_DESERIALIZER_CLASS, int(shards)))
    builder._j_builder.setDeserializer(deserializer)
    return builder.build()


def keyed_by_shard(sharded: DataStream) -> KeyedStream:
    """Key a :data:`SHARDED_TYPE` stream by its shard in Java: a keyed Python operator on the result gets
    the raw rows (:data:`RAW_TYPE`) and the shard as its current key.

    ``DataStream.key_by`` would run a Python function per record only to build the ``Row(key, value)``
    that PyFlink's keyed operators read; the sharded source emits that row already, so this does the
    rest of what ``key_by`` does (Java ``keyBy`` on field 0) and skips one Python crossing per event.
    """
    gateway = get_gateway()
    j_keyed = sharded._j_data_stream.keyBy(gateway.jvm.KeyByKeySelector(),
                                           Types.ROW([Types.INT()]).get_java_type_info())
    return KeyedStream(j_keyed, RAW_TYPE, sharded)


def raw_stream(env: StreamExecutionEnvironment, source: KafkaSource, name: str = "kafka-source") -> DataStream:
    """``env.from_source`` for :func:`raw_kafka_source`, typed :data:`RAW_TYPE`, no watermarks."""
    return env.from_source(source, WatermarkStrategy.no_watermarks(), name, RAW_TYPE)


def keyed_kafka_sink(
    bootstrap_servers: str,
    exactly_once: bool,
    transactional_id_prefix: str,
    transaction_timeout_ms: int = 600_000,
    properties: Mapping[str, str] | None = None,
) -> KafkaSink:
    """A KafkaSink of :data:`OUTPUT_TYPE` rows: each ``Row(topic, key, value)`` goes to its own topic.

    ``exactly_once`` writes in Kafka transactions committed on checkpoints (readers need
    ``isolation.level=read_committed``; the prefix must be unique per job on the cluster and stable
    across its restarts); otherwise AT_LEAST_ONCE. ``transaction_timeout_ms`` must not exceed the
    broker's ``transaction.max.timeout.ms``.
    """
    guarantee = DeliveryGuarantee.EXACTLY_ONCE if exactly_once else DeliveryGuarantee.AT_LEAST_ONCE
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_delivery_guarantee(guarantee)
        .set_transactional_id_prefix(transactional_id_prefix)
        .set_property("transaction.timeout.ms", str(int(transaction_timeout_ms)))
    )
    for key, value in (properties or {}).items():
        builder.set_property(key, str(value))
    # The Python set_record_serializer introspects the Java schema's fields; the glue class has none.
    builder._j_builder.setRecordSerializer(_java_object(SERIALIZER_CLASS))
    return builder.build()


def python_worker_path(extra: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Folders the Python workers need: ``extra``, this project's root and the venv's site-packages.

    In thread mode the UDFs run in an interpreter embedded in Flink's JVM (pemja): it does not
    read the venv's site-packages nor its ``.pth`` files (the editable install), so without
    these folders on PYTHONPATH it fails with ``No module named 'pemja'`` or cannot import the
    project.
    """
    project_root = Path(__file__).resolve().parents[1]
    folders = [str(Path(p).resolve()) for p in extra]
    folders += [str(project_root), *site.getsitepackages()]
    return list(dict.fromkeys(folders))


def ensure_pythonpath(extra: Sequence[str | os.PathLike[str]] = ()) -> str:
    """Prepend :func:`python_worker_path` folders missing from ``os.environ['PYTHONPATH']``; return it.

    Takes effect for the JVM PyFlink starts next (its gateway inherits this environment), so call
    it before the first PyFlink call that starts the gateway.
    """
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    missing = [p for p in python_worker_path(extra) if p not in current]
    if missing and pyflink_gateway._gateway is not None:
        warnings.warn(
            f"PyFlink's JVM is already running without {missing} on its PYTHONPATH: thread-mode Python "
            "workers may fail (No module named 'pemja'); build the Flink configuration first",
            RuntimeWarning,
            stacklevel=3,
        )
    os.environ["PYTHONPATH"] = os.pathsep.join([*missing, *current])
    return os.environ["PYTHONPATH"]


def is_uri(location: str | os.PathLike[str]) -> bool:
    """'s3://bucket/x', 'file:///tmp/x', 'hdfs://…' are URIs; '/tmp/x' and 'ckpt' are local paths."""
    return "://" in str(location)


def location_uri(location: str | os.PathLike[str]) -> str:
    """A checkpoint or savepoint location as Flink takes it: URIs unchanged (an object store is never turned
    into a local folder), local paths made absolute file:// URIs."""
    return str(location) if is_uri(location) else Path(location).resolve().as_uri()


def flink_configuration(
    jars: JvmJars | str,
    checkpoint_dir: str | os.PathLike[str],
    checkpoint_interval_ms: int,
    thread_mode: bool = True,
    parallelism: int = 1,
    *,
    retained_checkpoints: int = 2,
    restart_attempts: int = 3,
    restart_delay_ms: int = 2_000,
    rest_port: int = 0,
    restore_from: str | os.PathLike[str] | None = None,
    python_path: Sequence[str | os.PathLike[str]] = (),
    extra: Mapping[str, str] | None = None,
) -> Configuration:
    """A PyFlink Configuration for a local (or embedded) job with the Kafka glue, all on 127.0.0.1.

    ``jars`` is :func:`~streaming.jvm_deps.resolve_jars`'s result or its ``pipeline_jars`` string.
    Sets the venv's Python for the workers, thread (or process) execution mode, checkpoints into
    ``checkpoint_dir`` every ``checkpoint_interval_ms`` (retained on cancellation), a fixed-delay
    restart strategy and every bind/host address to loopback (``rest_port`` 0: any free port).
    ``restore_from`` (a checkpoint or savepoint folder) sets ``execution.state-recovery.path``;
    ``extra`` entries are set last and win.

    Side effects on this process's environment, so call it before anything else starts PyFlink's
    gateway: completes ``PYTHONPATH`` (:func:`ensure_pythonpath`; ``python_path`` adds folders,
    e.g. where the job's UDF modules live), which thread mode needs; in thread mode also keeps
    PyFlink from opening its unused Beam loopback server on all interfaces.
    """
    ensure_pythonpath(python_path)
    if thread_mode:
        # Else, in local runs, PyFlink's execute() starts a Beam "loopback" worker pool in this process
        # on [::]:0 (all interfaces); thread mode never uses it. PyFlink's own tests use this switch.
        os.environ.setdefault("_python_worker_execution_mode", "process")
    settings = {
        "pipeline.jars": jars.pipeline_jars if isinstance(jars, JvmJars) else jars,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": "thread" if thread_mode else "process",
        "parallelism.default": str(parallelism),
        "execution.runtime-mode": "STREAMING",
        "execution.checkpointing.interval": f"{int(checkpoint_interval_ms)} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": location_uri(checkpoint_dir),
        "execution.checkpointing.num-retained": str(retained_checkpoints),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{int(restart_delay_ms)} ms",
        "rest.bind-address": LOOPBACK,
        "rest.address": LOOPBACK,
        "rest.port": str(rest_port),
        "rest.bind-port": str(rest_port),
        "jobmanager.bind-host": LOOPBACK,
        "jobmanager.rpc.address": LOOPBACK,
        "taskmanager.bind-host": LOOPBACK,
        "taskmanager.host": LOOPBACK,
    }
    if restore_from is not None:
        settings["execution.state-recovery.path"] = (str(restore_from) if is_uri(restore_from)
                                                     else str(Path(restore_from).resolve()))
    settings.update(extra or {})
    conf = Configuration()
    for key, value in settings.items():
        conf.set_string(key, value)
    return conf
