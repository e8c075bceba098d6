"""`reaseq bench behavior`: the implicit path measured three ways.

- ablation: the same ranker backbone with and without inferred behaviours as an extra sequence,
  same seeds, median of seeds; overall and for sparse users (<= 20 training interactions);
- beyond-log (bench/beyond_log.py): a personal part of test users' histories is hidden; how many of
  the hidden items do the inferred behaviours recover, against popularity, ItemKNN and the ranker;
- speed: users/s and latency of the cached and the reference sampler for several batch sizes and
  step counts, and one full forward of a plain PyTorch bidirectional transformer of the same shape.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import save_figure
from bench.results import write_result as write_json
from inference.behavior.diffusion import SamplingConfig, sample_cached, sample_reference
from inference.behavior.model import BehaviorConfig, DiffusionBehaviorModel
from inference.behavior.train import BehaviorTrainConfig, inferred_extras, train_behavior
from ranking.evaluate import evaluate
from ranking.splits import SequenceData
from ranking.train import TrainConfig, model_scorer, pick_device, train_ranker

log = logging.getLogger(__name__)
SPARSE_MAX_TRAIN = 20
METRICS = ("HR@10", "NDCG@10")


def sparse_users(data: SequenceData, max_train: int = SPARSE_MAX_TRAIN) -> list[int]:
    """Users with at most `max_train` training interactions."""
    return [u for u in range(len(data.sequences)) if len(data.train(u)) <= max_train]


def knowledge_matrix(data: SequenceData) -> tuple[torch.Tensor | None, str | None]:
    """(N+1, k) knowledge vectors (row 0 zero) from the latest knowledge-embeddings artifact, if any."""
    try:
        from inference.knowledge.embeddings import load_item_embeddings
    except ImportError:
        return None, None
    try:
        vectors, version = load_item_embeddings(data.dataset, data.item_ids)
    except (FileNotFoundError, ValueError) as error:
        log.warning("no knowledge embeddings: %s", error)
        return None, None
    table = torch.zeros(data.num_items + 1, vectors.shape[1])
    table[1:] = torch.as_tensor(vectors, dtype=torch.float32)
    return table, version


def run_ablation(data: SequenceData, ranker_cfg: TrainConfig, behavior_cfg: BehaviorTrainConfig, seeds: list[int],
                 progress: bool = True) -> dict[str, Any]:
    """Ranker with vs without inferred behaviours (one behaviour model, the ranker per seed)."""
    started = time.time()
    knowledge, knowledge_version = knowledge_matrix(data) if behavior_cfg.knowledge_init else (None, None)
    behavior = train_behavior(data, behavior_cfg, knowledge, progress=progress)
    sampling = SamplingConfig(**behavior_cfg.sampling)
    extras = inferred_extras(behavior.model, data, behavior_cfg.holdout, sampling, behavior.device)
    sparse = sparse_users(data)
    runs = []
    for seed in seeds:
        for variant in ("without", "with"):
            cfg = replace(ranker_cfg, seed=seed)
            extra = valid_extra = test_extra = None
            if variant == "with":
                cfg = replace(cfg, model={**cfg.model, "extra_len": sampling.slots})
                extra, valid_extra, test_extra = extras["train"], extras["valid"], extras["test"]
            result = train_ranker(data, cfg, extra=extra, valid_extra=valid_extra, progress=progress)
            scorer = model_scorer(result.model, result.device, test_extra)
            runs.append({"seed": seed, "variant": variant, "best_epoch": result.best_epoch,
                         "overall": evaluate(data, scorer, "test"), "sparse": evaluate(data, scorer, "test", sparse),
                         "train_seconds": round(result.seconds, 1)})
    medians = {variant: {group: {m: statistics.median(r[group][m] for r in runs if r["variant"] == variant)
                                 for m in METRICS} for group in ("overall", "sparse")}
               for variant in ("without", "with")}
    gains = {group: {m: relative_gain(medians["without"][group][m], medians["with"][group][m]) for m in METRICS}
             for group in ("overall", "sparse")}
    return {"behavior": {"holdout_recall": behavior.valid_recall, "best_epoch": behavior.best_epoch,
                         "train_seconds": round(behavior.seconds, 1), "knowledge_version": knowledge_version,
                         "config": behavior_cfg.to_dict()},
            "ranker_config": ranker_cfg.to_dict(), "seeds": seeds, "sparse_users": len(sparse),
            "runs": runs, "median": medians, "gain": gains, "wall_seconds": round(time.time() - started, 1)}


def relative_gain(before: float, after: float) -> float:
    """(after - before) / before, 0 when before is 0."""
    return (after - before) / before if before else 0.0


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls (after one warm-up), synchronising CUDA."""
    fn()
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def step_flops(cfg: BehaviorConfig, history: int, slots: int, cached: bool) -> float:
    """Matmul FLOPs of one denoising step for one user (2 per multiply-add)."""
    d, n = cfg.dim, cfg.num_items + 1
    tokens = slots if cached else history + slots
    keys = history + slots
    dense = tokens * cfg.layers * 12 * d * d  # qkv 3d², proj d², MLP 8d²
    attention = tokens * cfg.layers * 2 * keys * d
    return 2.0 * (dense + attention + slots * d * n)


