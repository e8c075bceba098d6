"""The shared training loop: best epoch kept and restored, early stopping, history rows."""

from __future__ import annotations

import pytest
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

    seen: list[dict[str, float]] = []
    result = fit(model, optimizer, lambda: [(16, lambda: ((model(x) - y) ** 2).mean())], validate,
                 epochs=10, patience=2, device="cpu", desc="test", progress=False, on_epoch=seen.append)
    assert [(row["epoch"], row["best"], row["best_epoch"]) for row in seen] == [(1, 0.1, 1), (2, 0.5, 2), (3, 0.5, 2),
                                                                                  (4, 0.5, 2)]
    assert result.best_epoch == 2 and result.best.details == {"epoch_score": 0.5}
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]  # stopped: 2 epochs without a better score
    assert result.history[0]["loss"] > result.history[-1]["loss"] and result.history[1]["score"] == 0.5
    assert torch.equal(model.weight, weights[1]) and not model.training  # best weights back, eval mode


def test_precision_picks_the_autocast_dtype_and_a_yaml_typo_is_refused(tmp_path):
    from ranking.config import ConfigError, load_train_config
    from ranking.fit import autocast_for

    a, b = torch.randn(4, 8), torch.randn(8, 4)
    dtypes = {}
    for precision in ("auto", "bf16", "fp32"):
        with autocast_for("cpu", precision):
            dtypes[precision] = (a @ b).dtype
    assert dtypes == {"auto": torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}
    with pytest.raises(ValueError, match="bf16"):
        autocast_for("cpu", "half")

    seen = []

    def loss() -> torch.Tensor:
        seen.append((a @ b).dtype)
        return (a @ b).float().mean() * model.weight.sum()

    model = nn.Linear(2, 1)
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda: [(4, loss)], lambda: Validation(0.0, {}),
        epochs=1, patience=1, device="cpu", desc="test", progress=False, precision="bf16")
    assert seen == [torch.bfloat16]  # the training step ran under the asked precision

    path = tmp_path / "ranker.yaml"
    path.write_text("train:\n  precision: bf16\n")
    assert load_train_config(path, "ml-100k").precision == "bf16"
    path.write_text("train:\n  precision: bfloat16\n")
    with pytest.raises(ConfigError, match=r"train\.precision 'bfloat16'"):
        load_train_config(path, "ml-100k")


def test_a_switch_in_a_config_takes_true_or_false_and_other_keys_refuse_them(tmp_path):
    from ranking.config import ConfigError, load_train_config

    path = tmp_path / "ranker.yaml"
    path.write_text("model:\n  side_output: false\n")
    assert load_train_config(path, "ml-100k").model["side_output"] is False
    path.write_text("model:\n  side_output: 0\n")  # a number is not a switch
    with pytest.raises(ConfigError, match=r"model\.side_output = 0 must be true or false"):
        load_train_config(path, "ml-100k")
    path.write_text("model:\n  dim: true\n")  # nor is a switch a number
    with pytest.raises(ConfigError, match=r"model\.dim = True must be a number or string"):
        load_train_config(path, "ml-100k")
