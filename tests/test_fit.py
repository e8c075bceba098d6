"""The shared training loop: best epoch kept and restored, early stopping, history rows."""

from __future__ import annotations

import torch
from torch import nn

from ranking.fit import Validation, fit


def test_fit_keeps_the_best_epoch_and_stops_after_patience():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 2), torch.randn(16, 1)
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9])
    weights: list[torch.Tensor] = []

    def validate() -> Validation:
        weights.append(model.weight.detach().clone())
        score = next(scores)
        return Validation(score, {"score": score}, details={"epoch_score": score})

    result = fit(model, optimizer, lambda: [(16, lambda: ((model(x) - y) ** 2).mean())], validate,
                 epochs=10, patience=2, device="cpu", desc="test", progress=False)
    assert result.best_epoch == 2 and result.best.details == {"epoch_score": 0.5}
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]  # stopped: 2 epochs without a better score
    assert result.history[0]["loss"] > result.history[-1]["loss"] and result.history[1]["score"] == 0.5
    assert torch.equal(model.weight, weights[1]) and not model.training  # best weights back, eval mode
