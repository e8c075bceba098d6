"""Reinforcement fine-tuning of the behaviour model with a ranking reward (after ReRec).

The pre-trained diffusion model imitates the log. Here it is tuned for what its inferences do for the
ranker instead:

- **Reward.** A user's training sequence is cut at a point; the model infers K items from the part
  before the cut. The reward is the ranker's NDCG@k of the next `future` training items with the
  inference as the ranker's extra sequence, minus the same with an empty extra sequence: a gain, so an
  inference that only repeats what the ranker already knows earns nothing. Optionally (ReRec's
  alignment terms) plus a weight × the share of those future items the inference itself names. Only
  training items are ever read (`data.train(user)`): never a validation or test item.
- **Policy log-probability.** A masked-diffusion model has no tractable sequence likelihood. We use the
  one-step unmasking estimate of diffusion-LLM RL (d1's diffu-GRPO): each committed item's
  log-probability under the model with every slot masked, summed over the K slots. Why: it costs one
  slot pass per sample (the history is encoded once), it is exactly the distribution the sampler's
  first step draws from, and the K items are a set, so the order the sampler committed them in
  carries little information worth the S-pass trajectory likelihood.
- **GRPO.** G samples per user at temperature > 0; advantages are the rewards normalised within each
  user's group; a PPO-clipped policy-gradient loss per committed token, and a KL penalty to the frozen
  pre-trained model (the k3 estimator: non-negative, finite while both log-probabilities are).
- **Curriculum** (ReRec's online curriculum): users whose group rewards did not vary last time (always
  solved or hopeless: zero advantage, no gradient) are drawn less often; users with signal more often.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from inference.behavior.diffusion import SamplingConfig, encode_histories, sample_cached
from inference.behavior.model import DiffusionBehaviorModel, excluded_tokens
from ranking.model import SequentialRanker, left_pad
from ranking.splits import SequenceData

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class RewardConfig:
    """What the reward measures: NDCG@k of the next `future` training items after a cut."""

    future: int = 10
    k: int = 10
    min_history: int = 5  # cuts leave at least this many items before them
    recall_weight: float = 0.0  # ReRec-style alignment: + weight × share of the future items the inference names
    metric: str = "ndcg"  # or "log_likelihood": the mean log-softmax gain of the future items (dense, smooth)

    def __post_init__(self) -> None:
        if self.metric not in ("ndcg", "log_likelihood"):
            raise ValueError(f"reward.metric must be ndcg or log_likelihood, got {self.metric!r}")
        if self.future < 1 or self.k < 1 or self.min_history < 1:
            raise ValueError("reward.future, reward.k and reward.min_history must be >= 1")
        if self.recall_weight < 0:
            raise ValueError("reward.recall_weight must be >= 0")


@dataclass(frozen=True)
class RFTConfig:
    """GRPO settings: a fixed budget of steps, each over `users_per_step` users × `group_size` samples."""

    steps: int = 300
    users_per_step: int = 32
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 5e-4
    clip: float = 0.2
    kl: float = 0.02
    updates_per_step: int = 2
    curriculum_floor: float = 0.1
    eval_users: int = 400
    seed: int = 1
    device: str = "auto"
    reward_ranker: str = "ranking/configs/ranker-ml-100k.yaml"  # trained on the parent's inferences if needed
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("rft.group_size must be >= 2: advantages are relative within a group")
        if self.temperature <= 0:
            raise ValueError("rft.temperature must be > 0: a greedy group has no variation to learn from")
        if self.steps < 1 or self.users_per_step < 1 or self.updates_per_step < 1:
            raise ValueError("rft.steps, rft.users_per_step and rft.updates_per_step must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rft_config_from(raw: dict[str, Any], where: str) -> RFTConfig:
    """RFTConfig from a mapping (the `rft:` section of a behaviour YAML); unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: 'rft' must be a mapping")
    allowed = {f.name for f in fields(RFTConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown rft keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    reward = raw.get("reward") or {}
    reward_allowed = {f.name for f in fields(RewardConfig)}
    if not isinstance(reward, dict) or set(reward) - reward_allowed:
        raise ValueError(f"{where}: rft.reward keys must be among {sorted(reward_allowed)}, got {reward!r}")
    try:
        return RFTConfig(**{**raw, "reward": RewardConfig(**reward)})
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from error


def load_rft_config(path: str | Path | None, dataset: str) -> RFTConfig:
    """The `rft:` section of a behaviour YAML (default: inference/behavior/configs/behavior-<dataset>-rft.yaml)."""
    path = Path(path) if path else CONFIG_DIR / f"behavior-{dataset}-rft.yaml"
    if not path.is_file():
        raise ValueError(f"RFT config {path} not found; pass --config with a YAML file like "
                         f"{CONFIG_DIR / 'behavior-ml-100k-rft.yaml'}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or "rft" not in raw:
        raise ValueError(f"{path}: no 'rft:' section (see {CONFIG_DIR / 'behavior-ml-100k-rft.yaml'})")
    return rft_config_from(raw["rft"], str(path))


# --- reward ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cut:
    """A user's training sequence cut in two: what the model infers from, and what comes next."""

    user: int
    history: np.ndarray
    future: np.ndarray


def random_cut(data: SequenceData, user: int, cfg: RewardConfig, rng: np.random.Generator) -> Cut | None:
    """A cut at a random point of the user's *training* items (None when the user has too few)."""
    train = data.train(user)
    if len(train) < cfg.min_history + 1:
        return None
    point = int(rng.integers(cfg.min_history, len(train)))
    return Cut(user, train[:point], train[point:point + cfg.future])


def end_cut(data: SequenceData, user: int, cfg: RewardConfig) -> Cut | None:
    """The fixed evaluation cut: the last `future` training items after the rest of the training items."""
    train = data.train(user)
    if len(train) < cfg.min_history + cfg.future:
        return None
    return Cut(user, train[:-cfg.future], train[-cfg.future:])


def candidate_scores(scores: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Scores with excluded items (the history) and padding set to −inf: what is ranked."""
    scores = scores.float().masked_fill(exclude, float("-inf"))
    scores[:, 0] = float("-inf")
    return scores


def future_ndcg(scores: torch.Tensor, future: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k (B,) of several target items per row (future (B, F), 0 = none) among non-excluded items."""
    top = candidate_scores(scores, exclude).topk(k, dim=1).indices  # (B, k)
    real = future != 0
    hits = (top[:, :, None] == future[:, None, :]).logical_and(real[:, None, :]).any(2).float()  # (B, k)
    discounts = 1.0 / torch.log2(torch.arange(k, device=scores.device, dtype=torch.float32) + 2.0)
    dcg = (hits * discounts).sum(1)
    ideal_counts = real.sum(1).clamp(max=k)
    ideal = torch.cumsum(discounts, 0)[(ideal_counts - 1).clamp(min=0)]
    return torch.where(ideal_counts > 0, dcg / ideal, torch.zeros_like(dcg))


# (cuts, inferred (len(cuts) × G, K)) → rewards (len(cuts) × G,), G consecutive rows per cut
Reward = Callable[[Sequence[Cut], torch.Tensor], torch.Tensor]


def future_log_likelihood(scores: torch.Tensor, future: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Mean log-softmax (B,) of each row's future items (0 = none) over the non-excluded items."""
    log_probs = torch.log_softmax(candidate_scores(scores, exclude), 1).gather(1, future).clamp_min(-1e4)
    real = (future != 0).float()
    return (log_probs * real).sum(1) / real.sum(1).clamp_min(1)


def future_recall(inferred: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
    """Share (B,) of each row's future items (0 = none) that its inference names, over min(K, |future|)."""
    real = future != 0
    named = (future[:, :, None] == inferred[:, None, :]).any(2) & real
    return named.sum(1) / real.sum(1).clamp(max=inferred.shape[1]).clamp(min=1)


class RankerReward:
    """The ranker's gain (NDCG@k, or log-likelihood) on each cut's future items from an inference as its extra
    sequence, plus the optional recall alignment term."""

    def __init__(self, ranker: SequentialRanker, cfg: RewardConfig, device: str = "cpu") -> None:
        if not ranker.cfg.extra_len:
            raise ValueError("the reward ranker reads no extra sequence (extra_len = 0): train it with inferred "
                             "behaviours (a ranker config whose train.behaviors is set)")
        self.ranker = ranker.eval()
        self.cfg = cfg
        self.device = device

    @torch.no_grad()
    def __call__(self, cuts: Sequence[Cut], inferred: torch.Tensor) -> torch.Tensor:
        """Rewards (len(cuts) × G,) for inferred (len(cuts) × G, K) items, G consecutive rows per cut."""
        group = inferred.shape[0] // len(cuts)
        histories = left_pad([c.history for c in cuts], self.ranker.cfg.max_len).to(self.device)
        futures = left_pad([c.future for c in cuts], self.cfg.future).to(self.device)
        exclude = torch.zeros(len(cuts), self.ranker.cfg.num_items + 1, dtype=torch.bool, device=self.device)
        for row, cut in enumerate(cuts):  # the whole history, as the evaluation protocol excludes it
            exclude[row, torch.as_tensor(cut.history, dtype=torch.long, device=self.device)] = True
        empty = torch.zeros(len(cuts), self.ranker.cfg.extra_len, dtype=torch.long, device=self.device)
        base = self.measure(self.ranker.score_last(histories, empty), futures, exclude)
        extra = left_pad(inferred.cpu().tolist(), self.ranker.cfg.extra_len).to(self.device)
        histories, futures, exclude, base = (t.repeat_interleave(group, 0) for t in (histories, futures, exclude, base))
        reward = self.measure(self.ranker.score_last(histories, extra), futures, exclude) - base
        if self.cfg.recall_weight:
            reward = reward + self.cfg.recall_weight * future_recall(inferred.to(self.device), futures)
        return reward.cpu()

    def measure(self, scores: torch.Tensor, futures: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        if self.cfg.metric == "ndcg":
            return future_ndcg(scores, futures, exclude, self.cfg.k)
        return future_log_likelihood(scores, futures, exclude)


# --- the policy's log-probabilities and the GRPO loss ---------------------------------------------------

def one_step_log_probs(model: DiffusionBehaviorModel, history: torch.Tensor, items: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """(B, K) log-probability of each committed item in its slot with every slot masked (see module doc)."""
    masked = torch.full_like(items, model.cfg.mask_token)
    logits = model(history, masked).float() / temperature
    logits = logits.masked_fill(excluded_tokens(history, model.cfg.num_items)[:, None, :], float("-inf"))
    return torch.log_softmax(logits, -1).gather(2, items[..., None]).squeeze(-1)


SIGNAL_EPS = 1e-6


def groups_with_signal(rewards: torch.Tensor) -> torch.Tensor:
    """(U,) bool: groups (U, G) whose rewards vary — the only ones that give a policy gradient."""
    return rewards.std(1, unbiased=False) > SIGNAL_EPS


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards (U, G) normalised within each group; a group whose rewards are all equal gets zeros."""
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, keepdim=True, unbiased=False)
    return torch.where(groups_with_signal(rewards)[:, None], (rewards - mean) / (std + SIGNAL_EPS),
                       torch.zeros_like(rewards))


def grpo_loss(new: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, advantages: torch.Tensor, clip: float,
              kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss per committed token plus kl_coef × k3 KL to the reference.

    new/old/ref: (B, K) log-probabilities (old and ref carry no gradient); advantages: (B,)."""
    ratio = torch.exp(new - old)
    adv = advantages[:, None].to(new)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    log_ref_ratio = (ref - new).clamp(-20, 20)  # k3 = e^x − x − 1 ≥ 0 (Schulman's estimator of KL(π‖ref))
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    loss = (-surrogate + kl_coef * kl).mean()
    clipped = ((ratio - 1).abs() > clip).float().mean()
    return loss, {"kl": float(kl.detach().mean()), "clip_fraction": float(clipped)}


# --- curriculum -----------------------------------------------------------------------------------------

class Curriculum:
    """Draws users in proportion to floor + (the share of their last group whose reward varied)."""

    def __init__(self, users: Sequence[int], floor: float, seed: int) -> None:
        self.users = np.asarray(list(users))
        self.signal = np.ones(len(self.users))  # unknown users count as informative
        self.floor = floor
        self.rng = np.random.default_rng(seed)
        self.position = {int(u): i for i, u in enumerate(self.users)}

    def weights(self) -> np.ndarray:
        raw = self.floor + self.signal
        return raw / raw.sum()

    def sample(self, count: int) -> list[int]:
        count = min(count, len(self.users))
        return self.users[self.rng.choice(len(self.users), size=count, replace=False, p=self.weights())].tolist()

    def update(self, users: Sequence[int], group_rewards: torch.Tensor) -> None:
        varied = groups_with_signal(group_rewards).float().numpy()
        for user, value in zip(users, varied, strict=True):
            self.signal[self.position[int(user)]] = value


# --- the loop -------------------------------------------------------------------------------------------

@dataclass
class RFTResult:
    """The tuned model, its per-step curve, and greedy rewards on fixed evaluation cuts before and after."""

    model: DiffusionBehaviorModel
    curve: list[dict[str, float]]
    eval_before: float
    eval_after: float
    seconds: float


def greedy_reward(model: DiffusionBehaviorModel, reward: Reward, cuts: Sequence[Cut], slots: int,
                  steps: int, device: str, batch_size: int = 256) -> float:
    """Mean reward of the greedy inference over fixed cuts."""
    model.eval()
    total = 0.0
    for start in range(0, len(cuts), batch_size):
        chunk = list(cuts[start:start + batch_size])
        history = encode_histories([c.history for c in chunk], model.cfg.max_history).to(device)
        items, _ = sample_cached(model, history, SamplingConfig(slots=slots, steps=steps))
        total += float(reward(chunk, items).sum())
    return total / max(1, len(cuts))


def rft_train(model: DiffusionBehaviorModel, data: SequenceData, reward: Reward, cfg: RFTConfig,
              sampling: SamplingConfig, device: str = "cpu", users: Sequence[int] | None = None,
              progress: bool = True) -> RFTResult:
    """Tune `model` (in place) for `cfg.steps` GRPO steps; the pre-trained weights are the KL reference."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    users = [u for u in (range(len(data.sequences)) if users is None else users)
             if len(data.train(u)) > cfg.reward.min_history]
    if not users:
        raise ValueError(f"no user has more than {cfg.reward.min_history} training items to cut")
    eval_cuts = [c for c in (end_cut(data, u, cfg.reward) for u in users[:cfg.eval_users]) if c is not None]
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    curriculum = Curriculum(users, cfg.curriculum_floor, cfg.seed)
    slots, group = sampling.slots, cfg.group_size
    eval_before = greedy_reward(model, reward, eval_cuts, slots, sampling.steps, device)
    curve: list[dict[str, float]] = []
    bar = tqdm(range(cfg.steps), desc=f"RFT (seed {cfg.seed})", disable=not progress, unit="step")
    for step in bar:
        chosen = curriculum.sample(cfg.users_per_step)
        cuts = [c for c in (random_cut(data, u, cfg.reward, rng) for u in chosen) if c is not None]
        history = encode_histories([c.history for c in cuts], model.cfg.max_history).to(device)
        history = history.repeat_interleave(group, 0)
        model.eval()  # no dropout: the old, new and reference log-probabilities must be comparable
        group_sampling = SamplingConfig(slots=slots, steps=sampling.steps, temperature=cfg.temperature,
                                        seed=cfg.seed * 100_003 + step)
        items, _ = sample_cached(model, history, group_sampling)
        rewards = reward(cuts, items).view(len(cuts), group)
        advantages = group_advantages(rewards).flatten()
        curriculum.update([c.user for c in cuts], rewards)
        with torch.no_grad():
            old = one_step_log_probs(model, history, items, cfg.temperature)
            ref = one_step_log_probs(reference, history, items, cfg.temperature)
        stats: dict[str, float] = {}
        for _ in range(cfg.updates_per_step):
            new = one_step_log_probs(model, history, items, cfg.temperature)
            loss, stats = grpo_loss(new, old, ref, advantages, cfg.clip, cfg.kl)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        row = {"step": step + 1, "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
               "groups_with_signal": float(groups_with_signal(rewards).float().mean()),
               "loss": float(loss.detach()), **stats}
        curve.append(row)
        bar.set_postfix(reward=f"{row['reward']:+.4f}", kl=f"{row['kl']:.4f}")
    model.eval()
    eval_after = greedy_reward(model, reward, eval_cuts, slots, sampling.steps, device)
    return RFTResult(model, curve, eval_before, eval_after, time.time() - started)
