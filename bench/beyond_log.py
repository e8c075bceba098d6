"""`reaseq bench behavior --part beyond-log`: do inferred behaviours recover what a user did elsewhere?

A user-specific part of each test user's history is hidden, as if watched off the platform: the user's
*below-average genres* are those the user watches, but with a smaller share of their items than the
average interaction has (a personal deviation from the crowd, not the catalogue's popular slice); the
user's *slice* is every catalogue item whose genres all lie in them; a random half of the user's own
items in the slice is hidden from every sequence the models train and infer from. Each method then
proposes K items from the user's slice (the slice is the hint every method gets; items already in the
visible history are excluded), scored by recall@K and NDCG@K of the hidden items:

- popularity within the slice (interactions in the visible data);
- ItemKNN: cosine item-to-item co-occurrence over the visible data, summed over the user's history;
- the ranker's next-item scores restricted to the slice;
- the diffusion model, pre-trained and after RFT, with and without knowledge-initialised item tokens.

Per-user values give paired bootstrap 95% CIs of the RFT model against every other method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.compare import paired_bootstrap
from inference.behavior.diffusion import SamplingConfig, encode_histories, sample_cached
from inference.behavior.model import DiffusionBehaviorModel
from inference.behavior.train import BehaviorTrainConfig, fine_tune, train_behavior, train_reward_ranker
from ranking.splits import SequenceData
from ranking.train import TrainConfig, model_scorer, train_ranker

# (histories, users) → (B, N+1) scores; higher first
Scores = Callable[[list[np.ndarray], list[int]], torch.Tensor]


def genre_shares(sequence: Sequence[int], item_genres: list[set[str]]) -> dict[str, float]:
    """Share of a sequence's items carrying each genre (an item counts once for each of its genres)."""
    counts: dict[str, int] = {}
    for item in sequence:
        for genre in item_genres[int(item)]:
            counts[genre] = counts.get(genre, 0) + 1
    return {genre: count / max(1, len(sequence)) for genre, count in counts.items()}


def below_average_genres(sequence: Sequence[int], item_genres: list[set[str]],
                         population: dict[str, float]) -> set[str]:
    """Genres the user watches, with a smaller share of their items than the average interaction's."""
    return {g for g, share in genre_shares(sequence, item_genres).items() if share < population.get(g, 0.0)}


def user_slice(genres: set[str], item_genres: list[set[str]]) -> np.ndarray:
    """(N+1,) bool: items whose genres (at least one) all lie in `genres`."""
    return np.asarray([bool(g) and g <= genres for g in item_genres])


def hide_personal_slices(data: SequenceData, item_genres: list[set[str]], test_share: float, seed: int,
                         min_hidden: int = 2, min_kept: int = 10
                         ) -> tuple[SequenceData, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Hide a random half of each test user's items in their personal slice.

    Returns the data without the hidden items, the hidden items per test user and each test user's slice."""
    rng = np.random.default_rng(seed)
    everything = np.concatenate(data.sequences)
    population = genre_shares(everything, item_genres)
    candidates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for user, seq in enumerate(data.sequences):
        in_slice = user_slice(below_average_genres(seq, item_genres, population), item_genres)
        mine = np.flatnonzero(in_slice[seq])
        if len(mine) // 2 >= min_hidden and len(seq) - len(mine) // 2 >= min_kept:
            candidates[user] = (mine, in_slice)
    chosen = sorted(rng.choice(sorted(candidates), size=int(len(candidates) * test_share), replace=False).tolist())
    sequences, hidden, slices = list(data.sequences), {}, {}
    for user in chosen:
        mine, in_slice = candidates[user]
        positions = rng.choice(mine, size=len(mine) // 2, replace=False)
        keep = np.ones(len(data.sequences[user]), dtype=bool)
        keep[positions] = False
        hidden[user] = data.sequences[user][~keep]
        sequences[user] = data.sequences[user][keep]
        slices[user] = in_slice
    return replace(data, sequences=sequences), hidden, slices


def top_k_in_slice(scores: torch.Tensor, histories: list[np.ndarray], slices: list[np.ndarray],
                   k: int) -> list[list[int]]:
    """The K best-scored items of each row's slice, history and padding excluded, best first."""
    scores = scores.float().clone()
    allowed = torch.as_tensor(np.stack(slices))
    for row, history in enumerate(histories):
        allowed[row, torch.as_tensor(history, dtype=torch.long)] = False
    allowed[:, 0] = False
    return scores.masked_fill(~allowed, float("-inf")).topk(k, 1).indices.tolist()


def list_metrics(predicted: list[int], hidden: np.ndarray, k: int) -> tuple[float, float]:
    """(recall@k over min(k, |hidden|), NDCG@k) of a best-first list against a user's hidden items."""
    truth = set(int(i) for i in hidden)
    hits = [1.0 if item in truth else 0.0 for item in predicted[:k]]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(truth))))
    dcg = sum(hit / np.log2(i + 2) for i, hit in enumerate(hits))
    return sum(hits) / min(k, len(truth)), dcg / ideal


