"""Ranker configuration as data: YAML files with `model:` and `train:` sections."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ranking.fit import PRECISIONS
from ranking.model import RankerConfig
from ranking.train import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration file is missing or has unknown or ill-typed keys."""


def default_config_path(dataset: str) -> Path:
    return CONFIG_DIR / f"ranker-{dataset}.yaml"


def load_train_config(path: str | Path | None, dataset: str, **overrides: Any) -> TrainConfig:
    """TrainConfig from a YAML file (default: the dataset's), with CLI overrides (None = keep)."""
    path = Path(path) if path else default_config_path(dataset)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config with a YAML file like "
                          f"{default_config_path('ml-100k')}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict) or set(raw) - {"model", "train"}:
        raise ConfigError(f"{path}: top-level keys must be 'model' and 'train', got {list(raw)}")
    model = raw.get("model") or {}
    train = raw.get("train") or {}
    _check_keys(path, "model", model, {f.name for f in fields(RankerConfig)} - {"num_items"}, _switches(RankerConfig))
    _check_keys(path, "train", train, {f.name for f in fields(TrainConfig)} - {"model"}, _switches(TrainConfig))
    train.update({k: v for k, v in overrides.items() if v is not None})
    if train.get("precision", "auto") not in PRECISIONS:
        raise ConfigError(f"{path}: train.precision {train['precision']!r}: use one of {', '.join(PRECISIONS)}")
    try:
        return TrainConfig(model=dict(model), **train)
    except TypeError as error:
        raise ConfigError(f"{path}: {error}") from error


def _switches(config: type) -> set[str]:
    """The dataclass's true/false fields (annotations are strings here: `from __future__ import annotations`)."""
    return {f.name for f in fields(config) if f.type in ("bool", bool)}


def _check_keys(path: Path, section: str, values: dict, allowed: set[str],
                switches: Collection[str] = frozenset()) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: '{section}' must be a mapping")
    unknown = set(values) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown {section} keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in values.items():
        if key in switches:
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {section}.{key} = {value!r} must be true or false")
        elif not isinstance(value, int | float | str | type(None)) or isinstance(value, bool):
            raise ConfigError(f"{path}: {section}.{key} = {value!r} must be a number or string")
