"""The second job design ("async-io"): process mode, Flink's async I/O for the Ranker calls.

Graph (process mode; PyFlink's AsyncFunction does not run in thread mode):

  KafkaSource(reaseq.events, raw bytes)
    → Parse (shared with streaming.job): Event, or a dead letter on a side output
    → keyBy(user_id)
    → UserStateUpdate (KeyedProcessFunction): the user's state in ValueState (apply_event); the new
      state record on a side output, a PendingScore (its compact bytes) on the main output
    → AsyncDataStream.unordered_wait(RankerScoring, capacity=async_capacity): async_invoke hands the
      request to a MicroBatcher on the worker's event loop, which coalesces the requests in flight
      into one Ranker call of up to batch_size users (or what came within max_wait_ms) and retries a
      failed call with backoff until it succeeds or the request's deadline (async_timeout_ms) passes
    → the same KafkaSink as the thread-batched design (streaming.job.sink_outputs).

Choices:
- unordered_wait: a request is emitted as soon as its batch returns; ordered_wait would hold every
  later result behind a slow or retried batch (head-of-line blocking). Per-user order is not needed
  for scores: each scores record names the state `version` it was computed from, and consumers keep
  the newest; the user-state records leave the keyed operator directly, in order.
- no `*_with_retry`: PyFlink's retry re-invokes one element at a time after a backoff started from
  its own threading.Timer, inside the same overall timeout, and when the attempts run out it fails
  the element the same way a plain error does. Retrying inside the MicroBatcher retries a whole
  batch with one asyncio sleep, and keeps coalescing.
- the timeout is a last resort: when a request's deadline passes, async_invoke raises, so the task
  fails and the job restarts from its last completed checkpoint, which replays the event (nothing is
  dropped). PyFlink 2.3 alone would complete the failed element with no output and raise only when
  the *next* element arrives; a checkpoint taken in between would commit the loss.
  `surface_async_errors_at_bundle_end` makes the error fail the bundle, which always ends before a
  checkpoint barrier.
- the deadline runs on the event loop, and Flink's own async timeout is off (0): PyFlink implements
  it with one threading.Timer *thread per element*, which cost about 40% of the job's throughput here
  (322 vs 555 events/s, 6,000 events, 2 shared cores). `timeout()` still raises, so turning Flink's
  timer on (a non-zero timeout in build_async_job) cannot drop an event either. Should the event loop
  itself hang, the bundle would not end and checkpoints would expire (execution.checkpointing.timeout).
- HTTP from the stdlib (RankerClient, one attempt, in a small thread pool): the same request and
  validation code as the thread-batched design and no dependency the Flink image lacks (aiohttp only
  comes with ray). A batch is one call, a few per second, so threads cost nothing here.

PyFlink facts this module is built around (apache-flink 2.3.0): the async operator is a plain
ExternalPythonProcessOperator, so in-flight requests are not stored in checkpoints but drained at the
end of every bundle (python.fn-execution.bundle.time, 1 s by default) and before every checkpoint
barrier; metric updates from the event loop thread are dropped (Beam keeps metric containers per
thread), so the scoring counters are gauges read on the harness thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyflink.common import Row, Time
from pyflink.common.typeinfo import Types
from pyflink.datastream import AsyncDataStream, AsyncFunction, KeyedProcessFunction, OutputTag, RuntimeContext

from inference.serve.client import RankerClient, ServeUnavailable
from monitoring import metrics as names
from streaming.events import Event
from streaming.job import StreamConfig, parse_events, sink_outputs
from streaming.kafka_io import OUTPUT_TYPE
from streaming.scoring import PendingScore, ranker_request, score_records
from streaming.state import UserState, apply_event

log = logging.getLogger(__name__)

RankerCall = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class MicroBatcher:
    """Coalesces concurrent score requests on one event loop into Ranker calls of up to `batch_size` users.

    A request waits at most `max_wait_s` for company; a full batch is sent at once. A call failing
    with ServeUnavailable is retried after a backoff doubling up to `max_backoff_s`, for as long as
    its requests are still awaited; a request whose `timeout_s` passes fails with TimeoutError. Any
    other error fails the batch's requests. Not thread-safe: use it from its event loop only.
    """

    def __init__(self, call: RankerCall, batch_size: int, max_wait_s: float, backoff_s: float = 0.1,
                 max_backoff_s: float = 2.0) -> None:
        self._call = call
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max(backoff_s, max_backoff_s)
        self._waiting: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        # counters (read from other threads as plain ints)
        self.in_flight = 0
        self.calls = 0
        self.failures = 0
        self.scored = 0

    async def score(self, user: dict[str, Any], timeout_s: float | None = None) -> tuple[dict[str, Any], str]:
        """This user's result ({"user_id", "items", "scores"}) and the model version that made it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((user, future))
        self.in_flight += 1
        deadline = loop.call_later(timeout_s, _expire, future, timeout_s) if timeout_s else None
        try:
            if len(self._waiting) >= self.batch_size:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self.max_wait_s, self._flush)
            return await future
        finally:
            self.in_flight -= 1
            if deadline is not None:
                deadline.cancel()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        delay = self.backoff_s
        while batch := [(user, future) for user, future in batch if not future.done()]:
            try:
                response = await self._call([user for user, _ in batch])
            except ServeUnavailable as error:
                self.failures += 1
                log.warning("Ranker call for %d users failed, retrying in %.2f s: %s", len(batch), delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            except Exception as error:  # not transient (Serve rejected the request): fail these requests
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                return
            self.calls += 1
            self.scored += len(batch)
            version = response["model_version"]
            for (_, future), result in zip(batch, response["results"], strict=True):
                if not future.done():
                    future.set_result((result, version))
            return


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no Ranker result within {timeout_s:g} s"))


def surface_async_errors_at_bundle_end() -> None:
    """Make an async element's error (a timeout included) fail the bundle it belongs to. Idempotent.

    PyFlink 2.3's AsyncOperation records the error, completes the element with no output and raises
    only when the next element arrives; its end-of-bundle wait raises only if elements are still in
    flight. A checkpoint barrier follows the end of a bundle, so without this the checkpoint could
    complete past an event that produced nothing. Patches the class in this worker process.
    """
    from pyflink.fn_execution.datastream.process.async_function.operation import AsyncOperation

    wait = AsyncOperation._wait_for_in_flight_inputs_finished
    if getattr(wait, "_reaseq_guard", False):
        return

    @functools.wraps(wait)
    def wait_then_raise(self) -> None:
        wait(self)
        self._raise_exception_if_exists()

    wait_then_raise._reaseq_guard = True  # type: ignore[attr-defined]
    AsyncOperation._wait_for_in_flight_inputs_finished = wait_then_raise


class UserStateUpdate(KeyedProcessFunction):
    """Keyed by user: applies the event to the user's ValueState, emits the state record (side output)
    and a PendingScore as bytes (main output). A replayed event (same event_id) changes nothing and emits
    nothing."""

    def __init__(self, user_state_topic: str, state_tag: OutputTag, max_recent: int, state_ttl_days: float) -> None:
        self.user_state_topic = user_state_topic
        self.state_tag = state_tag
        self.max_recent = max_recent
        self.state_ttl_days = state_ttl_days

    def open(self, runtime_context: RuntimeContext) -> None:
        from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

        descriptor = ValueStateDescriptor("user", Types.PICKLED_BYTE_ARRAY())
        if self.state_ttl_days > 0:
            # ReturnExpiredIfNotCleanedUp: with the default (NeverReturnExpired) PyFlink's process mode
            # turns its Python-side state cache off, and every read and write becomes a synchronous
            # round trip to the JVM (measured: the job's bottleneck). A user idle for longer than the
            # TTL whose state is not cleaned up yet simply keeps it.
            ttl = (StateTtlConfig.new_builder(Time.milliseconds(int(self.state_ttl_days * 86_400_000)))
                   .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                   .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp).build())
            descriptor.enable_time_to_live(ttl)
        self.user = runtime_context.get_state(descriptor)
        group = runtime_context.get_metrics_group()
        self.m_duplicates = group.counter(names.EVENTS_DUPLICATE)
        self.m_states = group.counter(names.STATES_OUT)
        self.m_llm = group.counter(names.LLM_CALLS)

    def process_element(self, value, ctx):
        _, event, kafka_ts = value
        raw = self.user.value()
        state = UserState.from_json(raw) if raw is not None else None
        state, changed = apply_event(state, event, self.max_recent)
        if not changed:
            self.m_duplicates.inc()
            return
        encoded = state.to_json()
        self.user.update(encoded)
        self.m_states.inc()
        yield self.state_tag, Row(self.user_state_topic, event.user_id.encode(), encoded)
        yield PendingScore(state, event.event_id, kafka_ts).to_bytes()


