"""The Ranker's per-user state cache: the scores it serves equal the full pass, whatever the request order."""

from __future__ import annotations

import random

import pytest
import torch

from inference.serve.scoring import LoadedRanker, score_users
from ranking.incremental import CachedUser, RankerStateCache, new_items
from ranking.model import RankerConfig, SequentialRanker


def _ranker(cache_users: int, extra_len: int = 0) -> LoadedRanker:
    torch.manual_seed(3)
    cfg = RankerConfig(num_items=40, max_len=10, dim=16, heads=2, dropout=0.0, positions="rotary", window=5,
                       extra_len=extra_len)
    model = SequentialRanker(cfg).eval()
    item_ids = [f"i{n}" for n in range(1, 41)]
    cache = RankerStateCache(model, cache_users, max_steps=3) if cache_users else None
    return LoadedRanker(model, item_ids, {item: n + 1 for n, item in enumerate(item_ids)}, "test", "cpu", cache)


def _requests(extra: bool) -> list[list[dict]]:
    """Batches of user states as a stream sends them: growing histories (the last 10 items), several events
    coalesced, repeats with no new event, a user restored to an older state, extra sequences that change."""
    rng = random.Random(5)
    logs = {u: [f"i{rng.randint(1, 40)}" for _ in range(30)] for u in ("a", "b", "c", "d")}
    seen = {u: 0 for u in logs}
    batches = []
    for round_ in range(25):
        batch = []
        for user in rng.sample(sorted(logs), 3):
            seen[user] = max(1, seen[user] + rng.choice([0, 1, 1, 1, 2, 3, 5]) - (3 if round_ == 12 else 0))
            state = {"user_id": user, "recent_items": logs[user][:seen[user]][-10:]}
            if extra:
                state["inferred_items"] = [f"i{n}" for n in (7, 9, 11 + round_ // 8)]
            batch.append(state)
        batches.append(batch)
    return batches


@pytest.mark.parametrize("extra_len", [0, 3])
def test_cached_scores_equal_full_pass_scores(extra_len):
    cached, full = _ranker(cache_users=2, extra_len=extra_len), _ranker(cache_users=0, extra_len=extra_len)
    for batch in _requests(extra=bool(extra_len)):
        got, want = score_users(cached, batch, top_k=5), score_users(full, batch, top_k=5)
        for g, w in zip(got, want, strict=True):
            assert g["items"] == w["items"]
            assert g["scores"] == pytest.approx(w["scores"], abs=1e-4)
    stats = cached.cache.stats
    assert stats.hits > 10 and stats.misses > 3 and stats.unchanged > 0  # every path was taken
    assert len(cached.cache.entries) == 2  # LRU bound


def test_new_items_finds_the_appended_events_or_asks_for_a_rebuild():
    entry = CachedUser(items=(3, 4, 5), extra=(), state=None)  # type: ignore[arg-type]
    assert new_items(entry, [1, 2, 3, 4, 5], [], field=3, max_steps=4) == 0
    assert new_items(entry, [2, 3, 4, 5, 6, 7], [], field=3, max_steps=4) == 2
    assert new_items(entry, [3, 4, 5, 6, 7, 8, 9, 10], [], field=3, max_steps=4) is None  # too many: full pass
    assert new_items(entry, [1, 2, 3, 4, 6], [], field=3, max_steps=4) is None  # not an extension
    assert new_items(entry, [2, 3, 4, 5, 6], [9], field=3, max_steps=4) is None  # extra sequence changed
    short = CachedUser(items=(4, 5), extra=(), state=None)  # type: ignore[arg-type]
    assert new_items(short, [4, 5, 6], [], field=3, max_steps=4) == 1
    assert new_items(short, [3, 4, 5, 6], [], field=3, max_steps=4) is None  # a longer past than was cached
    assert new_items(None, [1], [], field=3, max_steps=4) is None


def test_a_model_without_exact_incremental_scoring_gets_no_cache():
    model = SequentialRanker(RankerConfig(num_items=5, max_len=4, dim=8, heads=1)).eval()
    with pytest.raises(ValueError, match="cannot be scored incrementally"):
        RankerStateCache(model)
