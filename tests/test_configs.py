"""Every ranker and behaviour YAML the project ships loads and builds its model: a typo or a setting that
contradicts another fails here, not an hour into an ablation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.behavior.train import load_behavior_config
from ranking.config import load_train_config
from ranking.model import RankerConfig, SequentialRanker

ROOT = Path(__file__).resolve().parent.parent
RANKER_CONFIGS = sorted([*ROOT.glob("ranking/configs/ranker-*.yaml"), *ROOT.glob("bench/configs/ranker-*.yaml")])
BEHAVIOR_CONFIGS = sorted([*ROOT.glob("inference/behavior/configs/behavior-*.yaml"),
                           *ROOT.glob("bench/configs/behavior-*.yaml")])


def _dataset(path: Path) -> str:
    return "ml-1m" if "ml-1m" in path.name else "ml-100k"


@pytest.mark.parametrize("path", RANKER_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_ranker_config_loads_and_builds_its_model(path):
    cfg = load_train_config(path, _dataset(path))
    side_dim = 8 if cfg.knowledge else 0
    model_cfg = RankerConfig(num_items=20, side_dim=side_dim, **cfg.model)
    SequentialRanker(model_cfg, torch.randn(21, side_dim) if side_dim else None, cold_items=torch.tensor([3]))
    if cfg.behaviors:
        assert (ROOT / cfg.behaviors).is_file(), f"{path}: train.behaviors {cfg.behaviors} is missing"


@pytest.mark.parametrize("path", BEHAVIOR_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_behavior_config_loads(path):
    assert load_behavior_config(path, _dataset(path)).epochs > 0


def test_a_contradicting_ranker_config_fails_to_build(tmp_path):
    bad = tmp_path / "ranker-ml-100k-bad.yaml"
    bad.write_text("model:\n  side_mode: init\n  id_dropout: 0.2\ntrain:\n  knowledge: LATEST\n")
    with pytest.raises(ValueError, match="only seeds the ID table"):
        test_each_ranker_config_loads_and_builds_its_model(bad)