def run_speed(cfg: BehaviorConfig, batches: list[int], steps: list[int], history: int, repeats: int,
              device: str) -> dict[str, Any]:
    """Users/s, p50/p99 latency and achieved FLOP/s of both samplers; plain transformer for reference."""
    torch.manual_seed(0)
    model = DiffusionBehaviorModel(cfg).to(device).eval()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    rows = []
    for batch in batches:
        hist = torch.randint(1, cfg.num_items + 1, (batch, history), device=device)
        for s in steps:
            sampling = SamplingConfig(slots=cfg.slots, steps=s)
            for name, sampler in (("cached", sample_cached), ("reference", sample_reference)):
                def call(sampler=sampler, sampling=sampling, hist=hist) -> None:
                    with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                        sampler(model, hist, sampling)
                times = timed(call, repeats)
                p50 = statistics.median(times)
                flops = batch * s * step_flops(cfg, history, cfg.slots, name == "cached")
                rows.append({"batch": batch, "steps": s, "sampler": name, "users_per_s": batch / p50,
                             "p50_ms": p50 * 1000, "p99_ms": float(np.percentile(times, 99)) * 1000,
                             "tflops": flops / p50 / 1e12})
    plain = plain_transformer_forward(cfg, history, max(batches), repeats, device, dtype)
    return {"device": device, "dtype": str(dtype), "model": cfg.to_dict(), "history": history, "rows": rows,
            "plain_transformer": plain}


def plain_transformer_forward(cfg: BehaviorConfig, history: int, batch: int, repeats: int, device: str,
                              dtype: torch.dtype) -> dict[str, float]:
    """One full forward (+ item logits of the K slots) of torch.nn.TransformerEncoder of the same shape."""
    layer = torch.nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True,
                                             norm_first=True, activation="gelu")
    encoder = torch.nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False).to(device).eval()
    table = torch.randn(cfg.num_items + 1, cfg.dim, device=device)
    x = torch.randn(batch, history + cfg.slots, cfg.dim, device=device)

    @torch.no_grad()
    def call() -> None:
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            hidden = encoder(x)
            _ = hidden[:, -cfg.slots:] @ table.T

    p50 = statistics.median(timed(call, repeats))
    return {"batch": batch, "length": history + cfg.slots, "sequences_per_s": batch / p50,
            "tflops": batch * step_flops(cfg, history, cfg.slots, cached=False) / p50 / 1e12}


def plot_rft_curve(curve: list[dict[str, float]], path: str | Path, title: str) -> Path:
    """Mean reward (with a moving average) and KL to the pre-trained model per RFT step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in curve]
    rewards = np.asarray([row["reward"] for row in curve])
    window = max(1, len(rewards) // 10)
    smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, rewards, color="tab:blue", alpha=0.35, label="mean reward of the step's samples")
    top.plot(steps[window - 1:], smooth, color="tab:blue", label=f"moving average ({window} steps)")
    top.axhline(0, color="grey", linewidth=0.8)
    top.set_ylabel("reward")
    top.legend(fontsize=8)
    bottom.plot(steps, [row["kl"] for row in curve], color="tab:red")
    bottom.set_ylabel("KL to pre-trained")
    bottom.set_xlabel("GRPO step")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def write_result(result: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """JSON with commit, command, machine and time beside the numbers."""
    return write_json(result, name, out_dir)


def ablation_table(result: dict[str, Any]) -> str:
    """Markdown: medians without/with inferred behaviours and the relative gain."""
    lines = ["| users | metric | without | with | gain |", "|---|---|---:|---:|---:|"]
    for group in ("overall", "sparse"):
        for m in METRICS:
            lines.append(f"| {group} | {m} | {result['median']['without'][group][m]:.4f} | "
                         f"{result['median']['with'][group][m]:.4f} | {result['gain'][group][m]:+.1%} |")
    return "\n".join(lines)


def speed_table(result: dict[str, Any]) -> str:
    lines = ["| batch | S | sampler | users/s | p50 ms | p99 ms | TFLOP/s |", "|---:|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['batch']} | {r['steps']} | {r['sampler']} | {r['users_per_s']:,.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['tflops']:.4f} |")
    plain = result["plain_transformer"]
    lines.append(f"\nPlain nn.TransformerEncoder, batch {plain['batch']}, length {plain['length']}: "
                 f"{plain['sequences_per_s']:,.0f} sequences/s per full forward ({plain['tflops']:.4f} TFLOP/s)")
    return "\n".join(lines)


def default_device() -> str:
    return pick_device("auto")
