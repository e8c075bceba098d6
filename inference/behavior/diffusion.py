"""Masked diffusion over the K behaviour slots: the training loss, the samplers, the one-step likelihood.

Training follows the masked-diffusion ELBO (MDLM / LLaDA): t ~ U(0, 1), each target slot masked with
probability t, cross-entropy on the masked slots weighted by 1/t.

Sampling beyond-log behaviours: K masked slots, S denoising steps, low-confidence remasking.

At each step the model predicts every still-masked slot; the most confident predictions are
committed (one at a time, so an item committed to one slot is excluded from the others) and the rest
stay masked for the next step. Items in the history (and any extra exclusions) are never inferred.
Two samplers share that loop: the reference one runs the full model over history + slots at every
step; the cached one encodes the history once and runs only the slots (exact by construction,
see inference.behavior.model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inference.behavior.model import DiffusionBehaviorModel, excluded_tokens


@dataclass(frozen=True)
class SamplingConfig:
    """K slots, S steps, temperature (0 = greedy), seed; the same inputs and seed give the same items."""

    slots: int = 10
    steps: int = 8
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.steps < 1:
            raise ValueError("slots and steps must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")


def commit_schedule(slots: int, steps: int) -> list[int]:
    """How many slots each step commits: as even as possible, earlier steps take the remainder."""
    steps = min(steps, slots)
    base, extra = divmod(slots, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def encode_histories(histories: Sequence[Sequence[int]], max_history: int) -> torch.Tensor:
    """Left-padded (B, H) token batch; longer histories keep their latest max_history items (documented
    truncation). An empty history is an error: there is nothing to reason from."""
    for row, history in enumerate(histories):
        if len(history) == 0:
            raise ValueError(f"history {row} is empty: behaviours are inferred from at least one item")
    length = min(max_history, max(len(h) for h in histories))
    out = torch.zeros(len(histories), length, dtype=torch.long)
    for row, history in enumerate(histories):
        tail = list(history)[-length:]
        out[row, length - len(tail):] = torch.as_tensor(tail, dtype=torch.long)
    return out


def _denoise(logits_of: Callable[[torch.Tensor], torch.Tensor], banned: torch.Tensor, mask_token: int,
             cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared loop. Returns items (B, K) and the confidence each was committed with."""
    batch, device = banned.shape[0], banned.device
    slots = torch.full((batch, cfg.slots), mask_token, dtype=torch.long, device=device)
    confidence = torch.zeros(batch, cfg.slots, device=device)
    banned = banned.clone()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = torch.arange(batch, device=device)
    for commits in commit_schedule(cfg.slots, cfg.steps):
        logits = logits_of(slots).float()
        noise = None
        if cfg.temperature > 0:
            uniform = torch.rand(logits.shape, generator=generator, device=device).clamp_(1e-10, 1 - 1e-7)
            noise = -torch.log(-torch.log(uniform))
        for _ in range(commits):
            scores = logits.masked_fill(banned[:, None, :], float("-inf"))
            picks = (scores / cfg.temperature + noise).argmax(-1) if noise is not None else scores.argmax(-1)
            probs = scores.softmax(-1).gather(2, picks[..., None]).squeeze(-1)
            probs = probs.masked_fill(slots != mask_token, -1.0)
            position = probs.argmax(1)
            item = picks[rows, position]
            slots[rows, position] = item
            confidence[rows, position] = probs[rows, position]
            banned[rows, item] = True
    return slots, confidence


@torch.no_grad()
def sample_reference(model: DiffusionBehaviorModel, history: torch.Tensor, cfg: SamplingConfig,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain sampler: the full model over history + slots at every step."""
    banned = _banned(model, history, exclude)
    return _denoise(lambda slots: model(history, slots), banned, model.cfg.mask_token, _fit(model, cfg))


@torch.no_grad()
def sample_cached(model: DiffusionBehaviorModel, history: torch.Tensor, cfg: SamplingConfig,
                  exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast sampler: the history encoded once, each step runs only the K slots against its cache."""
    banned = _banned(model, history, exclude)
    cache = model.encode_history(history)
    return _denoise(lambda slots: model.slot_logits(cache, slots), banned, model.cfg.mask_token, _fit(model, cfg))


def _banned(model: DiffusionBehaviorModel, history: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    banned = excluded_tokens(history, model.cfg.num_items)
    if exclude is not None:
        banned |= exclude.to(banned.device)
    return banned


def _fit(model: DiffusionBehaviorModel, cfg: SamplingConfig) -> SamplingConfig:
    if cfg.slots > model.cfg.slots:
        raise ValueError(f"asked for {cfg.slots} slots; the model was trained with {model.cfg.slots}")
    return cfg


def diffusion_loss(model: DiffusionBehaviorModel, history: torch.Tensor, targets: torch.Tensor,
                   generator: torch.Generator | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Masked-diffusion ELBO: mask targets (B, K; 0 = none) with probability t ~ U(eps, 1), predict them,
    cross-entropy weighted by 1/t, averaged over the real target tokens."""
    batch, k_len = targets.shape
    device = targets.device
    real = targets != 0
    t = torch.rand(batch, 1, generator=generator, device=device) * (1 - eps) + eps
    masked = (torch.rand(batch, k_len, generator=generator, device=device) < t) & real
    # every row with a target masks at least one of them (a row with nothing masked teaches nothing)
    pick = torch.where(real, torch.rand(batch, k_len, generator=generator, device=device), -1.0).argmax(1)
    none = ~masked.any(1) & real.any(1)
    masked[none, pick[none]] = True
    inputs = torch.where(masked, torch.full_like(targets, model.cfg.mask_token), targets)
    logits = model(history, inputs).float()
    logits = logits.masked_fill(excluded_tokens(history, model.cfg.num_items)[:, None, :], -1e4)
    ce = F.cross_entropy(logits[masked], targets[masked], reduction="none")
    weights = (1.0 / t).expand(batch, k_len)[masked]
    return (ce * weights).sum() / real.sum().clamp_min(1)
