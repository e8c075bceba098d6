"""Training the masked-diffusion behaviour model on users' training sequences, and using it.

Targets are always later items of a user's *training* sequence, never validation or test items.
The last `holdout` training items of every user are kept out of the diffusion targets too: the ranker
learns to use inferred behaviours from a history that stops before them, so at training time it sees
genuine predictions of items the diffusion model never saw for that user, as it does at test time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from inference.behavior.diffusion import SamplingConfig, diffusion_loss, encode_histories, sample_cached
from inference.behavior.model import BehaviorConfig, DiffusionBehaviorModel
from inference.behavior.rft import RankerReward, RFTConfig, RFTResult, rft_config_from, rft_train
from ranking.artifacts import Artifact, save_artifact
from ranking.fit import Batch, Validation, autocast_for, fit
from ranking.splits import SequenceData
from ranking.train import pick_device, seed_everything

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class BehaviorTrainConfig:
    """Optimisation settings; early stopping watches recall of the held-out items (see module doc)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    cuts_per_user: int = 8
    holdout: int = 10
    patience: int = 6
    max_seconds: float | None = None
    knowledge_init: bool = False
    seed: int = 42
    device: str = "auto"
    model: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    rft: RFTConfig | None = None  # reinforcement fine-tuning after pre-training (inference.behavior.rft)

    def to_dict(self) -> dict:
        return asdict(self)


def load_behavior_config(path: str | Path | None, dataset: str, **overrides: Any) -> BehaviorTrainConfig:
    """BehaviorTrainConfig from YAML (model/train/sampling sections, optionally rft), with overrides (None = keep)."""
    path = Path(path) if path else CONFIG_DIR / f"behavior-{dataset}.yaml"
    if not path.is_file():
        raise ValueError(f"behaviour config {path} not found; pass --config with a YAML file like "
                         f"{CONFIG_DIR / 'behavior-ml-100k.yaml'}")
    raw = yaml.safe_load(path.read_text()) or {}
    allowed = {"model": {f.name for f in fields(BehaviorConfig)} - {"num_items"},
               "train": {f.name for f in fields(BehaviorTrainConfig)} - {"model", "sampling", "rft"},
               "sampling": {f.name for f in fields(SamplingConfig)}}
    if not isinstance(raw, dict) or set(raw) - set(allowed) - {"rft"}:
        raise ValueError(f"{path}: top-level keys must be among {[*sorted(allowed), 'rft']}, got {list(raw)}")
    for section, keys in allowed.items():
        unknown = set(raw.get(section) or {}) - keys
        if unknown:
            raise ValueError(f"{path}: unknown {section} keys {sorted(unknown)}; allowed: {sorted(keys)}")
    train = dict(raw.get("train") or {})
    train.update({k: v for k, v in overrides.items() if v is not None})
    rft = rft_config_from(raw["rft"], str(path)) if raw.get("rft") is not None else None
    return BehaviorTrainConfig(model=dict(raw.get("model") or {}), sampling=dict(raw.get("sampling") or {}),
                               rft=rft, **train)


@dataclass
class BehaviorResult:
    """The best model by held-out recall, its curve and where it ran."""

    model: DiffusionBehaviorModel
    model_config: BehaviorConfig
    best_epoch: int
    valid_recall: float
    history: list[dict[str, float]]
    seconds: float
    device: str


def diffusion_sequence(data: SequenceData, user: int, holdout: int) -> np.ndarray:
    """The part of a user's training sequence the diffusion model learns from (all but `holdout`)."""
    train = data.train(user)
    return train[:max(1, len(train) - holdout)]


