"""The job's Python operator, a thin adapter between Flink and the pure logic.

`UserScoring` (KeyedProcessFunction on the raw Kafka rows, keyed in Java by the shard of the user id):
  each record becomes an event or a dead letter (streaming/events.py decides, and never raises);
  per-user state in MapState,
  the shard's unscored events in ListState, one background Ranker call in flight per shard
  (streaming/calls.py) and, with a BehaviorReasoner route, the nearline refresher
  (streaming/refresher.py). Answers are taken by the shard's next element or timer.

Keyed state is the source of truth (checkpointed): a pending event leaves the ListState only when its
scores record (or dead letter) is emitted, so a checkpoint taken while a call is in flight still holds
its events, and a restore sends them again. In-memory helpers only save state round trips.
"""

from __future__ import annotations

import time

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, StateTtlConfig

from monitoring import metrics as names
from streaming.calls import ShardCalls
from streaming.config import StreamConfig, shard_of
from streaming.events import REASONS, UNSCORABLE, DeadLetter, dead_letter, dead_letter_key, parse_event
from streaming.refresher import job_behind
from streaming.scoring import (
    FlushResult,
    PendingEvent,
    PendingScore,
    ranker_request,
    score_pending,
    unscorable_letter,
    with_states,
)
from streaming.state import UserState, apply_event

BYTES = Types.PICKLED_BYTE_ARRAY()  # pickle.dumps(bytes) is a copy; PRIMITIVE_ARRAY converts byte by byte
METRICS_EVERY_MS = 200


def _now_ms() -> int:
    return int(time.time() * 1000)


