"""Per-user cached ranker state: a new event costs one token's forward pass instead of the whole window.

The stream sends each user's latest items with every scoring request; the cache keeps, per user, the
ranker's keys/values of the window (`IncrementalState`) and the items they were computed from. A request
whose history is the cached one plus n new items (n ≤ `max_steps`) is scored by n `step()`s; anything
else — a new user, a restored or reordered state, a changed extra sequence, an evicted entry — by a full
pass that refills the cache. Both give the same scores (tests/test_incremental.py): the model's receptive
field lies within the history the request carries, so the cache is exact whatever its age. The Flink
state stays the source of truth; the cache is only a memo of it, bounded by LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ranking.model import IncrementalState, SequentialRanker, cat_states, left_pad


@dataclass(frozen=True)
class CachedUser:
    """What a user's cached state was computed from (the last receptive-field items) and the state itself."""

    items: tuple[int, ...]
    extra: tuple[int, ...]
    state: IncrementalState


@dataclass
class CacheStats:
    """Requests served from the cache (by steps, or unchanged), and full passes."""

    hits: int = 0
    unchanged: int = 0
    misses: int = 0
    steps: int = 0


def new_items(cached: CachedUser | None, history: Sequence[int], extra: Sequence[int], field: int,
              max_steps: int) -> int | None:
    """How many items at the end of `history` are new since `cached` (0: none), or None: rebuild.

    The cached state is exact for `history[:-n]` when their last `field` items agree, or, when either is
    shorter than that (a whole short history), when they are equal."""
    if cached is None or tuple(extra) != cached.extra:
        return None
    for n in range(0, min(max_steps, len(history) - 1) + 1):
        before = tuple(history[len(history) - n - field:len(history) - n]) if len(history) - n > field \
            else tuple(history[:len(history) - n])
        if before == cached.items:
            return n
    return None


class RankerStateCache:
    """LRU of user → cached ranker state, and batched hidden states for requests (eval, no grad)."""

    def __init__(self, model: SequentialRanker, capacity: int = 10_000, max_steps: int = 8) -> None:
        if not model.cfg.incremental:
            raise ValueError(f"the ranker ({model.cfg.positions} positions, window {model.cfg.window}) cannot be "
                             "scored incrementally; train it with positions: rotary and a window")
        self.model = model
        self.capacity = capacity
        self.max_steps = max_steps
        self.field = model.cfg.receptive_field
        self.entries: OrderedDict[str, CachedUser] = OrderedDict()
        self.stats = CacheStats()

    @torch.no_grad()
    def hidden(self, users: Sequence[str], histories: Sequence[Sequence[int]],
               extras: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Last hidden states (B, dim) of each user's history (item indices, oldest first)."""
        extras = extras if extras is not None else [()] * len(users)
        device = next(self.model.parameters()).device
        states: list[IncrementalState | None] = [None] * len(users)
        pending: dict[int, list[int]] = {}  # row → items still to step through
        rebuild: list[int] = []
        for row, (user, history, extra) in enumerate(zip(users, histories, extras, strict=True)):
            cached = self.entries.get(user)
            n = new_items(cached, history, extra, self.field, self.max_steps) if history else None
            if n is None:
                rebuild.append(row)
                continue
            states[row] = cached.state
            if n:
                pending[row] = list(history[len(history) - n:])
                self.stats.hits += 1
            else:
                self.stats.unchanged += 1
        if rebuild:
            self.stats.misses += len(rebuild)
            max_len = self.model.cfg.max_len
            batch = left_pad([histories[r] for r in rebuild], max_len).to(device)
            extra_batch = None
            if self.model.cfg.extra_len:
                extra_batch = left_pad([extras[r] for r in rebuild], self.model.cfg.extra_len).to(device)
            full = self.model.prefill(batch, extra_batch)
            for position, row in enumerate(rebuild):
                states[row] = full.rows(torch.tensor([position], device=device))
        step = 0
        while pending:
            rows = sorted(pending)
            merged = self.model.step(torch.tensor([pending[r][step] for r in rows], device=device),
                                     cat_states([states[r] for r in rows]))
            self.stats.steps += len(rows)
            for position, row in enumerate(rows):
                states[row] = merged.rows(torch.tensor([position], device=device))
            step += 1
            pending = {r: items for r, items in pending.items() if len(items) > step}
        for user, history, extra, state in zip(users, histories, extras, states, strict=True):
            if history:
                self._remember(user, CachedUser(tuple(history[-self.field:]), tuple(extra), state))
        return torch.cat([s.hidden for s in states])

    def _remember(self, user: str, entry: CachedUser) -> None:
        self.entries[user] = entry
        self.entries.move_to_end(user)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
