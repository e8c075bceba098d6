"""The job's configuration as data (`reaseq stream job --help` lists the knobs) and its key rule."""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field

from streaming.behavior import RefreshPolicy
from streaming.scoring import RetryPolicy
from streaming.state import DEFAULT_MAX_RECENT
from streaming.topics import TopicsConfig

MODES = ("transactional", "low-latency")
STATE_RECORDS = ("every-event", "with-scores")
FLINK_CLUSTERS = ("local", "application")
LOCAL_CHECKPOINTS = "/tmp/reaseq-checkpoints"


@dataclass
class StreamConfig:
    """Everything the job needs, as data."""

    bootstrap_servers: str
    serve_url: str
    known_items: list[str]
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    mode: str = "low-latency"
    checkpoint_dir: str = LOCAL_CHECKPOINTS
    checkpoint_interval_ms: int = 2000
    group_id: str = "reaseq-job"
    transactional_id_prefix: str = "reaseq-job"
    starting_offsets: str = "earliest"
    stopping_offsets: dict[int, int] | None = None  # bounded run (tests, benchmarks)
    shards: int = 4
    # Scoring runs in the background, one Serve call in flight per shard: while it is out, the shard's
    # events keep coming and its next batch grows (up to batch_size events). A call goes out when
    # nothing of the shard is in flight and batch_size events wait, or the oldest has waited max_wait_ms.
    batch_size: int = 1024
    max_wait_ms: int = 20
    poll_ms: int = 5  # how often a shard with a call in flight looks for its answer when no event comes
    # a failed scoring call (see streaming/scoring.py): retried after a backoff doubling from
    # retry_backoff_ms to retry_max_backoff_ms for as long as Serve is down; a batch that fails
    # max_batch_failures times while Serve answers (or that Serve rejects) is split to find the users
    # Serve will not score, which go to the dead-letter topic (reason `unscorable`). A shard holding
    # max_pending requests stops taking events until Serve takes some (backpressure on Kafka).
    retry_backoff_ms: int = 200
    retry_max_backoff_ms: int = 5_000
    max_batch_failures: int = 3
    max_pending: int = 8_192
    serve_timeout_s: float = 5.0
    top_k: int = 10
    # "with-scores": the users' newest states go out with each scores call (and each refresh), so the
    # compacted topic ends at every user's newest state with far fewer records (versions rise per user
    # but skip; while Serve is down no state goes out); "every-event": a record per event and per refresh
    state_records: str = "with-scores"
    max_recent: int = DEFAULT_MAX_RECENT
    state_ttl_days: float = 30.0
    state_cache_size: int = 100_000  # users kept decoded in memory (write-through; keyed state stays the truth)
    parallelism: int = 1
    restore_from: str | None = None
    job_name: str = "reaseq-stream"
    # "local": the job starts its own mini-cluster and configures it (connector jars resolved from the POM,
    # checkpoints under checkpoint_dir, restarts, loopback addresses, extra_flink_config); "application":
    # it runs inside a Flink cluster (the Kubernetes operator's application mode, a session cluster) and
    # takes everything Flink-level from that cluster's configuration: checkpoint_dir, restore_from,
    # parallelism and extra_flink_config must then be left unset.
    flink_cluster: str = "local"
    extra_flink_config: dict[str, str] = field(default_factory=dict)
    # nearline behaviour inference: the BehaviorReasoner route, None = off. A user is refreshed after
    # `behavior_refresh_events` new events or `behavior_refresh_ms` (streaming/behavior.py), in the
    # background, one call in flight per shard; scores never wait for it. Budget (streaming/refresher.py):
    # refreshes are sent only while the job keeps up (events reach it within behavior_max_lag_ms of
    # their Kafka timestamp, and the shard owes at most one batch of scores), so when it falls behind,
    # inferences get older before scores get later.
    behavior_url: str | None = None
    behavior_refresh_events: int = 5
    behavior_refresh_ms: int = 60_000
    behavior_batch_size: int = 64
    behavior_max_lag_ms: int = 2_000  # refreshes wait while events reach the job later than this (behind)
    behavior_timeout_s: float = 10.0
    # extra Kafka client settings for the source and the sink (e.g. TLS: security.protocol, ssl.*)
    kafka_properties: dict[str, str] = field(default_factory=dict)
    # Flink's Prometheus reporter (job + Kafka connector metrics); None = off. It has no host option
    # and listens on all interfaces.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.shards < 1 or self.batch_size < 1 or self.behavior_batch_size < 1:
            raise ValueError("shards, batch_size and behavior_batch_size must be >= 1")
        if self.state_records not in STATE_RECORDS:
            raise ValueError(f"state_records must be one of {STATE_RECORDS}, got {self.state_records!r}")
        if self.max_wait_ms < 1 or self.poll_ms < 1:
            raise ValueError("max_wait_ms and poll_ms must be >= 1")
        if self.flink_cluster not in FLINK_CLUSTERS:
            raise ValueError(f"flink_cluster must be one of {FLINK_CLUSTERS}, got {self.flink_cluster!r}")
        if self.flink_cluster == "application":
            overridden = [name for name, value in (("restore_from", self.restore_from),
                                                   ("extra_flink_config", self.extra_flink_config),
                                                   ("metrics_port", self.metrics_port)) if value]
            if self.checkpoint_dir != LOCAL_CHECKPOINTS:
                overridden.append("checkpoint_dir")
            if self.parallelism != 1:
                overridden.append("parallelism")
            if overridden:
                raise ValueError(f"flink_cluster 'application' takes Flink settings from the cluster; remove "
                                 f"{', '.join(overridden)} from the job config (set them in the cluster's "
                                 "flinkConfiguration)")
        if self.max_pending < self.batch_size:
            raise ValueError(f"max_pending ({self.max_pending}) must be >= batch_size ({self.batch_size})")
        self.retry_policy()
        self.refresh_policy()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_backoff_ms, self.retry_max_backoff_ms, self.max_batch_failures)

    def refresh_policy(self) -> RefreshPolicy:
        return RefreshPolicy(self.behavior_refresh_events, self.behavior_refresh_ms)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> StreamConfig:
        data = json.loads(text)
        data["topics"] = TopicsConfig(**data.get("topics", {}))
        if data.get("stopping_offsets"):
            data["stopping_offsets"] = {int(k): int(v) for k, v in data["stopping_offsets"].items()}
        return StreamConfig(**data)


def shard_of(user_id: str, shards: int) -> int:
    """Stable shard of a user id (crc32, same in every process and run)."""
    return zlib.crc32(user_id.encode()) % shards