class UserScoring(KeyedProcessFunction):
    """Validation, per-user state and the shard's owed scores; never waits on Serve except under backpressure."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg

    def open(self, runtime_context: RuntimeContext) -> None:
        from inference.knowledge.backends import llm_calls_made
        from inference.serve.client import BehaviorClient, RankerClient

        cfg = self.cfg
        users = MapStateDescriptor("users", Types.STRING(), BYTES)
        if cfg.state_ttl_days > 0:
            from pyflink.common.time import Time

            ttl = (StateTtlConfig.new_builder(Time.milliseconds(int(cfg.state_ttl_days * 86_400_000)))
                   .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite).build())
            users.enable_time_to_live(ttl)
        self.users = runtime_context.get_map_state(users)
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", BYTES))
        self.topics = cfg.topics
        self.known = frozenset(cfg.known_items)
        self.every_event = cfg.state_records == "every-event"
        self.emitted: dict[str, int] = {}  # user → newest state version sent (with-scores mode; memory only)
        self.cache: dict[str, tuple[UserState, bytes]] = {}  # user → state and its JSON
        self.pending_counts: dict[int, int] = {}  # shard → events in its ListState (read once after a restore)
        self.next_timer: dict[int, int] = {}  # shard → the earliest timer registered and not yet fired
        self.oldest_due: dict[int, int] = {}  # shard → when its oldest unsent event must go out (ms)
        self.not_before: dict[int, int] = {}  # shard → backing off after a failed call until then (ms)
        self.failures: dict[int, int] = {}  # shard → failed calls in a row while Serve answered probes
        self.retries: dict[int, int] = {}  # shard → failed calls in a row (sets the backoff)
        self.retry = cfg.retry_policy()
        # one attempt per call: the operator retries with backoff itself
        self.client = RankerClient(cfg.serve_url, timeout_s=cfg.serve_timeout_s, retries=0)
        self.scoring: ShardCalls[tuple[int, list[PendingScore]]] = ShardCalls(workers=cfg.shards, name="score")
        group = runtime_context.get_metrics_group()
        self.m_events_in = group.counter(names.EVENTS_IN)
        self.m_dead = {reason: group.counter(f"{names.DEAD_LETTERS}_{reason}") for reason in REASONS}
        self.m_duplicates = group.counter(names.EVENTS_DUPLICATE)
        self.m_states = group.counter(names.STATES_OUT)
        self.m_scores = group.counter(names.SCORES_OUT)
        self.m_batches = group.counter(names.SCORE_BATCHES)
        self.m_errors = group.counter(names.INFERENCE_ERRORS)
        self.m_unscorable = group.counter(f"{names.DEAD_LETTERS}_{UNSCORABLE}")
        # No Python gauges here: in thread mode Flink's reporter thread would call into the embedded
        # interpreter while the task thread runs it, and a scrape crashes the JVM (SIGSEGV in pemja).
        # Counters and distributions are Java objects updated from the task thread.
        # LLM requests this process made, counted in the backends themselves (must stay 0):
        self.m_llm = group.counter(names.LLM_CALLS)
        self.llm_calls_made = llm_calls_made
        self.llm_calls_seen = llm_calls_made()
        self.m_batch_size = group.distribution(names.SCORE_BATCH_SIZE)
        self.m_latency = group.distribution(names.INFERENCE_LATENCY_MS)
        self.m_event_to_score = group.distribution(names.EVENT_TO_SCORE_MS)
        self.m_pending = group.distribution(names.PENDING_SCORES)  # the last value is exported
        self.m_staleness = group.distribution(names.BEHAVIOR_STALENESS_EVENTS)
        # counted here, added to the metrics at most every METRICS_EVERY_MS (a metric update crosses into Java)
        self.events_in = self.states_out = 0
        # how old the last event was when it was taken, and when: the job is behind while events keep
        # coming late (an idle job is not behind, however old its last event)
        self.taken_lag_ms = self.taken_at_ms = 0
        self.metrics_due = 0
        self.refresher = None
        if cfg.behavior_url:
            from streaming.refresher import NearlineRefresher

            behavior = BehaviorClient(cfg.behavior_url, timeout_s=cfg.behavior_timeout_s)
            self.refresher = NearlineRefresher(behavior.infer, cfg.refresh_policy(), cfg.behavior_batch_size,
                                               ShardCalls(workers=cfg.shards, name="behavior"))
            self.m_refreshes = group.counter(names.BEHAVIOR_REFRESHES)
            self.m_refresh_errors = group.counter(names.BEHAVIOR_REFRESH_ERRORS)
            self.m_refresh_latency = group.distribution(names.BEHAVIOR_REFRESH_LATENCY_MS)

    def close(self) -> None:
        if getattr(self, "scoring", None) is not None:
            self.scoring.close()
        if getattr(self, "refresher", None) is not None:
            self.refresher.close()

    # -- state ------------------------------------------------------------------------------------

    def _cached(self, user_id: str) -> tuple[UserState, bytes] | None:
        """The user's state and its JSON (what MapState and the user-state topic hold), or None."""
        entry = self.cache.get(user_id)
        if entry is None:
            raw = self.users.get(user_id)
            if raw is not None:
                entry = self._remember(UserState.from_json(raw), raw)
        return entry

    def _state(self, user_id: str) -> UserState | None:
        entry = self._cached(user_id)
        return entry[0] if entry is not None else None

    def _remember(self, state: UserState, encoded: bytes) -> tuple[UserState, bytes]:
        if len(self.cache) >= self.cfg.state_cache_size:
            self.cache.clear()
        entry = self.cache[state.user_id] = (state, encoded)
        return entry

    def _newest_states(self, users: set[str]):
        """State records of these users' newest states, each version once."""
        for user in users:
            entry = self._cached(user)
            if entry is not None and entry[0].version > self.emitted.get(user, 0):
                yield self._emitted(Row(self.topics.user_state, user.encode(), entry[1]), entry[0])

    def _emitted(self, row: Row, state: UserState) -> Row:
        """Count a state record going out (and, in with-scores mode, remember its version)."""
        self.states_out += 1
        if not self.every_event:
            if len(self.emitted) >= self.cfg.state_cache_size:
                self.emitted.clear()  # a forgotten user's next record repeats a version at worst, never regresses
            self.emitted[state.user_id] = state.version
        return row

    def _store(self, state: UserState):
        encoded = state.to_json()
        self.users.put(state.user_id, encoded)
        self._remember(state, encoded)
        return Row(self.topics.user_state, state.user_id.encode(), encoded)

    # -- elements and timers ----------------------------------------------------------------------

    def process_element(self, value, ctx):
        self.events_in += 1
        shard = ctx.get_current_key()
        event = parse_event(None if value[1] is None else bytes(value[1]), self.known, source_topic=self.topics.events)
        if not isinstance(event, DeadLetter) and shard_of(event.user_id, self.cfg.shards) != shard:
            # the source's JSON reader saw another user_id (e.g. a duplicated key): state must not split
            event = dead_letter(bytes(value[1]), "bad_value", "user_id is ambiguous (the source keyed it "
                                "differently); send one user_id field", self.topics.events)
        if isinstance(event, DeadLetter):
            self.m_dead[event.reason].inc()
            yield Row(self.topics.dead_letter, dead_letter_key(None if value[0] is None else bytes(value[0])),
                      event.to_json())
            self._flush_metrics_if_due()
            return
        user_id, kafka_ts = event.user_id, int(value[4])
        state, changed = apply_event(self._state(user_id), event, self.cfg.max_recent)
        if not changed:
            self.m_duplicates.inc()
            self._flush_metrics_if_due()
            return
        row = self._store(state)
        if self.every_event:
            yield self._emitted(row, state)
        self.pending.add(PendingEvent(user_id, event.event_id, kafka_ts).to_bytes())
        self.pending_counts[shard] = self._pending_count(shard) + 1
        if self.refresher is not None:
            self.refresher.note(shard, state)
        now = _now_ms()
        self.taken_lag_ms, self.taken_at_ms = now - kafka_ts, now
        if shard not in self.oldest_due:
            self.oldest_due[shard] = now + self.cfg.max_wait_ms
        yield from self._step(ctx, shard, now)
        while self.pending_counts.get(shard, 0) >= self.cfg.max_pending:
            # backpressure: this shard holds all it may; wait for Serve instead of taking more events
            if not self.scoring.busy(shard):
                time.sleep(max(0, self.not_before.get(shard, 0) - _now_ms()) / 1000)
            yield from self._step(ctx, shard, _now_ms(), wait_s=self.cfg.serve_timeout_s)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        if self.next_timer.get(shard) == timestamp:
            del self.next_timer[shard]
        yield from self._step(ctx, shard, _now_ms())

    def _timer(self, ctx, shard: int, now: int, due_ms: int) -> None:
        """Make sure the shard wakes up by `due_ms` (one timer registration, not one per element)."""
        armed = self.next_timer.get(shard)
        if armed is None or armed <= now or due_ms < armed:
            ctx.timer_service().register_processing_time_timer(due_ms)
            self.next_timer[shard] = due_ms

    def _pending_count(self, shard: int) -> int:
        """Events in the shard's ListState; read from it once after a start or restore, then counted."""
        if shard not in self.pending_counts:
            self.pending_counts[shard] = len(list(self.pending.get() or []))
        return self.pending_counts[shard]

    def _step(self, ctx, shard: int, now: int, wait_s: float = 0.0):
        """Take the shard's finished calls, start the next ones that are due, keep polling while any is out."""
        done = self.scoring.finished(shard, wait_s)
        if done is not None:
            if done.error is not None:  # score_pending turns every Serve failure into a result: this is a bug
                raise done.error
            sent, batch = done.context
            yield from self._apply(shard, done.value, sent, batch, done.seconds, now)
        if not self.scoring.busy(shard) and self._pending_count(shard) > 0:
            due = (self.pending_counts[shard] >= self.cfg.batch_size or now >= self.oldest_due.get(shard, 0))
            if due and now >= self.not_before.get(shard, 0):
                self._send(shard)
        if self.refresher is not None:
            behind = job_behind(self.taken_lag_ms, self.taken_at_ms, now, self.cfg.behavior_max_lag_ms,
                                self.pending_counts.get(shard, 0), self.cfg.batch_size)
            step = self.refresher.step(shard, self._state, behind)
            if step.error is not None:
                self.m_refresh_errors.inc()
            elif step.latency_ms is not None:
                self.m_refresh_latency.update(step.latency_ms)
            for state in step.updated:
                self.m_refreshes.inc()
                yield self._emitted(self._store(state), state)
        if self.scoring.busy(shard) or (self.refresher is not None and self.refresher.has_work(shard)):
            self._timer(ctx, shard, now, now + self.cfg.poll_ms)
        elif self.pending_counts.get(shard, 0) > 0:
            self._timer(ctx, shard, now, max(now + 1, self.not_before.get(shard, 0), self.oldest_due.get(shard, 0)))
        if now >= self.metrics_due:
            self._flush_metrics(now)

    def _flush_metrics_if_due(self) -> None:
        now = _now_ms()
        if now >= self.metrics_due:
            self._flush_metrics(now)

    def _flush_metrics(self, now: int) -> None:
        self.metrics_due = now + METRICS_EVERY_MS
        if self.events_in:
            self.m_events_in.inc(self.events_in)
            self.events_in = 0
        if self.states_out:
            self.m_states.inc(self.states_out)
            self.states_out = 0

    def _send(self, shard: int) -> None:
        """Start one Ranker call with the shard's oldest `batch_size` owed events, at their users' newest states."""
        raw = list(self.pending.get() or [])
        self.pending_counts[shard] = len(raw)  # the truth (after a restore the count starts at 0)
        if not raw:
            self.oldest_due.pop(shard, None)
            return
        batch = with_states([PendingEvent.from_bytes(r) for r in raw[:self.cfg.batch_size]], self._state)
        if self.refresher is not None:
            for item in batch:
                self.m_staleness.update(item.state.events - item.state.inferred_at_events)
        client, cfg, failures = self.client, self.cfg, self.failures.get(shard, 0)

        def call() -> FlushResult:
            return score_pending(batch, lambda newest: client.score(ranker_request(newest), top_k=cfg.top_k),
                                 client.probe, failures, self.retry, self.topics.user_scores)

        self.scoring.start(shard, call, (min(len(raw), cfg.batch_size), batch))
        self.oldest_due[shard] = _now_ms() + cfg.max_wait_ms  # the next batch's clock starts now

    def _apply(self, shard: int, result: FlushResult, sent: int, batch: list[PendingScore], seconds: float, now: int):
        """Emit what a finished call produced and drop its events from the ListState; keep what must be retried."""
        if result.error:
            self.m_errors.inc()
        if result.records:
            self.m_latency.update(int(seconds * 1000 / max(1, result.calls)))
            self.m_batches.inc()
            self.m_batch_size.update(len(result.records))
        for record in result.records:
            yield Row(*record)
        if not self.every_event:
            yield from self._newest_states({p.state.user_id for p in batch})
        for group, error in result.unscorable:
            letter = unscorable_letter(group, error, self.topics.events)
            self.m_unscorable.inc()
            yield Row(self.topics.dead_letter, dead_letter_key(group[-1].state.user_id.encode()), letter.to_json())
        unanswered = {id(p) for p in result.kept} | {id(p) for group, _ in result.unscorable for p in group}
        scored = [p for p in batch if id(p) not in unanswered]
        for item in scored:
            self.m_event_to_score.update(max(0, now - item.event_kafka_ts))
        self.m_scores.inc(len(scored))
        raw = list(self.pending.get() or [])
        rest = raw[sent:]
        keep = [p.event().to_bytes() for p in result.kept] + rest
        if keep:
            self.pending.update(keep)
        else:
            self.pending.clear()
        self.pending_counts[shard] = len(keep)
        if not keep:
            self.oldest_due.pop(shard, None)
        if result.kept:
            self.retries[shard] = self.retries.get(shard, 0) + 1
            if result.counted:
                self.failures[shard] = self.failures.get(shard, 0) + 1
            self.not_before[shard] = now + self.retry.delay_ms(self.retries[shard])
        else:
            self.retries.pop(shard, None)
            self.failures.pop(shard, None)
            self.not_before.pop(shard, None)
        self.m_pending.update(sum(self.pending_counts.values()))
        self._flush_metrics(now)
        calls = self.llm_calls_made()
        if calls != self.llm_calls_seen:
            self.m_llm.inc(calls - self.llm_calls_seen)
            self.llm_calls_seen = calls