def random_cuts(sequences: Sequence[np.ndarray], cuts: int, max_history: int, slots: int,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, next `slots` items) pairs cut at random points of each sequence of >= 2 items."""
    histories, targets = [], []
    for seq in sequences:
        if len(seq) < 2:
            continue
        for cut in rng.integers(1, len(seq), size=cuts):
            histories.append(seq[max(0, cut - max_history):cut])
            targets.append(seq[cut:cut + slots])
    if not histories:
        raise ValueError("no training cuts: sequences need at least 2 items")
    hist = torch.zeros(len(histories), max_history, dtype=torch.long)
    tgt = torch.zeros(len(targets), slots, dtype=torch.long)
    for row, (h, t) in enumerate(zip(histories, targets, strict=True)):
        hist[row, max_history - len(h):] = torch.as_tensor(h, dtype=torch.long)
        tgt[row, :len(t)] = torch.as_tensor(t, dtype=torch.long)
    return hist, tgt


def infer_items(model: DiffusionBehaviorModel, histories: Sequence[Sequence[int]], cfg: SamplingConfig,
                device: str = "cpu", batch_size: int = 256) -> list[list[int]]:
    """Inferred item indices (K per user) for item-index histories, with the cached sampler."""
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(histories), batch_size):
        batch = encode_histories(histories[start:start + batch_size], model.cfg.max_history).to(device)
        with autocast_for(device):
            items, _ = sample_cached(model, batch, cfg)
        out.extend(items.tolist())
    return out


def holdout_recall(model: DiffusionBehaviorModel, data: SequenceData, users: Sequence[int], holdout: int,
                   cfg: SamplingConfig, device: str) -> float:
    """Mean share of each user's held-out training items that the inferred behaviours name."""
    histories = [diffusion_sequence(data, u, holdout) for u in users]
    inferred = infer_items(model, histories, cfg, device)
    recalls = []
    for user, items in zip(users, inferred, strict=True):
        held = set(data.train(user)[len(diffusion_sequence(data, user, holdout)):].tolist())
        if held:
            recalls.append(len(held & set(items)) / min(len(held), len(items)))
    return float(np.mean(recalls)) if recalls else 0.0


def train_behavior(data: SequenceData, cfg: BehaviorTrainConfig, knowledge: torch.Tensor | None = None,
                   users: Sequence[int] | None = None, sequences: dict[int, np.ndarray] | None = None,
                   progress: bool = True) -> BehaviorResult:
    """Train on random cuts of each user's diffusion sequence; keep the epoch with the best held-out recall.

    `sequences` replaces users' sequences (e.g. the beyond-log experiment removes a slice of the
    catalogue from some users); `knowledge` (N+1, k) initialises item tokens when cfg.knowledge_init.
    """
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model_cfg = BehaviorConfig(num_items=data.num_items, **cfg.model)
    model = DiffusionBehaviorModel(model_cfg)
    if cfg.knowledge_init:
        if knowledge is None:
            raise ValueError("knowledge_init needs knowledge embeddings: build them with "
                             "`reaseq knowledge build --dataset ...` or turn knowledge_init off")
        model.init_items_from(knowledge)
    model.to(device)
    sampling = SamplingConfig(**{**cfg.sampling, "slots": min(cfg.sampling.get("slots", model_cfg.slots),
                                                               model_cfg.slots)})
    users = list(range(len(data.sequences))) if users is None else list(users)
    seqs = [sequences[u] if sequences and u in sequences else diffusion_sequence(data, u, cfg.holdout)
            for u in users]
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    check_users = users[: min(len(users), 400)]

    def batches() -> Iterable[Batch]:
        hist, tgt = random_cuts(seqs, cfg.cuts_per_user, model_cfg.max_history, model_cfg.slots, rng)
        order = torch.as_tensor(rng.permutation(len(hist)))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            yield len(idx), lambda idx=idx: diffusion_loss(model, hist[idx].to(device), tgt[idx].to(device), generator)

    def validate() -> Validation:
        recall = holdout_recall(model, data, check_users, cfg.holdout, sampling, device)
        return Validation(recall, {"holdout_recall": recall})

    fitted = fit(model, optimizer, batches, validate, epochs=cfg.epochs, patience=cfg.patience, device=device,
                 desc=f"train behaviour (seed {cfg.seed})", max_seconds=cfg.max_seconds, progress=progress)
    best = fitted.best.score if fitted.best else -1.0
    return BehaviorResult(model, model_cfg, fitted.best_epoch, best, fitted.history, fitted.seconds, device)


def save_behavior(result: BehaviorResult, cfg: BehaviorTrainConfig, dataset: dict[str, Any],
                  knowledge_version: str | None = None, root: Path | None = None) -> Artifact:
    """Save a trained behaviour model as artifacts/behavior/<dataset>/<version>/."""
    metrics = {"holdout_recall": result.valid_recall, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "train_seconds": round(result.seconds, 1),
               "device": result.device, "history": result.history}
    config = {"model": result.model_config.to_dict(), "train": cfg.to_dict(), "kind": "masked-diffusion",
              "knowledge_version": knowledge_version, "parent": None}
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return save_artifact("behavior", dataset, config, state, metrics, root)