def popularity_scores(data: SequenceData) -> torch.Tensor:
    counts = np.bincount(np.concatenate(data.sequences), minlength=data.num_items + 1).astype(np.float32)
    return torch.as_tensor(counts)


def item_knn_scores(data: SequenceData, histories: list[np.ndarray]) -> torch.Tensor:
    """Σ over each history's items of the cosine co-occurrence (users as vectors) with every item."""
    users = torch.zeros(len(data.sequences), data.num_items + 1)
    for row, seq in enumerate(data.sequences):
        users[row, torch.as_tensor(np.unique(seq), dtype=torch.long)] = 1.0
    co = users.T @ users
    norm = co.diagonal().clamp_min(1.0).sqrt()
    similarity = co / norm[:, None] / norm[None, :]
    similarity.fill_diagonal_(0.0)
    profile = torch.zeros(len(histories), data.num_items + 1)
    for row, history in enumerate(histories):
        profile[row, torch.as_tensor(np.unique(history), dtype=torch.long)] = 1.0
    return profile @ similarity


@torch.no_grad()
def diffusion_in_slice(model: DiffusionBehaviorModel, histories: list[np.ndarray], slices: list[np.ndarray],
                       sampling: SamplingConfig, device: str) -> list[list[int]]:
    """The model's K inferred items restricted to each user's slice, most confident first."""
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(histories), 256):
        chunk = histories[start:start + 256]
        history = encode_histories(chunk, model.cfg.max_history).to(device)
        outside = ~torch.as_tensor(np.stack(slices[start:start + 256])).to(device)
        items, confidence = sample_cached(model, history, sampling, exclude=outside)
        order = confidence.argsort(1, descending=True)
        out.extend(items.gather(1, order).tolist())
    return out


