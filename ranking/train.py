"""Training the sequential ranker with full-softmax cross-entropy over the catalogue."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ranking.evaluate import evaluate
from ranking.model import RankerConfig, SequentialRanker, left_pad
from ranking.splits import SequenceData

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings; early stopping watches validation NDCG@10."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    eval_every: int = 1
    seed: int = 42
    device: str = "auto"
    max_seconds: float | None = None
    # knowledge-embeddings version fused as side vectors (LATEST or a version; None: IDs only), resolved by
    # the caller (inference.knowledge.embeddings.ranker_knowledge) into train_ranker's side_embeddings
    knowledge: str | None = None
    model: dict = field(default_factory=dict)  # overrides of RankerConfig fields

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """The best model (by validation NDCG@10) and its curve."""

    model: SequentialRanker
    model_config: RankerConfig
    best_epoch: int
    valid: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    device: str


def pick_device(requested: str = "auto") -> str:
    """'cuda' when available (or asked), else 'cpu'."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_windows(sequences: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each training sequence, from its end, into windows of max_len+1 items (inputs + next)."""
    windows: list[np.ndarray] = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            windows.append(seq[start:end])
            end = start + 1 if start > 0 else 0
    return windows


def model_scorer(model: SequentialRanker, device: str, extra: dict[int, np.ndarray] | None = None):
    """Scorer for ranking.evaluate: next-item logits after each history."""
    max_len = model.cfg.max_len

    def score(histories: list[np.ndarray], users: list[int]) -> torch.Tensor:
        model.eval()
        batch = left_pad(histories, max_len).to(device)
        extra_batch = None
        if extra is not None and model.cfg.extra_len:
            extra_batch = left_pad([extra.get(u, []) for u in users], model.cfg.extra_len).to(device)
        with autocast_for(device):
            return model.score_last(batch, extra_batch).float()

    return score


def autocast_for(device: str):
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_ranker(data: SequenceData, cfg: TrainConfig, extra: dict[int, np.ndarray] | None = None,
                 side_embeddings: torch.Tensor | None = None, users: Sequence[int] | None = None,
                 cold_items: Sequence[int] | None = None,
                 progress: bool = True, valid_extra: dict[int, np.ndarray] | None = None) -> TrainResult:
    """Train on each user's training items; keep the epoch with the best validation NDCG@10.

    `extra` is each user's extra sequence while training; `valid_extra` the one used for validation
    (default: the same), e.g. behaviours inferred from a longer history.
    """
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    if cfg.knowledge and side_embeddings is None:
        raise ValueError(f"train.knowledge = {cfg.knowledge!r} but no side embeddings were given")
    model_overrides = dict(cfg.model)
    if side_embeddings is not None:
        model_overrides["side_dim"] = int(side_embeddings.shape[1])
    model_cfg = RankerConfig(num_items=data.num_items, **model_overrides)
    cold = torch.as_tensor(list(cold_items), dtype=torch.long) if cold_items is not None else None
    model = SequentialRanker(model_cfg, side_embeddings, cold).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    users = list(range(len(data.sequences))) if users is None else list(users)
    windows, owners = [], []
    for user in users:
        for window in training_windows([data.train(user)], model_cfg.max_len):
            windows.append(window)
            owners.append(user)
    if not windows:
        raise ValueError("no training windows: every user needs at least 2 training items")
    generator = np.random.default_rng(cfg.seed)
    best_score, best_state, best_epoch, best_valid = -1.0, None, 0, {}
    history: list[dict[str, float]] = []
    started = time.monotonic()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train ranker (seed {cfg.seed})", disable=not progress,
               unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        model.train()
        order = generator.permutation(len(windows))
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = left_pad([windows[i] for i in idx], model_cfg.max_len + 1).to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            extra_batch = None
            if extra is not None and model_cfg.extra_len:
                extra_batch = left_pad([extra.get(owners[i], []) for i in idx], model_cfg.extra_len).to(device)
            with autocast_for(device):
                loss = model.loss(inputs, targets, extra_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        row = {"epoch": epoch, "loss": total / count}
        if epoch % cfg.eval_every == 0:
            valid = evaluate(data, model_scorer(model, device, extra if valid_extra is None else valid_extra),
                             "valid", users)
            row.update({"valid_NDCG@10": valid["NDCG@10"], "valid_HR@10": valid["HR@10"]})
            if valid["NDCG@10"] > best_score:
                best_score, best_epoch, best_valid = valid["NDCG@10"], epoch, valid
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", ndcg10=f"{row.get('valid_NDCG@10', float('nan')):.4f}",
                        best=f"{best_score:.4f}@{best_epoch}")
        if epoch - best_epoch >= cfg.patience:
            break
        if cfg.max_seconds and time.monotonic() - started > cfg.max_seconds:
            log.info("stopping at the time budget (%.0f s)", cfg.max_seconds)
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, model_cfg, best_epoch, best_valid, history, time.monotonic() - started, device)
