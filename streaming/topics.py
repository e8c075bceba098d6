"""The Kafka topics of the pipeline and an idempotent way to create them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    """One topic: name, partitions, replication factor and topic-level configs."""

    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicsConfig:
    """Names and layout of the pipeline's topics.

    Events, user state and scores are all keyed by user id and share one partition count, so a
    user's events and outputs land on the same partition index.
    """

    events: str = "reaseq.events"
    user_state: str = "reaseq.user-state"
    user_scores: str = "reaseq.user-scores"
    dead_letter: str = "reaseq.dead-letter"
    partitions: int = 4
    dead_letter_partitions: int = 1
    replication_factor: int = 1

    def specs(self) -> list[TopicSpec]:
        """The four topics with their partitions and configs (user state is compacted)."""
        rf = self.replication_factor
        return [
            TopicSpec(self.events, self.partitions, rf),
            TopicSpec(self.user_state, self.partitions, rf, {"cleanup.policy": "compact"}),
            TopicSpec(self.user_scores, self.partitions, rf),
            TopicSpec(self.dead_letter, self.dead_letter_partitions, rf),
        ]


def ensure_topics(
    bootstrap_servers: str,
    config: TopicsConfig | None = None,
    *,
    timeout_ms: int = 30_000,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (their partitions and configs are not changed).
    Blocks until every topic has a leader for each partition.
    """
    specs = (config or TopicsConfig()).specs()
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="reaseq-topics",
        request_timeout_ms=timeout_ms,
    )
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:  # one request per topic: a racing creator only affects its own
            try:
                admin.create_topics(
                    {
                        spec.name: {
                            "num_partitions": spec.partitions,
                            "replication_factor": spec.replication_factor,
                            "configs": dict(spec.configs),
                        }
                    },
                    timeout_ms=timeout_ms,
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        admin.wait_for_topics([s.name for s in specs], timeout_ms=timeout_ms)
        return created
    finally:
        admin.close()
