"""The masked-diffusion behaviour model: training signal, sampling rules, cache exactness, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.behavior.diffusion import (
    SamplingConfig,
    commit_schedule,
    diffusion_loss,
    encode_histories,
    sample_cached,
    sample_reference,
)
from inference.behavior.model import BehaviorConfig, DiffusionBehaviorModel
from inference.behavior.train import BehaviorTrainConfig, random_cuts, split_histories, train_behavior
from streaming.behavior import RefreshPolicy, events_since_inference, needs_refresh, with_inference
from streaming.state import UserState
from tests.helpers import TINY_BEHAVIOR_CONFIG

NUM_ITEMS = 300


@pytest.fixture(scope="module")
def small_model() -> DiffusionBehaviorModel:
    torch.manual_seed(0)
    return DiffusionBehaviorModel(BehaviorConfig(num_items=NUM_ITEMS, max_history=12, slots=6, dim=32,
                                                 layers=2, heads=2, dropout=0.0)).eval()


def _histories(n: int, seed: int = 0, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.stack([torch.randperm(NUM_ITEMS, generator=g)[:length] + 1 for _ in range(n)])
    out[0, :5] = 0  # one short (left-padded) history
    return out


def test_loss_falls_on_a_small_slice(ml100k_sequences):
    data = ml100k_sequences
    torch.manual_seed(0)
    model = DiffusionBehaviorModel(BehaviorConfig(num_items=data.num_items, max_history=20, slots=5, dim=32,
                                                  layers=1, heads=2, dropout=0.0))
    seqs = [data.train(u) for u in range(60)]
    hist, tgt = random_cuts(seqs, 4, 20, 5, np.random.default_rng(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    eval_gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731 - same masks before and after

    with torch.no_grad():
        before = diffusion_loss(model, hist, tgt, eval_gen()).item()
    for _ in range(6):
        for start in range(0, len(hist), 64):
            loss = diffusion_loss(model, hist[start:start + 64], tgt[start:start + 64], generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        after = diffusion_loss(model, hist, tgt, eval_gen()).item()
    assert after < before * 0.9, (before, after)


def test_targets_are_training_items_only(ml100k_sequences):
    data = ml100k_sequences
    _hist, tgt = random_cuts([data.train(u) for u in range(50)], 3, 20, 5, np.random.default_rng(1))
    allowed = set(np.concatenate([data.train(u) for u in range(50)]).tolist()) | {0}
    assert set(tgt.flatten().tolist()) <= allowed
    for user in range(5):  # each user's cuts hold only its own training items
        h, t = random_cuts([data.train(user)], 3, 20, 5, np.random.default_rng(2))
        own = set(data.train(user).tolist()) | {0}
        assert set(t.flatten().tolist()) <= own and set(h.flatten().tolist()) <= own
    histories = split_histories(data, "train", holdout=10)
    assert all(len(h) == max(1, len(data.train(u)) - 10) for u, h in enumerate(histories))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_returns_valid_distinct_unseen_items(small_model, temperature):
    history = _histories(16)
    exclude = torch.zeros(16, NUM_ITEMS + 1, dtype=torch.bool)
    exclude[:, 1:21] = True  # items 1..20 excluded for everyone
    items, confidence = sample_cached(small_model, history, SamplingConfig(slots=6, steps=3,
                                                                           temperature=temperature), exclude)
    assert items.shape == (16, 6) and confidence.shape == (16, 6)
    assert int(items.min()) >= 21 and int(items.max()) <= NUM_ITEMS
    for row in range(16):
        assert len(set(items[row].tolist())) == 6
        assert not set(items[row].tolist()) & set(history[row].tolist())
    assert bool((confidence > 0).all()) and bool((confidence <= 1).all())


def test_sampling_is_seed_deterministic(small_model):
    history = _histories(8)
    cfg = SamplingConfig(slots=6, steps=3, temperature=1.0, seed=7)
    first, _ = sample_cached(small_model, history, cfg)
    again, _ = sample_cached(small_model, history, cfg)
    other, _ = sample_cached(small_model, history, SamplingConfig(slots=6, steps=3, temperature=1.0, seed=8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("steps,temperature", [(1, 0.0), (3, 0.0), (6, 1.0)])
def test_cached_and_reference_samplers_agree(small_model, steps, temperature):
    history = _histories(12, seed=3)
    cfg = SamplingConfig(slots=6, steps=steps, temperature=temperature, seed=1)
    ref_items, ref_conf = sample_reference(small_model, history, cfg)
    fast_items, fast_conf = sample_cached(small_model, history, cfg)
    assert torch.equal(ref_items, fast_items)
    torch.testing.assert_close(ref_conf, fast_conf, atol=1e-5, rtol=1e-4)
    # and the step logits themselves, with some slots already committed
    slots = torch.full((12, 6), small_model.cfg.mask_token)
    slots[:, :2] = ref_items[:, :2]
    cache = small_model.encode_history(history)
    torch.testing.assert_close(small_model(history, slots), small_model.slot_logits(cache, slots),
                               atol=1e-5, rtol=1e-4)


def test_commit_schedule_commits_every_slot_once():
    assert commit_schedule(10, 8) == [2, 2, 1, 1, 1, 1, 1, 1]
    assert commit_schedule(10, 4) == [3, 3, 2, 2]
    assert commit_schedule(3, 16) == [1, 1, 1]  # more steps than slots: one slot per step
    assert sum(commit_schedule(10, 16)) == 10


def test_edge_cases_empty_long_and_unknown(small_model):
    with pytest.raises(ValueError, match="history 1 is empty"):
        encode_histories([[1, 2], []], 12)
    long = list(range(1, 40))
    encoded = encode_histories([long, [5]], 12)
    assert encoded.shape == (2, 12) and encoded[0].tolist() == long[-12:]  # latest items kept
    assert encoded[1].tolist() == [0] * 11 + [5]
    with pytest.raises(ValueError, match="exceeds max_history"):
        small_model.encode_history(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="slots"):
        sample_cached(small_model, encoded, SamplingConfig(slots=7))
    with pytest.raises(ValueError, match="steps must be"):
        SamplingConfig(steps=0)


def test_reasoner_skips_unknown_items_and_users_without_any(ml100k_sequences, artifacts_root):
    from inference.behavior.reasoner import BehaviorReasoner
    from inference.behavior.train import save_behavior
    from ranking.experiment import dataset_record

    data = ml100k_sequences
    cfg = BehaviorTrainConfig(**TINY_BEHAVIOR_CONFIG)
    result = train_behavior(data, cfg, users=range(100), progress=False)
    artifact = save_behavior(result, cfg, dataset_record(data))
    reasoner = BehaviorReasoner.load("ml-100k")
    assert reasoner.version == artifact.version
    known = [data.item_ids[i - 1] for i in data.train(0)]
    results = reasoner.infer([{"user_id": "a", "recent_items": [*known, "no-such-item"]},
                              {"user_id": "b", "recent_items": ["no-such-item"]},
                              {"user_id": "c", "recent_items": known}])
    assert results[0]["items"] == results[2]["items"] and len(results[0]["items"]) == 5
    assert not set(results[0]["items"]) & set(known[-20:])
    assert results[1]["items"] == [] and "no known item" in results[1]["skipped"]

    reasoner.check()  # Serve's health check: one user's inference fills every slot
    with torch.no_grad():
        for parameter in reasoner.model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="no usable inference"):
        reasoner.check()


def test_knowledge_init_changes_the_starting_item_tokens():
    torch.manual_seed(0)
    model = DiffusionBehaviorModel(BehaviorConfig(num_items=50, dim=8))
    vectors = torch.randn(51, 24)
    model.init_items_from(vectors)
    table = model.item_emb.weight[1:51].detach()
    assert abs(float(table.std()) - 0.02) < 0.005
    # items close in knowledge space start close: correlation of pairwise distances is high
    knowledge_d = torch.cdist(vectors[1:] - vectors[1:].mean(0), vectors[1:] - vectors[1:].mean(0)).flatten()
    token_d = torch.cdist(table, table).flatten()
    assert float(torch.corrcoef(torch.stack([knowledge_d, token_d]))[0, 1]) > 0.5
    with pytest.raises(ValueError, match="rows"):
        model.init_items_from(torch.randn(10, 24))


def test_refresh_policy_and_applying_an_inference():
    policy = RefreshPolicy(every_events=3, every_ms=1000)
    fresh = UserState("u", recent_items=("1",), counts={"rate": 1}, version=1)
    assert needs_refresh(fresh, policy, now_ms=0)  # never inferred: first event asks
    state = with_inference(fresh, ["7", "8"], "m1", events_seen=1, now_ms=10_000)
    assert state.inferred_items == ("7", "8") and state.inferred_model_version == "m1" and state.version == 2
    assert not needs_refresh(state, policy, now_ms=10_500)  # nothing new
    two_more = UserState(**{**state.__dict__, "counts": {"rate": 3}})
    assert events_since_inference(two_more) == 2
    assert not needs_refresh(two_more, policy, now_ms=10_500)
    assert needs_refresh(two_more, policy, now_ms=11_000)  # enough time with a new event
    three_more = UserState(**{**state.__dict__, "counts": {"rate": 4}})
    assert needs_refresh(three_more, policy, now_ms=10_001)
    assert UserState.from_json(state.to_json()) == state
    with pytest.raises(ValueError):
        RefreshPolicy(every_events=0)


def test_cli_train_then_infer_behavior_prints_titles(artifacts_root, tmp_path, capsys):
    import yaml

    from reaseq.cli import main

    config = {"model": TINY_BEHAVIOR_CONFIG["model"], "sampling": TINY_BEHAVIOR_CONFIG["sampling"],
              "train": {k: v for k, v in TINY_BEHAVIOR_CONFIG.items() if k not in ("model", "sampling")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "behavior", "--config", str(path), "--quiet", "--max-seconds", "60"]) == 0
    assert "saved" in capsys.readouterr().out
    assert main(["infer", "behavior", "--user", "1", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "K=5, S=5" in out and "user 1:" in out
    inferred = out.split("inferred beyond the log (confidence):")[1].strip().splitlines()
    assert len(inferred) == 5 and all("(" in line for line in inferred)
    assert main(["infer", "behavior", "--user", "no-such-user"]) == 2
    path.write_text(yaml.safe_dump({**config, "train": {"epochz": 1}}))
    assert main(["train", "behavior", "--config", str(path)]) == 2
