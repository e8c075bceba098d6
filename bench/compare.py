"""`reaseq bench compare`: rankers trained from several configs ("arms") on the same seeds, compared per user.

Every arm trains with the same fixed epoch budget (early stopping on validation NDCG@10 inside it, never
a wall-clock limit) on each seed. Test ranks are kept per user, so each arm's difference to the first arm
gets a paired bootstrap 95% confidence interval (users resampled; each user's difference averaged over
the seeds first), overall and on slices: sparse users (≤ 20 training items) and tail items (targets in
the less popular half of the catalogue by training interactions) and, with `--cold-fraction`, cold items
(a fixed random share of the catalogue removed from every training sequence; arms with knowledge see
them through their side vectors alone). Popularity is scored on the same slices. Runs are saved one file each as they
finish, so an interrupted comparison resumes where it stopped; `--jobs` trains several runs at once (on
a GPU they share the device).

An arm whose YAML sets `train.behaviors` (a behaviour model's YAML) reads inferred behaviours: that model
is trained once per comparison (its own seed and fixed epoch budget, on the same split) before the
rankers, and its inferred items per user and split are kept in the work folder beside the runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.results import write_result

if TYPE_CHECKING:  # the CLI builds its parser from this module: keep torch and pandas out of that
    from inference.behavior.model import DiffusionBehaviorModel
    from inference.behavior.train import BehaviorTrainConfig
    from ranking.splits import SequenceData

SPARSE_TRAIN_ITEMS = 20
BOOTSTRAP_SAMPLES = 2000
COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR")
NOT_RANKED = -1e9  # a cold-candidate offset that keeps every cold item below every warm one
COLD_OFFSETS = (0.0, -0.25, -0.5, -1.0, -2.0, -4.0, NOT_RANKED)  # added to cold candidates' scores in the sweep


@dataclass(frozen=True)
class Arm:
    """One side of the comparison: a name and the ranker YAML it trains from."""

    name: str
    config: str

    @staticmethod
    def parse(text: str) -> Arm:
        name, sep, config = text.partition("=")
        if not sep or not name or not config:
            raise argparse.ArgumentTypeError(f"an arm is NAME=CONFIG.yaml, got {text!r}")
        return Arm(name, config)


def ndcg_at_10(ranks: np.ndarray) -> np.ndarray:
    """Per-user NDCG@10 from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def _scored_once(scorer: Any) -> Any:
    """`scorer`, each batch of users scored once however often it is asked for."""
    memo: dict[tuple[int, ...], Any] = {}

    def once(histories: list[np.ndarray], users: list[int]) -> Any:
        key = tuple(users)
        if key not in memo:
            memo[key] = scorer(histories, users).float().cpu()
        return memo[key]

    return once


def cold_offset_sweep(data: SequenceData, scorers: dict[str, Any], cold: np.ndarray,
                      offsets: Sequence[float] = COLD_OFFSETS) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """NDCG@10 of all users and of those whose target is warm or cold, on the validation and test splits
    (`scorers` by split), with each of `offsets` added to the cold candidates' scores (as `model.cold_offset`
    would): what each step of the cold items' reach costs the warm ranking. Also the test ranks at each
    offset, for intervals. The model is run once per split."""
    import torch

    from ranking.evaluate import rank_users

    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold] = True
    cold_columns = torch.as_tensor(is_cold, dtype=torch.float32)
    sweep: list[dict[str, Any]] = [{"offset": offset} for offset in offsets]
    test_ranks: list[np.ndarray] = []
    for split, target in (("valid", data.valid_target), ("test", data.test_target)):
        cold_target = np.array([is_cold[target(user)] for user in range(len(data.sequences))])
        once = _scored_once(scorers[split])
        for entry in sweep:
            ranks = rank_users(data, lambda h, u, s=once, o=entry["offset"]: s(h, u) + o * cold_columns, split)
            ndcg = ndcg_at_10(ranks)
            entry[split] = {"all": float(ndcg.mean()), "warm_targets": float(ndcg[~cold_target].mean()),
                            "cold_targets": float(ndcg[cold_target].mean())}
            if split == "test":
                test_ranks.append(ranks)
    return sweep, test_ranks