def save_tuned_behavior(tuned: RFTResult, parent: Artifact, rft: RFTConfig, reward_ranker: str,
                        root: Path | None = None) -> Artifact:
    """Save an RFT-tuned model as a new version of the parent's dataset; its config names the parent."""
    metrics = {"eval_reward_before": tuned.eval_before, "eval_reward_after": tuned.eval_after,
               "rft_seconds": round(tuned.seconds, 1), "curve": tuned.curve}
    config = {**parent.config, "kind": "masked-diffusion-rft", "parent": parent.version,
              "rft": rft.to_dict(), "reward_ranker": reward_ranker}
    state = {k: v.detach().cpu() for k, v in tuned.model.state_dict().items()}
    return save_artifact("behavior", parent.dataset, config, state, metrics, root)


def train_reward_ranker(data: SequenceData, model: DiffusionBehaviorModel, cfg: BehaviorTrainConfig,
                        rft: RFTConfig, device: str, progress: bool = True):
    """The ranker the reward asks: `rft.reward_ranker`'s config reading the parent model's inferences."""
    from dataclasses import replace

    from ranking.config import load_train_config
    from ranking.train import train_ranker

    sampling = SamplingConfig(**cfg.sampling)
    extras = inferred_extras(model, data, cfg.holdout, sampling, device)
    ranker_cfg = load_train_config(rft.reward_ranker, data.dataset, device=device, seed=rft.seed)
    ranker_cfg = replace(ranker_cfg, model={**ranker_cfg.model, "extra_len": sampling.slots})
    return train_ranker(data, ranker_cfg, extra=extras["train"], valid_extra=extras["valid"], progress=progress)


def fine_tune(data: SequenceData, model: DiffusionBehaviorModel, cfg: BehaviorTrainConfig, ranker=None,
              progress: bool = True) -> RFTResult:
    """RFT of a pre-trained model (a copy; the parent is untouched) with `cfg.rft`; `ranker`: the reward's
    ranker (a SequentialRanker reading K extra items), trained here from `cfg.rft.reward_ranker` when None."""
    import copy

    if cfg.rft is None:
        raise ValueError("the behaviour config has no 'rft:' section (see "
                         f"{CONFIG_DIR / 'behavior-ml-100k-rft.yaml'})")
    device = pick_device(cfg.rft.device)
    model = copy.deepcopy(model).to(device)
    if ranker is None:
        ranker = train_reward_ranker(data, model, cfg, cfg.rft, device, progress).model
    reward = RankerReward(ranker.to(device), cfg.rft.reward, device)
    sampling = SamplingConfig(**cfg.sampling)
    return rft_train(model, data, reward, cfg.rft, sampling, device, progress=progress)


def behavior_config_of(artifact: Artifact) -> BehaviorTrainConfig:
    """The training settings a behaviour artifact was made with (without its rft section)."""
    known = {f.name for f in fields(BehaviorTrainConfig)} - {"rft"}
    return BehaviorTrainConfig(**{k: v for k, v in artifact.config["train"].items() if k in known})


def load_behavior_model(artifact: Artifact, device: str = "auto") -> DiffusionBehaviorModel:
    """Rebuild a trained behaviour model from its artifact."""
    device = pick_device(device)
    model = DiffusionBehaviorModel(BehaviorConfig(**artifact.config["model"]))
    model.load_state_dict(artifact.weights(device))
    return model.to(device).eval()


def split_histories(data: SequenceData, split: str, holdout: int) -> list[np.ndarray]:
    """The history each split infers from: 'train' stops before the holdout, 'valid' is the training
    sequence, 'test' adds the validation item."""
    if split == "train":
        return [diffusion_sequence(data, u, holdout) for u in range(len(data.sequences))]
    if split == "valid":
        return [data.train(u) for u in range(len(data.sequences))]
    if split == "test":
        return [data.sequences[u][:-1] for u in range(len(data.sequences))]
    raise ValueError(f"split must be train, valid or test, got {split!r}")


def inferred_extras(model: DiffusionBehaviorModel, data: SequenceData, holdout: int, cfg: SamplingConfig,
                    device: str = "cpu") -> dict[str, dict[int, np.ndarray]]:
    """Inferred items per user for each split, ready for the ranker's extra sequence."""
    out = {}
    for split in ("train", "valid", "test"):
        items = infer_items(model, split_histories(data, split, holdout), cfg, device)
        out[split] = {u: np.asarray(row, dtype=np.int64) for u, row in enumerate(items)}
    return out
