"""Training the sequential ranker with full-softmax cross-entropy over the catalogue."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ranking.evaluate import evaluate
from ranking.fit import Batch, Validation, autocast_for, fit
from ranking.model import RankerConfig, SequentialRanker, left_pad
from ranking.splits import SequenceData


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
    # autocast: "auto" is bf16 on CUDA and fp32 on the CPU; "bf16" also on CPUs with AVX512-BF16 / AMX
    precision: str = "auto"
    max_seconds: float | None = None
    # knowledge-embeddings version fused as side vectors (LATEST or a version; None: IDs only), resolved by
    # the caller (inference.knowledge.embeddings.ranker_knowledge) into train_ranker's side_embeddings
    knowledge: str | None = None
    # a behaviour model's YAML whose inferred items become each user's extra sequence (None: no inferred
    # behaviours); resolved by the caller (`reaseq bench compare` trains it once per comparison)
    behaviors: str | None = None
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


def model_scorer(model: SequentialRanker, device: str, extra: dict[int, np.ndarray] | None = None,
                 precision: str = "auto"):
    """Scorer for ranking.evaluate: next-item logits after each history."""
    max_len = model.cfg.max_len

    def score(histories: list[np.ndarray], users: list[int]) -> torch.Tensor:
        model.eval()
        batch = left_pad(histories, max_len).to(device)
        extra_batch = None
        if extra is not None and model.cfg.extra_len:
            extra_batch = left_pad([extra.get(u, []) for u in users], model.cfg.extra_len).to(device)
        with autocast_for(device, precision):
            return model.score_last(batch, extra_batch).float()

    return score


def train_ranker(data: SequenceData, cfg: TrainConfig, extra: dict[int, np.ndarray] | None = None,
                 side_embeddings: torch.Tensor | None = None, users: Sequence[int] | None = None,
                 cold_items: Sequence[int] | None = None,
                 progress: bool = True, valid_extra: dict[int, np.ndarray] | None = None,
                 on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train on each user's training items; keep the epoch with the best validation NDCG@10.

    `extra` is each user's extra sequence while training; `valid_extra` the one used for validation
    (default: the same), e.g. behaviours inferred from a longer history. `on_epoch` receives each epoch's
    row (see `ranking.fit.fit`).
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

    def batches() -> Iterable[Batch]:
        order = generator.permutation(len(windows))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = left_pad([windows[i] for i in idx], model_cfg.max_len + 1).to(device)
            extra_batch = None
            if extra is not None and model_cfg.extra_len:
                extra_batch = left_pad([extra.get(owners[i], []) for i in idx], model_cfg.extra_len).to(device)
            yield len(idx), lambda batch=batch, extra_batch=extra_batch: model.loss(batch[:, :-1], batch[:, 1:],
                                                                                    extra_batch)

    def validate() -> Validation:
        valid = evaluate(data, model_scorer(model, device, extra if valid_extra is None else valid_extra,
                                            cfg.precision), "valid", users)
        return Validation(valid["NDCG@10"], {"valid_NDCG@10": valid["NDCG@10"], "valid_HR@10": valid["HR@10"]},
                          valid)

    fitted = fit(model, optimizer, batches, validate, epochs=cfg.epochs, patience=cfg.patience, device=device,
                 desc=f"train ranker (seed {cfg.seed})", eval_every=cfg.eval_every, max_seconds=cfg.max_seconds,
                 progress=progress, precision=cfg.precision, on_epoch=on_epoch)
    best_valid = fitted.best.details if fitted.best else {}
    return TrainResult(model, model_cfg, fitted.best_epoch, best_valid, fitted.history, fitted.seconds, device)