def reach_offset(sweep: list[dict[str, Any]], floor: float) -> float:
    """The cold offset that gives cold items the most reach while the validation NDCG@10 of all users stays
    at or above `floor` (the baseline arm's): new items shown as much as they can be at no cost to the warm
    ranking. The offset best on validation when none holds the floor."""
    holding = [entry["offset"] for entry in sweep if entry["valid"]["all"] >= floor]
    return max(holding) if holding else max(sweep, key=lambda entry: entry["valid"]["all"])["offset"]


def ranks_at_offset(run: dict[str, Any], offset: float) -> list[int] | None:
    """A run's test ranks with `offset` added to its cold candidates' scores, when the run kept them (runs
    kept before every offset's ranks were: only those with the cold items never ranked)."""
    if run.get("cold_offset_ranks") is not None:
        offsets = [entry["offset"] for entry in run["cold_offsets"]]
        return run["cold_offset_ranks"][offsets.index(offset)] if offset in offsets else None
    return run.get("warm_only_ranks") if offset == NOT_RANKED else None


def paired_bootstrap(base: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict[str, float]:
    """Mean difference other − base of per-user values, its 95% CI (users resampled), and relative %."""
    if base.shape != other.shape or base.size == 0:
        raise ValueError("paired bootstrap needs two equally long, non-empty per-user arrays")
    diff = other - base
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 200):  # in chunks: 200 × users indices at a time
        count = min(200, samples - start)
        means[start:start + count] = diff[rng.integers(0, diff.size, (count, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    scale = float(base.mean())
    relative = (lambda value: float(100 * value / scale)) if scale else (lambda value: None)
    return {"base": scale, "other": float(other.mean()), "diff": float(diff.mean()),
            "ci_low": float(low), "ci_high": float(high), "relative_pct": relative(diff.mean()),
            "relative_ci_pct": [relative(low), relative(high)], "users": int(diff.size)}


def slices(data: SequenceData, cold: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean masks over users: all, sparse users, users whose test target is a tail item (or a cold one)."""
    counts = np.zeros(data.num_items + 1)
    for user in range(len(data.sequences)):
        np.add.at(counts, data.train(user), 1)
    order = np.argsort(counts[1:], kind="stable") + 1  # least popular first
    tail = np.zeros(data.num_items + 1, dtype=bool)
    tail[order[: data.num_items // 2]] = True
    users = range(len(data.sequences))
    masks = {"all": np.ones(len(data.sequences), dtype=bool),
             "sparse_users": np.array([len(data.train(u)) <= SPARSE_TRAIN_ITEMS for u in users]),
             "tail_items": np.array([tail[data.test_target(u)] for u in users])}
    if cold is not None and cold.size:
        is_cold = np.zeros(data.num_items + 1, dtype=bool)
        is_cold[cold] = True
        masks["tail_items"] &= ~np.array([is_cold[data.test_target(u)] for u in users])
        masks["cold_items"] = np.array([is_cold[data.test_target(u)] for u in users])
    return masks


def run_file(out_dir: Path, arm: Arm, seed: int) -> Path:
    return out_dir / "runs" / f"{arm.name}-seed{seed}.json"


RUN_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "eval_every")


def run_settings(train: dict[str, Any]) -> dict[str, Any]:
    """What a run's result depends on in its train config, beyond seed, device and inputs: the budget,
    the optimiser and the model (less `extra_len`, which the inferred behaviours set)."""
    return {**{key: train.get(key) for key in RUN_SETTINGS},
            "model": {key: value for key, value in train.get("model", {}).items() if key != "extra_len"}}


def kept_run_is_current(path: Path, embeddings: str | None, train: dict[str, Any]) -> bool:
    """A finished run counts as done only when it was trained with the settings its arm has now (`train`, a
    TrainConfig as a dict) and read the embeddings it reads now: an edited config, a reused arm name or a
    re-embed between two resumed runs would otherwise mix two models in one arm."""
    if not path.is_file():
        return False
    run = json.loads(path.read_text())
    if run_settings(run.get("train_config", {})) != run_settings(train):
        return False
    return embeddings is None or (run.get("knowledge") or {}).get("embeddings_version") == embeddings


Extras = dict[str, dict[int, np.ndarray]]


def behaviors_file(out_dir: Path, config: str, epochs: int | None = None) -> Path:
    """Where a behaviour config's inferred items are kept (keyed by the YAML's content and any epoch override)."""
    import hashlib

    digest = hashlib.sha256(Path(config).read_bytes()).hexdigest()[:10]
    budget = f"-e{epochs}" if epochs is not None else ""
    return out_dir / "behaviors" / f"{Path(config).stem}-{digest}{budget}.npz"


def prepare_behaviors(data: SequenceData, config: str, out_dir: Path, device: str | None,
                      epochs: int | None = None) -> Path:
    """Train the behaviour model of `config` (for `epochs` in place of its train.epochs, when given) on the
    comparison's split once and keep its inferred items.

    A config with an `rft:` section tunes the pre-trained model with the ranking reward first; the
    pre-trained model is kept beside the inferences (keyed by every setting but `rft`), so a plain arm and
    an RFT arm of the same model share it."""
    path = behaviors_file(out_dir, config, epochs)
    if path.is_file():
        return path
    from inference.behavior.diffusion import SamplingConfig
    from inference.behavior.train import fine_tune, inferred_extras, load_behavior_config

    cfg = load_behavior_config(config, data.dataset, device=device, epochs=epochs)
    if cfg.max_seconds:
        raise ValueError(f"{config}: a comparison trains by epochs only; remove train.max_seconds")
    model, pretrained = pretrained_behavior(data, cfg, out_dir)
    stats = {"holdout_recall": np.float64(pretrained["holdout_recall"]), "epochs": np.int64(cfg.epochs),
             "best_epoch": np.int64(pretrained["best_epoch"]), "train_seconds": np.float64(pretrained["train_seconds"])}
    if cfg.rft is not None:
        if device:
            cfg = replace(cfg, rft=replace(cfg.rft, device=device))
        tuned = fine_tune(data, model, cfg, progress=False)
        model = tuned.model
        stats.update(rft_eval_before=np.float64(tuned.eval_before), rft_eval_after=np.float64(tuned.eval_after),
                     rft_seconds=np.float64(tuned.seconds),
                     rft_curve=np.asarray([json.dumps(row) for row in tuned.curve]))
    device_used = str(next(model.parameters()).device)
    extras = inferred_extras(model, data, cfg.holdout, SamplingConfig(**cfg.sampling), device_used)
    users = len(data.sequences)
    arrays = {split: np.stack([np.asarray(extras[split].get(u, ()), dtype=np.int64) for u in range(users)])
              for split in extras}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays, **stats)
    tmp.replace(path)
    return path


def pretrained_behavior(data: SequenceData, cfg: BehaviorTrainConfig,
                        out_dir: Path) -> tuple[DiffusionBehaviorModel, dict[str, Any]]:
    """The pre-trained behaviour model of `cfg` (trained here once, then read back) and its training record."""
    import hashlib

    import torch

    from inference.behavior.model import BehaviorConfig, DiffusionBehaviorModel
    from inference.behavior.train import train_behavior
    from ranking.train import pick_device

    settings = json.dumps({**cfg.to_dict(), "rft": None, "device": None}, sort_keys=True)
    saved = out_dir / "behaviors" / f"pretrained-{hashlib.sha256(settings.encode()).hexdigest()[:10]}.pt"
    if saved.is_file():
        record = torch.load(saved, map_location="cpu", weights_only=True)
        model = DiffusionBehaviorModel(BehaviorConfig(**record["model_config"]))
        model.load_state_dict(record["state"])
        return model.to(pick_device(cfg.device)).eval(), record
    knowledge = None
    if cfg.knowledge_init:
        from bench.behavior import knowledge_matrix

        knowledge = knowledge_matrix(data)[0]
    result = train_behavior(data, cfg, knowledge, progress=False)
    record = {"model_config": result.model_config.to_dict(), "holdout_recall": result.valid_recall,
              "best_epoch": result.best_epoch, "train_seconds": result.seconds,
              "state": {k: v.detach().cpu() for k, v in result.model.state_dict().items()}}
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, saved.with_suffix(".tmp"))
    saved.with_suffix(".tmp").replace(saved)
    return result.model, record


def load_behaviors(path: str | Path) -> Extras:
    """Split → user → inferred item indices, as the ranker's trainer and scorer take them."""
    with np.load(path) as archive:
        return {split: dict(enumerate(archive[split])) for split in ("train", "valid", "test")}


def train_run(data: SequenceData, arm: Arm, seed: int, epochs: int | None, device: str | None,
              cold: np.ndarray | None = None, extras: Extras | None = None) -> dict[str, Any]:
    """Train one arm on one seed (cold items, if any, never seen in training; `extras`: inferred behaviours
    per split when the arm reads them); test metrics and per-user ranks."""
    from ranking.config import load_train_config
    from ranking.evaluate import rank_users
    from ranking.metrics import metrics_from_ranks
    from ranking.train import model_scorer, train_ranker

    cfg = load_train_config(arm.config, data.dataset, epochs=epochs, device=device)
    if cfg.max_seconds:
        raise ValueError(f"{arm.config}: a comparison trains by epochs only; remove train.max_seconds")
    side, knowledge = None, None
    if cfg.knowledge:
        from inference.knowledge.embeddings import knowledge_training_inputs

        inputs = knowledge_training_inputs(data.dataset, data.item_ids, cfg.knowledge)
        side, knowledge = inputs.get("side_embeddings"), inputs.get("provenance")
    if cfg.behaviors and extras is None:
        raise ValueError(f"{arm.config}: train.behaviors is set but no inferred behaviours were prepared")
    if cfg.behaviors:
        cfg = replace(cfg, model={**cfg.model, "extra_len": len(extras["test"][0])})
    else:
        extras = None
    result = train_ranker(data, replace(cfg, seed=seed), progress=False, side_embeddings=side,
                          cold_items=None if cold is None or not cold.size else cold.tolist(),
                          extra=extras and extras["train"], valid_extra=extras and extras["valid"],
                          on_epoch=lambda row: print(epoch_line(arm.name, seed, cfg.epochs, row), flush=True))
    scorer = _scored_once(model_scorer(result.model, result.device, extras and extras["test"]))  # the sweep reuses it
    ranks = rank_users(data, scorer, "test")
    sweep, sweep_ranks = None, None  # what each step of the cold items' reach costs, user by user
    if cold is not None and cold.size:
        sweep, per_offset = cold_offset_sweep(data, {"test": scorer, "valid": model_scorer(
            result.model, result.device, extras and extras["valid"])}, cold)
        sweep_ranks = [offset_ranks.astype(int).tolist() for offset_ranks in per_offset]
    return {"arm": arm.name, "config": arm.config, "seed": seed, "train_config": cfg.to_dict(),
            "model_config": result.model_config.to_dict(), "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "history": result.history, "train_seconds": round(result.seconds, 1),
            "device": result.device, "valid": result.valid, "test": metrics_from_ranks(ranks),
            "ranks": ranks.astype(int).tolist(), "knowledge": knowledge, "cold_offsets": sweep,
            "cold_offset_ranks": sweep_ranks}


def epoch_line(arm: str, seed: int, epochs: int, row: dict[str, float]) -> str:
    """One progress line per trained epoch of a run (runs train without a bar, often several at once)."""
    valid = f", valid NDCG@10 {row['valid_NDCG@10']:.4f}" if "valid_NDCG@10" in row else ""
    return (f"  {arm} seed {seed}: epoch {row['epoch']:.0f}/{epochs}, loss {row['loss']:.3f}{valid} "
            f"(best {row['best']:.4f} at epoch {row['best_epoch']:.0f})")


def _worker(job: tuple[str, str, Arm, int, int | None, str | None, str, int, float, str | None]) -> str:
    import os

    import torch

    sequences, dataset, arm, seed, epochs, device, out, parallel, cold_fraction, behaviors = job
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))  # parallel runs share the cores
    data, cold = _split(_load(sequences, dataset), cold_fraction)
    path = run_file(Path(out), arm, seed)
    run = train_run(data, arm, seed, epochs, device, cold, load_behaviors(behaviors) if behaviors else None)
    if behaviors:
        with np.load(behaviors) as archive:
            run["behaviors"] = {"file": Path(behaviors).name, "holdout_recall": float(archive["holdout_recall"]),
                                "best_epoch": int(archive["best_epoch"]),
                                "epochs": int(archive["epochs"]) if "epochs" in archive else None,
                                "train_seconds": round(float(archive["train_seconds"]), 1)}
            if "rft_eval_before" in archive:
                run["behaviors"]["rft"] = {"eval_reward_before": float(archive["rft_eval_before"]),
                                           "eval_reward_after": float(archive["rft_eval_after"]),
                                           "seconds": round(float(archive["rft_seconds"]), 1),
                                           "curve": [json.loads(row) for row in archive["rft_curve"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(run))
    tmp.replace(path)
    return f"{arm.name} seed {seed}: test NDCG@10 {run['test']['NDCG@10']:.4f} (best epoch {run['best_epoch']}, " \
           f"{run['train_seconds']:.0f} s on {run['device']})"


def _split(data: SequenceData, cold_fraction: float) -> tuple[SequenceData, np.ndarray | None]:
    if not cold_fraction:
        return data, None
    from ranking.splits import cold_split

    return cold_split(data, cold_fraction)


def _load(sequences: str | None, dataset: str) -> SequenceData:
    if sequences:
        from ranking.splits import load_sequences_file

        return load_sequences_file(sequences)
    from ranking.experiment import load_sequences

    return load_sequences(dataset)


def _prepared_behavior_runs(data: SequenceData, todo: Sequence[tuple[Arm, int]], behavior_of: dict[Arm, str | None],
                            out_dir: Path, device: str | None,
                            epochs: int | None = None) -> Iterator[tuple[Arm, int, str]]:
    """(arm, seed, inferred-behaviours file) of the runs that read behaviours, each arm's as soon as its
    behaviour model is ready (a comparison's runs without behaviours need not wait for it)."""
    for arm in dict.fromkeys(arm for arm, _ in todo if behavior_of[arm]):
        print(f"behaviour model {behavior_of[arm]} for arm {arm.name} …", flush=True)
        path = str(prepare_behaviors(data, behavior_of[arm], out_dir, device, epochs))
        yield from ((arm, seed, path) for a, seed in todo if a == arm)


def summarise(data: SequenceData, arms: Sequence[Arm], seeds: Sequence[int], out_dir: Path,
              cold: np.ndarray | None = None) -> dict[str, Any]:
    """Medians per arm and paired bootstrap CIs of NDCG@10 against the first arm, per slice; popularity too."""
    from ranking.baselines import popularity_scorer
    from ranking.evaluate import rank_users

    runs = {(arm.name, seed): json.loads(run_file(out_dir, arm, seed).read_text()) for arm in arms for seed in seeds}
    masks = slices(data, cold)
    popularity = ndcg_at_10(rank_users(data, popularity_scorer(data, "test"), "test"))
    per_user = {arm.name: np.mean([ndcg_at_10(runs[arm.name, s]["ranks"]) for s in seeds], axis=0) for arm in arms}
    warm_only = None  # every run ranked once more with the cold items left out: the warm ranking alone
    if all(ranks_at_offset(runs[arm.name, s], NOT_RANKED) is not None for arm in arms for s in seeds):
        warm_only = {arm.name: [ndcg_at_10(ranks_at_offset(runs[arm.name, s], NOT_RANKED)) for s in seeds]
                     for arm in arms}
    table: dict[str, Any] = {}
    for arm in arms:
        tests = [runs[arm.name, s]["test"] for s in seeds]
        row: dict[str, Any] = {
            "config": arm.config, "median": {k: statistics.median(t[k] for t in tests) for k in tests[0]},
            "seeds": {str(s): runs[arm.name, s]["test"] for s in seeds},
            "best_epochs": [runs[arm.name, s]["best_epoch"] for s in seeds],
            "train_seconds": [runs[arm.name, s]["train_seconds"] for s in seeds],
            "valid_ndcg10_curves": {str(s): [round(h["valid_NDCG@10"], 5) for h in runs[arm.name, s].get("history", [])]
                                    for s in seeds},
            "model_config": runs[arm.name, seeds[0]]["model_config"],
            "behaviors": runs[arm.name, seeds[0]].get("behaviors"),
            "slices": {name: float(per_user[arm.name][mask].mean()) for name, mask in masks.items()},
            "cold_offsets": median_sweep([runs[arm.name, s].get("cold_offsets") for s in seeds]),
        }
        if arm is not arms[0]:
            row["vs_" + arms[0].name] = {name: paired_bootstrap(per_user[arms[0].name][mask], per_user[arm.name][mask])
                                         for name, mask in masks.items()}
        if warm_only is not None:
            row["warm_only"] = {"NDCG@10": statistics.median(float(n.mean()) for n in warm_only[arm.name])}
            if arm is not arms[0]:
                base, other = (np.mean(warm_only[a.name], axis=0) for a in (arms[0], arm))
                row["warm_only"]["vs_" + arms[0].name] = {name: paired_bootstrap(base[mask], other[mask])
                                                          for name, mask in masks.items() if name != "cold_items"}
        table[arm.name] = row
    add_cold_reach(table, runs, seeds, per_user, masks)
    return {"dataset": data.dataset, "fingerprint": data.fingerprint, "users": len(data.sequences),
            "seeds": list(seeds), "slice_users": {n: int(m.sum()) for n, m in masks.items()},
            "cold_items": 0 if cold is None else int(cold.size),
            "popularity_ndcg10": {name: float(popularity[mask].mean()) for name, mask in masks.items()},
            "device": runs[arms[0].name, seeds[0]]["device"], "arms": table}


def add_cold_reach(rows: dict[str, dict[str, Any]], runs: dict[tuple[str, int], dict[str, Any]],
                   seeds: Sequence[int], per_user: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
    """To each arm after the first with a cold-offset sweep and its ranks, the offset `reach_offset` picks
    against the first arm's validation NDCG@10 as trained, and its test NDCG@10 there against the first arm's
    as ranked: the arm's difference with a 95% CI per slice, cold-item targets included."""
    base = next(iter(rows))
    base_sweep = rows[base].get("cold_offsets")
    if not base_sweep:
        return
    floor = next(entry["valid"]["all"] for entry in base_sweep if entry["offset"] == 0)
    for name, row in rows.items():
        if name == base or not row.get("cold_offsets"):
            continue
        offset = reach_offset(row["cold_offsets"], floor)
        ranks = [ranks_at_offset(runs[name, seed], offset) for seed in seeds]
        if any(r is None for r in ranks):
            continue
        at_offset = np.mean([ndcg_at_10(r) for r in ranks], axis=0)
        entry = next(entry for entry in row["cold_offsets"] if entry["offset"] == offset)
        row["cold_reach"] = {
            "offset": offset, "valid_floor": floor, "valid": entry["valid"]["all"], "NDCG@10": entry["test"]["all"],
            "cold_targets": entry["test"]["cold_targets"],
            "vs_" + base: {part: paired_bootstrap(per_user[base][mask], at_offset[mask])
                           for part, mask in masks.items()}}


def median_sweep(sweeps: Sequence[list[dict[str, Any]] | None]) -> list[dict[str, Any]] | None:
    """Per offset, the median over seeds of each NDCG@10 in their cold-offset sweeps (None unless every seed
    has one, over the same offsets)."""
    if not sweeps or any(s is None for s in sweeps) or len({tuple(e["offset"] for e in s) for s in sweeps}) != 1:
        return None
    return [{"offset": entries[0]["offset"],
             **{split: {key: statistics.median(e[split][key] for e in entries) for key in entries[0][split]}
                for split in ("valid", "test")}}
            for entries in zip(*sweeps, strict=True)]


def difference_cell(versus: dict[str, float]) -> str:
    """A paired bootstrap as a table cell: the relative difference with its 95% CI, or the absolute one where
    the base scores 0 (cold items for IDs only)."""
    if versus["relative_pct"] is None:
        return f"{versus['diff']:+.4f} [{versus['ci_low']:+.4f}, {versus['ci_high']:+.4f}] abs."
    low, high = versus["relative_ci_pct"]
    return f"{versus['relative_pct']:+.1f}% [{low:+.1f}, {high:+.1f}]"


def warm_only_table(summary: dict[str, Any]) -> str:
    """Each arm's NDCG@10 with the cold items never ranked, and its difference to the first arm's with a
    95% CI per slice (cold-item targets aside: nobody ranks them); empty unless every arm has it."""
    arms = summary["arms"]
    if not all("warm_only" in row for row in arms.values()):
        return ""
    base = next(iter(arms))
    parts = [part for part in summary["slice_users"] if part != "cold_items"]
    lines = ["", f"| arm, cold items never ranked | NDCG@10 | ΔNDCG@10 vs {base}, "
             + " | ".join(p.replace("_", " ") for p in parts) + " |", "|---|---:|" + "---:|" * len(parts)]
    for name, row in arms.items():
        versus = row["warm_only"].get("vs_" + base)
        cells = ["–"] * len(parts) if versus is None else [difference_cell(versus[p]) for p in parts]
        lines.append(f"| {name} | {row['warm_only']['NDCG@10']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cold_offset_table(summary: dict[str, Any]) -> str:
    """Per arm with a cold-offset sweep: median NDCG@10 at each offset, on test (and all users on validation,
    which is what picks an offset); empty when no arm has one."""
    lines = []
    for name, row in summary["arms"].items():
        if not row.get("cold_offsets"):
            continue
        best = max(row["cold_offsets"], key=lambda e: e["valid"]["all"])["offset"]
        lines += ["", f"| {name}: cold_offset | valid, all users | test, all users | warm targets | cold targets |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {'not ranked' if e['offset'] == NOT_RANKED else format(e['offset'], '+g')}"
                  f"{' (best on valid)' if e['offset'] == best else ''} | {e['valid']['all']:.4f} | "
                  f"{e['test']['all']:.4f} | {e['test']['warm_targets']:.4f} | {e['test']['cold_targets']:.4f} |"
                  for e in row["cold_offsets"]]
    return "\n".join(lines)


def cold_reach_table(summary: dict[str, Any]) -> str:
    """Per arm with a reach offset: where the rule put it, and the arm's NDCG@10 there against the first arm's as
    ranked, with a 95% CI per slice."""
    arms = summary["arms"]
    base = next(iter(arms))
    reached = {name: row["cold_reach"] for name, row in arms.items() if "cold_reach" in row}
    if not reached:
        return ""
    parts = list(summary["slice_users"])
    lines = ["", f"| arm, most cold reach with validation ≥ {base} | cold_offset | NDCG@10 | ΔNDCG@10 vs {base}, "
             + " | ".join(p.replace("_", " ") for p in parts) + " |", "|---|---:|---:|" + "---:|" * len(parts)]
    for name, reach in reached.items():
        cells = [difference_cell(reach["vs_" + base][part]) for part in parts]
        offset = "not ranked" if reach["offset"] == NOT_RANKED else format(reach["offset"], "+g")
        if reach["valid"] < reach["valid_floor"]:
            offset += " (no offset holds the floor: best on valid)"
        lines.append(f"| {name} | {offset} | {reach['NDCG@10']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any]) -> str:
    """Medians per arm, and each arm's NDCG@10 difference to the first with its 95% CI, per slice."""
    arms = list(summary["arms"])
    base = arms[0]
    seeds = len(summary["seeds"])
    over = "one seed" if seeds == 1 else f"median of {seeds} seeds"
    parts = list(summary["slice_users"])
    lines = [f"| arm ({summary['dataset']}, {over}) | " + " | ".join(COLUMNS)
             + f" | ΔNDCG@10 vs {base}, all users [95% CI] | "
             + " | ".join(p.replace("_", " ") for p in parts[1:]) + " |",
             "|---|" + "---:|" * (len(COLUMNS) + len(parts))]
    for name in arms:
        row = summary["arms"][name]
        cells = [f"{row['median'][c]:.4f}" for c in COLUMNS]
        versus = row.get("vs_" + base)
        cells += ["–" if versus is None else difference_cell(versus[part]) for part in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    users = summary["slice_users"]
    popularity = summary.get("popularity_ndcg10", {})
    lines.append(f"\n({summary['users']} users; " + ", ".join(f"{p.replace('_', ' ')} {users[p]}" for p in parts[1:])
                 + "; popularity NDCG@10 " + ", ".join(f"{p.replace('_', ' ')} {v:.4f}" for p, v in popularity.items())
                 + f"; device {summary['device']})")
    return "\n".join(lines + [table for table in (warm_only_table(summary), cold_offset_table(summary),
                                                   cold_reach_table(summary)) if table])


def run_comparison(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Train every (arm, seed) run not yet in the work folder, then summarise them all; (summary, tag)."""
    data, cold = _split(_load(args.sequences, args.dataset), args.cold_fraction)
    arms: list[Arm] = args.arm
    if len({a.name for a in arms}) != len(arms) or len(arms) < 2:
        raise SystemExit("give at least two --arm NAME=CONFIG.yaml with distinct names")
    tag = f"{data.dataset}-{'-vs-'.join(a.name for a in arms)}" + (f"-cold{args.cold_fraction:g}" if cold is not None
                                                                    else "")
    out_dir = Path(args.work_dir or f"bench/results/compare/{tag}")
    from inference.knowledge.embeddings import embeddings_in_use
    from ranking.config import load_train_config

    configs = {arm: load_train_config(arm.config, data.dataset, epochs=args.epochs) for arm in arms}
    behavior_of = {arm: cfg.behaviors for arm, cfg in configs.items()}
    embeddings_of = {arm: embeddings_in_use(data.dataset, cfg.knowledge) for arm, cfg in configs.items()}
    todo = [(arm, seed) for seed in args.seeds for arm in arms
            if not kept_run_is_current(run_file(out_dir, arm, seed), embeddings_of[arm], configs[arm].to_dict())]
    stale = [run_file(out_dir, arm, seed).name for arm, seed in todo if run_file(out_dir, arm, seed).is_file()]
    if stale:
        print(f"{len(stale)} kept run(s) read other knowledge embeddings or had other settings than their arm has now "
              f"({', '.join(stale)}): training them again", flush=True)
    parallel = max(1, min(args.jobs, len(todo)))
    started = time.time()

    def job(arm: Arm, seed: int, behaviors: str | None) -> tuple:
        return (args.sequences, data.dataset, arm, seed, args.epochs, args.device, str(out_dir), parallel,
                args.cold_fraction, behaviors)

    def report(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", flush=True)

    print(f"{len(todo)} run(s) to train ({len(arms) * len(args.seeds) - len(todo)} already done) in {out_dir}",
          flush=True)
    if parallel > 1:
        with multiprocessing.get_context("spawn").Pool(parallel) as pool:
            pending = [pool.apply_async(_worker, (job(arm, seed, None),)) for arm, seed in todo if not behavior_of[arm]]
            for arm, seed, path in _prepared_behavior_runs(data, todo, behavior_of, out_dir, args.device,
                                                      args.behavior_epochs):
                pending.append(pool.apply_async(_worker, (job(arm, seed, path),)))  # start while the next one trains
            for result in pending:
                report(result.get())
    else:
        for arm, seed in todo:
            if not behavior_of[arm]:
                report(_worker(job(arm, seed, None)))
        for arm, seed, path in _prepared_behavior_runs(data, todo, behavior_of, out_dir, args.device,
                                                      args.behavior_epochs):
            report(_worker(job(arm, seed, path)))
    return summarise(data, arms, args.seeds, out_dir, cold), tag


def main_from_args(args: argparse.Namespace) -> int:
    summary, tag = run_comparison(args)
    name = args.name or f"compare-{tag}.json"
    path = write_result(summary, name, args.out, getattr(args, "command_line", None))
    print(markdown_table(summary) + f"\nJSON: {path}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--sequences", default=None, help="train on an exported sequences file "
                        "(`reaseq data export`) instead of loading --dataset")
    parser.add_argument("--arm", type=Arm.parse, action="append", required=True,
                        help="NAME=CONFIG.yaml; the first arm is the baseline (repeat, at least two)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help="override every arm's train.epochs")
    parser.add_argument("--behavior-epochs", type=int, default=None, help="override the behaviour models' "
                        "train.epochs (a fixed budget; their inferences are kept apart from the config's own)")
    parser.add_argument("--cold-fraction", type=float, default=0.0, help="hold this share of items out of "
                        "training (the same for every arm and seed) and report them as a slice")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--work-dir", default=None, help="where finished runs are kept (resumable)")
    parser.add_argument("--name", default=None, help="result file name under --out")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")


if __name__ == "__main__":  # `python -m bench.compare …`: the same, without the rest of the CLI
    _parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    add_arguments(_parser)
    import shlex
    import sys

    _args = _parser.parse_args()
    _args.command_line = "python -m bench.compare " + shlex.join(sys.argv[1:])
    raise SystemExit(main_from_args(_args))
