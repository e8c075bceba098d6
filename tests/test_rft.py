"""Reinforcement fine-tuning of the behaviour model: reward, GRPO loss, KL, curriculum, lineage."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.behavior.diffusion import SamplingConfig
from inference.behavior.model import BehaviorConfig, DiffusionBehaviorModel
from inference.behavior.rft import (
    Curriculum,
    RankerReward,
    RewardConfig,
    RFTConfig,
    end_cut,
    future_log_likelihood,
    future_ndcg,
    future_recall,
    group_advantages,
    grpo_loss,
    one_step_log_probs,
    random_cut,
    rft_config_from,
    rft_train,
)
from ranking.model import RankerConfig, SequentialRanker
from ranking.splits import SequenceData

ITEMS = 60


def sentinel_data(users: int = 40, length: int = 25, seed: int = 0) -> SequenceData:
    """Users whose validation and test items (51..60) never occur in any training sequence."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(users):
        train = rng.choice(np.arange(1, 51), size=length, replace=False)
        held = rng.choice(np.arange(51, ITEMS + 1), size=2, replace=False)
        sequences.append(np.concatenate([train, held]).astype(np.int64))
    return SequenceData("toy", "toy", [f"i{i}" for i in range(1, ITEMS + 1)], [f"u{u}" for u in range(users)],
                        sequences)


def held_items(data: SequenceData) -> set[int]:
    return {int(i) for seq in data.sequences for i in seq[-2:]}


def tiny_model(seed: int = 0) -> DiffusionBehaviorModel:
    torch.manual_seed(seed)
    return DiffusionBehaviorModel(BehaviorConfig(num_items=ITEMS, max_history=20, slots=4, dim=16, layers=1,
                                                 heads=1, dropout=0.0)).eval()


def tiny_reward_ranker(extra_len: int = 4) -> SequentialRanker:
    torch.manual_seed(0)
    return SequentialRanker(RankerConfig(num_items=ITEMS, max_len=20, dim=16, layers=1, heads=1,
                                         extra_len=extra_len)).eval()


def items_the_cuts_read(data: SequenceData) -> set[int]:
    rng = np.random.default_rng(1)
    seen: set[int] = set()
    for _ in range(20):
        for user in range(len(data.sequences)):
            for cut in (random_cut(data, user, RewardConfig(), rng), end_cut(data, user, RewardConfig())):
                assert cut is not None
                seen |= set(cut.history.tolist()) | set(cut.future.tolist())
    return seen


def test_cuts_read_only_training_items():
    data = sentinel_data()
    seen = items_the_cuts_read(data)
    assert not seen & held_items(data)
    assert len(seen) == 50  # and every training item is reachable


class LeakyData(SequenceData):
    """Training sequences that wrongly include the validation and test items."""

    def train(self, user: int) -> np.ndarray:
        return self.sequences[user]


def test_the_guard_catches_cuts_that_read_held_out_items():
    data = sentinel_data()
    leaky = LeakyData(data.dataset, data.fingerprint, data.item_ids, data.user_ids, data.sequences)
    assert items_the_cuts_read(leaky) & held_items(data)