def run_beyond_log(data: SequenceData, item_genres: list[set[str]], ranker_cfg: TrainConfig,
                   behavior_cfg: BehaviorTrainConfig, knowledge: torch.Tensor | None, test_share: float = 0.5,
                   seed: int = 1, progress: bool = True) -> dict[str, Any]:
    """Every method's per-user recall@K / NDCG@K of the hidden items; the RFT model against each (paired CI)."""
    if behavior_cfg.rft is None:
        raise ValueError("the beyond-log test tunes the behaviour model: its config needs an rft: section "
                         "(e.g. --behavior-config bench/configs/behavior-ml-100k-rft.yaml)")
    started = time.time()
    visible, hidden, slices = hide_personal_slices(data, item_genres, test_share, seed)
    users = sorted(hidden)
    histories = [visible.sequences[u] for u in users]
    user_slices = [slices[u] for u in users]
    sampling = SamplingConfig(**behavior_cfg.sampling)
    k = sampling.slots
    lists: dict[str, list[list[int]]] = {
        "popularity_in_slice": top_k_in_slice(popularity_scores(visible).expand(len(users), -1), histories,
                                              user_slices, k),
        "item_knn_in_slice": top_k_in_slice(item_knn_scores(visible, histories), histories, user_slices, k)}
    ranker = train_ranker(visible, replace(ranker_cfg, seed=seed), progress=progress)
    with torch.no_grad():
        scores = model_scorer(ranker.model, ranker.device)(histories, users).cpu()
    lists["ranker_in_slice"] = top_k_in_slice(scores, histories, user_slices, k)

    variants = [("ids_only", False)] + ([("knowledge_init", True)] if knowledge is not None else [])
    runs: dict[str, Any] = {}
    reward_ranker = None
    for name, use_knowledge in variants:
        cfg = replace(behavior_cfg, knowledge_init=use_knowledge, seed=seed)
        pretrained = train_behavior(visible, cfg, knowledge if use_knowledge else None, progress=progress)
        if reward_ranker is None:  # one reward for both variants: the ranker reading the ids-only model's inferences
            reward_ranker = train_reward_ranker(visible, pretrained.model, cfg, cfg.rft, pretrained.device,
                                                progress).model
        tuned = fine_tune(visible, pretrained.model, cfg, reward_ranker, progress=progress)
        lists[f"diffusion_{name}"] = diffusion_in_slice(pretrained.model, histories, user_slices, sampling,
                                                        pretrained.device)
        lists[f"diffusion_{name}_rft"] = diffusion_in_slice(tuned.model, histories, user_slices, sampling,
                                                            pretrained.device)
        runs[name] = {"holdout_recall": pretrained.valid_recall, "best_epoch": pretrained.best_epoch,
                      "rft_eval_reward": [tuned.eval_before, tuned.eval_after], "rft_seconds": round(tuned.seconds, 1)}
    per_user = {name: np.asarray([list_metrics(p, hidden[u], k) for p, u in zip(preds, users, strict=True)])
                for name, preds in lists.items()}
    metrics = {name: {f"recall@{k}": float(values[:, 0].mean()), f"NDCG@{k}": float(values[:, 1].mean())}
               for name, values in per_user.items()}
    best_rft = max((n for n in per_user if n.endswith("_rft")), key=lambda n: metrics[n][f"NDCG@{k}"])
    versus = {other: {f"recall@{k}": paired_bootstrap(per_user[other][:, 0], per_user[best_rft][:, 0]),
                      f"NDCG@{k}": paired_bootstrap(per_user[other][:, 1], per_user[best_rft][:, 1])}
              for other in per_user if other != best_rft}
    return {"design": "personal slices: a random half of each test user's items in their below-average genres",
            "test_share": test_share, "seed": seed, "test_users": len(users), "k": k,
            "hidden_per_user_median": float(np.median([len(hidden[u]) for u in users])),
            "slice_items_median": float(np.median([s.sum() for s in user_slices])),
            "metrics": metrics, "rft_model": best_rft, "rft_versus": versus, "behavior_runs": runs,
            "wall_seconds": round(time.time() - started, 1)}


def beyond_log_table(result: dict[str, Any]) -> str:
    """Markdown: each method's recall@K / NDCG@K of the hidden items; the RFT model's paired difference."""
    k = result["k"]
    lines = [f"| method | recall@{k} | NDCG@{k} | {result['rft_model']} − method, NDCG@{k} (95% CI) |",
             "|---|---:|---:|---|"]
    for name, values in result["metrics"].items():
        against = result["rft_versus"].get(name)
        diff = (f"{against[f'NDCG@{k}']['diff']:+.4f} [{against[f'NDCG@{k}']['ci_low']:+.4f}, "
                f"{against[f'NDCG@{k}']['ci_high']:+.4f}]") if against else "—"
        lines.append(f"| {name} | {values[f'recall@{k}']:.4f} | {values[f'NDCG@{k}']:.4f} | {diff} |")
    return "\n".join(lines)
