"""SASRec-style causal transformer over item sequences, scored against the whole catalogue.

The backbone every ablation shares. Two optional inputs, off by default:
- an extra sequence (e.g. inferred beyond-log behaviours) with its own segment embedding; every
  history position may attend to all of it, it attends only to itself;
- per-item side embeddings (e.g. knowledge vectors), projected into the ID space and fused with the
  ID embeddings on both the input and the output (tied) side: added (`side_mode="add"`) or mixed by a
  learned per-dimension gate (`"gate"`); `align_weight` > 0 adds a contrastive (InfoNCE) loss pulling
  each item's ID embedding towards its projected side vector. Items in `cold_items` (never seen in
  training) are represented by their side vector alone; `id_dropout` trains that path by hiding a random
  share of ID embeddings at each step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RankerConfig:
    """Model shape. num_items is the catalogue size N (indices 1..N, 0 = padding)."""

    num_items: int
    max_len: int = 200
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    extra_len: int = 0
    side_dim: int = 0
    side_mode: str = "add"  # add | gate
    align_weight: float = 0.0
    align_temperature: float = 0.1
    id_dropout: float = 0.0  # training only: this share of items per step is seen through its side vector alone

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: masked self-attention then a GELU MLP."""

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=2)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None])  # no attention dropout: it costs a third of a CPU step
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class SequentialRanker(nn.Module):
    """Causal transformer: hidden state at each position scores every item (full softmax)."""

    def __init__(self, cfg: RankerConfig, side_embeddings: torch.Tensor | None = None,
                 cold_items: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.segment_emb = nn.Embedding(2, cfg.dim)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        cold = torch.zeros(cfg.num_items + 1, dtype=torch.bool)
        if cold_items is not None:
            cold[torch.as_tensor(cold_items, dtype=torch.long)] = True
        # items absent at training time: never candidates in the training softmax; with side embeddings
        # they are represented by their side vector alone (saved with the weights only then)
        self.register_buffer("cold", cold, persistent=bool(cfg.side_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.side_dim:
            if side_embeddings is None or side_embeddings.shape != (cfg.num_items + 1, cfg.side_dim):
                raise ValueError(f"side_dim={cfg.side_dim} needs side embeddings of shape "
                                 f"({cfg.num_items + 1}, {cfg.side_dim})")
            if cfg.side_mode not in ("add", "gate"):
                raise ValueError(f"side_mode must be 'add' or 'gate', not {cfg.side_mode!r}")
            self.register_buffer("side", side_embeddings.float().clone())
            self.side_proj = nn.Linear(cfg.side_dim, cfg.dim, bias=False)
            if cfg.side_mode == "gate":
                self.side_gate = nn.Linear(2 * cfg.dim, cfg.dim)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def item_table(self) -> torch.Tensor:
        """(N+1, dim) item representations, shared by input and output."""
        table = self.item_emb.weight
        if self.cfg.side_dim:
            side = self.side_proj(self.side)
            cold = self.cold
            if self.training and self.cfg.id_dropout:  # simulate cold items so the side path stands on its own
                cold = cold | (torch.rand(cold.shape, device=cold.device) < self.cfg.id_dropout)
            ids = table.masked_fill(cold[:, None], 0.0)
            if self.cfg.side_mode == "gate":
                gate = torch.sigmoid(self.side_gate(torch.cat([ids, side], dim=1)))
                fused = gate * ids + (1 - gate) * side
                table = torch.where(cold[:, None], side, fused)
            else:
                table = ids + side
        return table

    def alignment_loss(self, items: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between ID embeddings and projected side vectors of `items` (distinct, warm)."""
        items = torch.unique(items)
        items = items[~self.cold[items]]
        if items.numel() < 2:
            return self.item_emb.weight.new_zeros(())
        ids = F.normalize(self.item_emb(items), dim=1)
        side = F.normalize(self.side_proj(self.side[items]), dim=1)
        logits = ids @ side.T / self.cfg.align_temperature
        labels = torch.arange(items.numel(), device=items.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def encode(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, dim) for left-padded histories (B, L) and an optional extra sequence (B, E)."""
        batch, length = history.shape
        if length > self.cfg.max_len:
            raise ValueError(f"history length {length} exceeds max_len {self.cfg.max_len}")
        table = self.item_table()
        # positions count back from the latest item, so left padding never shifts them
        positions = torch.arange(length - 1, -1, -1, device=history.device)
        x = F.embedding(history, table) * math.sqrt(self.cfg.dim) + self.pos_emb(positions)[None]
        valid = history != 0
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=history.device))
        mask = causal[None] & valid[:, None, :]
        if extra is not None and self.cfg.extra_len:
            e_len = extra.shape[1]
            e = F.embedding(extra, table) * math.sqrt(self.cfg.dim) + self.segment_emb.weight[1]
            x = torch.cat([e, x + self.segment_emb.weight[0]], dim=1)
            e_valid = extra != 0
            top = torch.cat([e_valid[:, None, :].expand(batch, e_len, e_len),
                             torch.zeros(batch, e_len, length, dtype=torch.bool, device=history.device)], 2)
            bottom = torch.cat([e_valid[:, None, :].expand(batch, length, e_len), mask], 2)
            mask = torch.cat([top, bottom], 1)
        eye = torch.eye(mask.shape[1], dtype=torch.bool, device=history.device)
        mask = mask | eye  # every query sees itself: no empty softmax rows on padding
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return x[:, -length:]

    def forward(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, N+1) over the whole catalogue at every position."""
        return self.encode(history, extra) @ self.item_table().T

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Full-softmax cross-entropy of the next item, over positions with a target (not padding)."""
        hidden = self.encode(inputs, extra)
        keep = (targets != 0) & ~self.cold[targets]  # a cold item is never a training target
        logits = hidden[keep] @ self.item_table().T
        if self.training and self.cold.any():
            logits = logits.masked_fill(self.cold, float("-inf"))
        loss = F.cross_entropy(logits.float(), targets[keep])
        if self.cfg.side_dim and self.cfg.align_weight:
            loss = loss + self.cfg.align_weight * self.alignment_loss(targets[keep])
        return loss

    def score_last(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N+1) for the next item after each (left-padded) history."""
        return self.encode(history, extra)[:, -1] @ self.item_table().T


def left_pad(sequences: list, length: int, pad: int = 0) -> torch.Tensor:
    """Stack the last `length` items of each sequence, padded on the left."""
    out = torch.full((len(sequences), length), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tail = list(seq[-length:]) if length else []
        if tail:
            out[row, length - len(tail):] = torch.as_tensor(tail, dtype=torch.long)
    return out