class SpyReward(RankerReward):
    """The real reward, recording every item it is shown (histories, futures, inferences)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[int] = set()

    def __call__(self, cuts, inferred):
        for cut in cuts:
            self.seen |= set(cut.history.tolist()) | set(cut.future.tolist())
        return super().__call__(cuts, inferred)


def test_the_rft_loop_never_shows_the_reward_a_validation_or_test_item():
    data = sentinel_data()
    reward = SpyReward(tiny_reward_ranker(), RewardConfig(future=5, k=5))
    cfg = RFTConfig(steps=3, users_per_step=8, group_size=3, eval_users=10, reward=RewardConfig(future=5, k=5))
    rft_train(tiny_model(), data, reward, cfg, SamplingConfig(slots=4, steps=2), progress=False)
    assert reward.seen, "the reward was never asked"
    assert not reward.seen & held_items(data)


def test_future_ndcg_by_hand():
    scores = torch.tensor([[0.0, 5, 4, 3, 2, 1]])  # ranking 1, 2, 3, 4, 5
    exclude = torch.zeros(1, 6, dtype=torch.bool)
    ideal_two = 1 + 1 / math.log2(3)
    assert future_ndcg(scores, torch.tensor([[1, 2]]), exclude, 3).item() == pytest.approx(1.0)
    assert future_ndcg(scores, torch.tensor([[2, 0]]), exclude, 3).item() == pytest.approx(1 / math.log2(3))
    assert future_ndcg(scores, torch.tensor([[3, 5]]), exclude, 3).item() == pytest.approx(0.5 / ideal_two)
    excluded = exclude.clone()
    excluded[0, 1] = True  # a history item leaves the ranking: item 3 moves up
    assert future_ndcg(scores, torch.tensor([[3, 0]]), excluded, 3).item() == pytest.approx(1 / math.log2(3))
    assert future_ndcg(scores, torch.tensor([[0, 0]]), exclude, 3).item() == 0.0


def test_future_log_likelihood_and_recall_by_hand():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])
    exclude = torch.tensor([[False, True, False, False, False]])  # item 1 is history: 3 candidates remain
    value = future_log_likelihood(scores, torch.tensor([[2, 3, 0]]), exclude)
    assert value.item() == pytest.approx(math.log(1 / 3))
    assert future_recall(torch.tensor([[2, 9]]), torch.tensor([[2, 3, 0]])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric"):
        RewardConfig(metric="auc")


def test_the_reward_is_a_gain_over_no_inference():
    data = sentinel_data()
    reward = RankerReward(tiny_reward_ranker(), RewardConfig(future=5, k=5))
    cuts = [end_cut(data, u, reward.cfg) for u in range(4)]
    padding_only = torch.zeros(8, 4, dtype=torch.long)  # two "inferences" of nothing per cut
    assert torch.allclose(reward(cuts, padding_only), torch.zeros(8))
    dense = RankerReward(tiny_reward_ranker(), RewardConfig(future=5, k=5, metric="log_likelihood"))
    assert torch.allclose(dense(cuts, padding_only), torch.zeros(8))
    assert dense(cuts, torch.randint(1, 50, (8, 4))).abs().sum() > 0  # an inference moves the ranker
    with pytest.raises(ValueError, match="extra_len = 0"):
        RankerReward(tiny_reward_ranker(extra_len=0), RewardConfig())


def test_group_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-4)
    assert torch.equal(adv[1], torch.zeros(4))  # no variance, no signal


def test_grpo_moves_probability_toward_the_higher_reward_sample():
    model = tiny_model().train()
    for module in model.modules():  # dropout 0 anyway; keep the comparison exact
        module.eval()
    history = torch.tensor([[0, 0, 3, 7, 9]] * 2)
    better, worse = torch.tensor([[11, 12, 13, 14]]), torch.tensor([[21, 22, 23, 24]])
    items = torch.cat([better, worse])
    advantages = group_advantages(torch.tensor([[1.0, 0.0]])).flatten()
    reference = tiny_model()

    def margin() -> float:
        with torch.no_grad():
            logp = one_step_log_probs(model, history, items).sum(1)
        return float(logp[0] - logp[1])

    before = margin()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        with torch.no_grad():
            old = one_step_log_probs(model, history, items)
            ref = one_step_log_probs(reference, history, items)
        loss, stats = grpo_loss(one_step_log_probs(model, history, items), old, ref, advantages, 0.2, 0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(stats["kl"]) and stats["kl"] >= 0
    assert margin() > before + 0.5


def test_kl_to_the_reference_stays_finite_far_from_it():
    new = torch.tensor([[-1e-3, -80.0]], requires_grad=True)
    ref = torch.tensor([[-90.0, -1e-3]])
    loss, stats = grpo_loss(new, new.detach(), ref, torch.tensor([1.0]), 0.2, 1.0)
    loss.backward()
    assert math.isfinite(stats["kl"]) and math.isfinite(float(loss.detach()))
    assert torch.isfinite(new.grad).all()


def odd_items(cuts, inferred: torch.Tensor) -> torch.Tensor:
    """A reward with a known optimum: the share of odd item indices in an inference."""
    return (inferred % 2 == 1).float().mean(1)


def test_rft_learns_a_reward_and_keeps_kl_finite():
    data = sentinel_data()
    cfg = RFTConfig(steps=30, users_per_step=8, group_size=4, lr=3e-3, kl=0.01, eval_users=20,
                    reward=RewardConfig(future=5, k=5))
    result = rft_train(tiny_model(), data, odd_items, cfg, SamplingConfig(slots=4, steps=2), progress=False)
    assert [row["step"] for row in result.curve] == list(range(1, 31))
    assert all(math.isfinite(row["kl"]) and math.isfinite(row["reward"]) for row in result.curve)
    early = np.mean([row["reward"] for row in result.curve[:5]])
    late = np.mean([row["reward"] for row in result.curve[-5:]])
    assert late > early + 0.15, (early, late)
    assert result.eval_after > result.eval_before
    assert result.curve[-1]["kl"] > 0  # the policy did move away from the reference


def test_curriculum_draws_users_with_signal_more_often():
    curriculum = Curriculum(range(10), floor=0.1, seed=0)
    curriculum.update([0, 1, 2, 3, 4], torch.zeros(5, 4))  # no variance: solved or hopeless
    curriculum.update([5, 6, 7, 8, 9], torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 5))
    weights = curriculum.weights()
    assert weights[5:].min() > 5 * weights[:5].max()
    drawn = np.concatenate([curriculum.sample(3) for _ in range(200)])
    assert (drawn >= 5).mean() > 0.8


def test_rft_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="group_size"):
        rft_config_from({"group_size": 1}, "x.yaml")
    with pytest.raises(ValueError, match="temperature"):
        rft_config_from({"temperature": 0}, "x.yaml")
    with pytest.raises(ValueError, match="unknown rft keys"):
        rft_config_from({"stepz": 3}, "x.yaml")
    with pytest.raises(ValueError, match="reward keys"):
        rft_config_from({"reward": {"horizon": 3}}, "x.yaml")
    assert rft_config_from({"reward": {"future": 3}}, "x.yaml").reward.future == 3


def test_rft_artifacts_name_their_parent(tmp_path, ml100k_sequences):
    from inference.behavior.reasoner import BehaviorReasoner
    from inference.behavior.train import (
        BehaviorTrainConfig,
        fine_tune,
        save_behavior,
        save_tuned_behavior,
        train_behavior,
    )
    from ranking.experiment import dataset_record
    from tests.helpers import TINY_BEHAVIOR_CONFIG

    cfg = BehaviorTrainConfig(**TINY_BEHAVIOR_CONFIG)
    pretrained = train_behavior(ml100k_sequences, cfg, users=range(100), progress=False)
    parent = save_behavior(pretrained, cfg, dataset_record(ml100k_sequences), root=tmp_path)
    rft = RFTConfig(steps=1, users_per_step=4, group_size=2, eval_users=4, reward=RewardConfig(future=3, k=5))
    ranker = SequentialRanker(RankerConfig(num_items=ml100k_sequences.num_items, max_len=20, dim=16, layers=1,
                                           heads=1, extra_len=5)).eval()
    tuned = fine_tune(ml100k_sequences, pretrained.model, replace(cfg, rft=rft), ranker=ranker, progress=False)
    child = save_tuned_behavior(tuned, parent, rft, "a test ranker", root=tmp_path)
    assert child.config["parent"] == parent.version and parent.config["parent"] is None
    assert child.config["kind"] == "masked-diffusion-rft" and child.config["rft"]["steps"] == 1
    assert child.version != parent.version
    served = BehaviorReasoner.load(str(child.path), "cpu")
    assert served.version == child.version and served.parent == parent.version
    # the parent's weights were not touched by the tuning
    restored = BehaviorReasoner.load(str(parent.path), "cpu")
    for name, value in pretrained.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name].cpu(), value.cpu())


def test_the_reward_curve_plot_is_written_as_a_png(tmp_path):
    from bench.behavior import plot_rft_curve

    curve = [{"step": s, "reward": 0.01 * s, "kl": 0.001 * s} for s in range(1, 21)]
    path = plot_rft_curve(curve, tmp_path / "plots" / "rft.png", "RFT of a test model")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
