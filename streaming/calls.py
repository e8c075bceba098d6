"""Background calls to Serve, at most one in flight per shard, picked up by the shard's next element or timer.

The keyed operator must never wait on HTTP: it starts a call here and goes on with the next event;
a later element or timer of the same shard takes the answer (`finished`). Plain Python, no Flink.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Context = TypeVar("Context")


@dataclass
class Finished(Generic[Context]):
    """A call that ended: its value, or the exception it raised, with what the caller attached to it."""

    value: Any
    error: BaseException | None
    context: Context
    seconds: float


class ShardCalls(Generic[Context]):
    """One call in flight per shard on a shared thread pool."""

    def __init__(self, workers: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._calls: dict[int, tuple[Future, Context, float]] = {}

    def busy(self, shard: int) -> bool:
        return shard in self._calls

    def start(self, shard: int, call: Callable[[], Any], context: Context) -> None:
        if shard in self._calls:
            raise RuntimeError(f"shard {shard} already has a call in flight")
        self._calls[shard] = (self._executor.submit(call), context, time.perf_counter())

    def join(self, shard: int, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the shard's call to end, leaving it to `finished`."""
        entry = self._calls.get(shard)
        if entry is not None:
            with contextlib.suppress(TimeoutError):
                entry[0].exception(timeout=timeout_s)

    def finished(self, shard: int, wait_s: float = 0.0) -> Finished[Context] | None:
        """The shard's call if it has ended (waiting up to `wait_s` for it), else None."""
        if wait_s > 0:
            self.join(shard, wait_s)
        entry = self._calls.get(shard)
        if entry is None or not entry[0].done():
            return None
        future, context, started = self._calls.pop(shard)
        error = future.exception()
        return Finished(None if error else future.result(), error, context, time.perf_counter() - started)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._calls.clear()
