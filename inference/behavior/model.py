"""Masked (discrete) diffusion over item tokens, conditioned on a user's history.

The sequence is the user's history (left-padded, positions counted back from the latest item)
followed by K slots for the behaviours to infer. Attention is structured so the history can be
cached exactly: history tokens attend only to the history; slot tokens attend to the history and to
each other. The history's keys and values therefore never depend on the slots, and a sampler can
encode them once per user and reuse them across every denoising step. The loss and the samplers are in
inference.behavior.diffusion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ranking.model import Block, SequentialRanker, principal_components

# (keys, values) of one layer for the history: (B, heads, H, head_dim) each
LayerCache = tuple[torch.Tensor, torch.Tensor]


@dataclass
class BehaviorConfig:
    """Model shape. Items are tokens 1..N, 0 is padding, N+1 is [MASK]."""

    num_items: int
    max_history: int = 50
    slots: int = 10
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1

    @property
    def mask_token(self) -> int:
        return self.num_items + 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HistoryCache:
    """A batch of encoded histories: per-layer keys/values and which history positions are real."""

    layers: list[LayerCache]
    valid: torch.Tensor  # (B, H) bool


class DiffusionBlock(Block):
    """The ranker's pre-norm block (same layers), whose attention can prepend cached keys/values."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor,  # type: ignore[override]
                past: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        """x (B, T, d); mask (B, T, P+T) over [past keys, own keys]. Returns x and this call's own (k, v)."""
        q, k, v = self.heads_of(x)
        keys, values = (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)) if past is not None else (k, v)
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
        return self.finish(x, attended), (k, v)


class DiffusionBehaviorModel(nn.Module):
    """Bidirectional transformer that denoises K masked item slots after a history."""

    def __init__(self, cfg: BehaviorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 2, cfg.dim, padding_idx=0)
        self.hist_pos = nn.Embedding(cfg.max_history, cfg.dim)
        self.slot_pos = nn.Embedding(cfg.slots, cfg.dim)
        self.segment = nn.Embedding(2, cfg.dim)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DiffusionBlock(cfg) for _ in range(cfg.layers))  # type: ignore[arg-type]
        self.norm = nn.LayerNorm(cfg.dim)
        self.apply(SequentialRanker._init)

    def init_items_from(self, vectors: torch.Tensor) -> None:
        """Start item tokens from knowledge vectors (N+1, k), row 0 = padding: their top principal
        directions, scaled to the default initialisation's spread."""
        if vectors.shape[0] != self.cfg.num_items + 1:
            raise ValueError(f"knowledge vectors have {vectors.shape[0]} rows, expected {self.cfg.num_items + 1}")
        with torch.no_grad():
            self.item_emb.weight[1:self.cfg.num_items + 1] = principal_components(
                vectors[1:].float(), self.cfg.dim, std=0.02).to(self.item_emb.weight)

    # --- embeddings and masks -------------------------------------------------------------
    def _embed_history(self, history: torch.Tensor) -> torch.Tensor:
        length = history.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=history.device)
        return (self.item_emb(history) * math.sqrt(self.cfg.dim) + self.hist_pos(positions)[None]
                + self.segment.weight[0])

    def _embed_slots(self, slots: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(slots.shape[1], device=slots.device)
        return self.item_emb(slots) * math.sqrt(self.cfg.dim) + self.slot_pos(positions)[None] + self.segment.weight[1]

    def _check(self, history: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        if history.shape[1] > self.cfg.max_history:
            raise ValueError(f"history length {history.shape[1]} exceeds max_history {self.cfg.max_history}; "
                             "keep the latest items (see inference.behavior.diffusion.encode_histories)")
        if slots is not None and slots.shape[1] > self.cfg.slots:
            raise ValueError(f"{slots.shape[1]} slots exceed the model's {self.cfg.slots}")

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over tokens 0..N (tied to the item embeddings; [MASK] is never an answer)."""
        return self.norm(hidden) @ self.item_emb.weight[:self.cfg.num_items + 1].T

    # --- the reference path: one forward over history + slots ------------------------------
    def forward(self, history: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, N+1) of every slot, from a full pass over [history, slots]."""
        self._check(history, slots)
        batch, h_len = history.shape
        k_len = slots.shape[1]
        h_valid, s_valid = history != 0, slots != 0
        eye = torch.eye(h_len, dtype=torch.bool, device=history.device)
        top = torch.cat([h_valid[:, None, :].expand(batch, h_len, h_len) | eye,
                         torch.zeros(batch, h_len, k_len, dtype=torch.bool, device=history.device)], 2)
        bottom = torch.cat([h_valid[:, None, :].expand(batch, k_len, h_len),
                            s_valid[:, None, :].expand(batch, k_len, k_len)
                            | torch.eye(k_len, dtype=torch.bool, device=history.device)], 2)
        mask = torch.cat([top, bottom], 1)
        x = self.emb_dropout(torch.cat([self._embed_history(history), self._embed_slots(slots)], 1))
        for block in self.blocks:
            x, _ = block(x, mask)
        return self._logits(x[:, h_len:])

    # --- the cached path: encode the history once, then only the slots ----------------------
    def encode_history(self, history: torch.Tensor) -> HistoryCache:
        """Per-layer keys/values of the history (they never depend on the slots)."""
        self._check(history)
        batch, h_len = history.shape
        valid = history != 0
        eye = torch.eye(h_len, dtype=torch.bool, device=history.device)
        mask = valid[:, None, :].expand(batch, h_len, h_len) | eye
        x = self.emb_dropout(self._embed_history(history))
        layers = []
        for block in self.blocks:
            x, kv = block(x, mask)
            layers.append(kv)
        return HistoryCache(layers, valid)

    def slot_logits(self, cache: HistoryCache, slots: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, N+1) of the slots given an encoded history: the cost of one denoising step."""
        self._check(cache.valid, slots)
        batch, k_len = slots.shape
        s_mask = (slots != 0)[:, None, :].expand(batch, k_len, k_len) | torch.eye(
            k_len, dtype=torch.bool, device=slots.device)
        mask = torch.cat([cache.valid[:, None, :].expand(batch, k_len, cache.valid.shape[1]), s_mask], 2)
        x = self.emb_dropout(self._embed_slots(slots))
        for block, past in zip(self.blocks, cache.layers, strict=True):
            x, _ = block(x, mask, past)
        return self._logits(x)


def excluded_tokens(history: torch.Tensor, num_items: int) -> torch.Tensor:
    """(B, N+1) bool: padding and every item already in the history (never inferred again)."""
    banned = torch.zeros(history.shape[0], num_items + 1, dtype=torch.bool, device=history.device)
    banned.scatter_(1, history, True)
    banned[:, 0] = True
    return banned
