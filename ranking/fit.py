"""The one training loop every model shares: epochs of optimiser steps, a validation score after each,
the best epoch's weights kept, early stopping after `patience` epochs without a better score.

A model brings its batches (closures computing a loss) and its validation (a row of named metrics and
the score that decides "best"); the loop owns the rest: train/eval modes, mixed precision on CUDA, the
progress bar, the epoch history, restoring the best weights.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# one batch: (its size, a closure returning its loss)
Batch = tuple[int, Callable[[], torch.Tensor]]


@dataclass(frozen=True)
class Validation:
    """What one validation gives: the score to maximise, the fields for the history row and the progress
    bar, and anything else to keep with the best epoch (e.g. every metric)."""

    score: float
    row: dict[str, float]
    details: Any = None


@dataclass
class FitResult:
    """The best epoch, its validation, the history of every epoch and the wall time."""

    best_epoch: int
    best: Validation | None
    history: list[dict[str, float]]
    seconds: float


PRECISIONS = ("auto", "bf16", "fp32")


def autocast_for(device: str, precision: str = "auto"):
    """bf16 autocast on CUDA and fp32 on the CPU ("auto"), or bf16 / fp32 on either."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    bf16 = precision == "bf16" or (precision == "auto" and kind == "cuda")
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[], Iterable[Batch]],
        validate: Callable[[], Validation], *, epochs: int, patience: int, device: str, desc: str,
        eval_every: int = 1, max_seconds: float | None = None, progress: bool = True,
        precision: str = "auto", on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train `model` for at most `epochs`; the model ends in eval mode with the best epoch's weights.

    `on_epoch`, when given, receives each epoch's history row with the best score so far and its epoch
    (`best`, `best_epoch`): progress where no bar is shown, e.g. from runs in worker processes."""
    best: Validation | None = None
    best_state, best_epoch = None, 0
    history: list[dict[str, float]] = []
    started = time.monotonic()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for size, loss_of in batches():
            with autocast_for(device, precision):
                loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * size
            count += size
        row: dict[str, float] = {"epoch": epoch, "loss": total / max(count, 1)}
        if epoch % eval_every == 0:
            model.eval()
            checked = validate()
            row.update(checked.row)
            if best is None or checked.score > best.score:
                best, best_epoch = checked, epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        if on_epoch is not None:
            on_epoch({**row, "best": best.score if best else float("nan"), "best_epoch": best_epoch})
        shown = {k: f"{v:.4f}" for k, v in row.items() if k not in ("epoch", "loss")}
        bar.set_postfix(loss=f"{row['loss']:.3f}", **shown,
                        best=f"{best.score if best else float('nan'):.4f}@{best_epoch}")
        if epoch - best_epoch >= patience:
            break
        if max_seconds and time.monotonic() - started > max_seconds:
            log.info("stopping at the time budget (%.0f s)", max_seconds)
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch, best, history, time.monotonic() - started)