class RankerScoring(AsyncFunction):
    """PendingScore bytes → its scores record, through the worker's MicroBatcher and the Ranker's HTTP route."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.serve_url = cfg.serve_url
        self.user_scores_topic = cfg.topics.user_scores
        self.top_k = cfg.top_k
        self.batch_size = cfg.batch_size
        self.max_wait_s = cfg.max_wait_ms / 1000
        self.serve_timeout_s = cfg.serve_timeout_s
        self.backoff_s = min(0.1, cfg.retry_backoff_ms / 1000)
        self.max_backoff_s = cfg.retry_backoff_ms / 1000
        self.timeout_s = cfg.async_timeout_ms / 1000 or None
        # a few calls in flight at once: as many batches as the operator's capacity holds, and one more
        self.max_calls = max(2, math.ceil(cfg.async_capacity / cfg.batch_size) + 1)

    def open(self, runtime_context: RuntimeContext) -> None:
        surface_async_errors_at_bundle_end()
        self.client = RankerClient(self.serve_url, timeout_s=self.serve_timeout_s, retries=0)
        self.executor = ThreadPoolExecutor(self.max_calls, thread_name_prefix="ranker-call")
        self.batcher = MicroBatcher(self._call, self.batch_size, self.max_wait_s, self.backoff_s, self.max_backoff_s)
        group = runtime_context.get_metrics_group()
        # updates made on the event loop's thread would be dropped: expose the batcher's counts as gauges
        group.gauge(names.SCORES_OUT, lambda: self.batcher.scored)
        group.gauge(names.SCORE_BATCHES, lambda: self.batcher.calls)
        group.gauge(names.INFERENCE_ERRORS, lambda: self.batcher.failures)
        group.gauge(names.PENDING_SCORES, lambda: self.batcher.in_flight)

    async def _call(self, users: list[dict[str, Any]]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.client.score, users, self.top_k)

    async def async_invoke(self, value: bytes) -> list[Row]:
        pending = PendingScore.from_bytes(value)
        try:
            result, model_version = await self.batcher.score(ranker_request([pending])[0], self.timeout_s)
        except TimeoutError as error:
            raise _timed_out(pending) from error
        response = {"model_version": model_version, "results": [result]}
        return [Row(*record) for record in score_records([pending], response, self.user_scores_topic)]

    def timeout(self, value: bytes) -> list[Row]:
        """Flink's timer expired (only if turned on): fail, never complete the event without output."""
        raise _timed_out(PendingScore.from_bytes(value))

    def close(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _timed_out(value: PendingScore) -> TimeoutError:
    return TimeoutError(f"no scores for user {value.state.user_id} (event {value.event_id}) in time: failing the "
                        "task so the job restarts from its last checkpoint and replays the event")


def _user_key(event: Event) -> str:
    return event.user_id


def build_async_job(env, cfg: StreamConfig) -> None:
    """Add the async-io design's operators to a StreamExecutionEnvironment in process mode."""
    parsed, dead_tag = parse_events(env, cfg, _user_key)
    state_tag = OutputTag("user-state", OUTPUT_TYPE)
    pending = (parsed.key_by(lambda v: v[0], key_type=Types.STRING())
               .process(UserStateUpdate(cfg.topics.user_state, state_tag, cfg.max_recent, cfg.state_ttl_days),
                        output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
               .name("user-state"))
    # Flink's timeout off (0): the deadline runs on the event loop (RankerScoring; see the module doc)
    scores = AsyncDataStream.unordered_wait(pending, RankerScoring(cfg), Time.milliseconds(0), cfg.async_capacity,
                                            output_type=OUTPUT_TYPE).name("scores")
    sink_outputs(scores.union(pending.get_side_output(state_tag), parsed.get_side_output(dead_tag)), cfg)
