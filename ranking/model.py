"""SASRec-style causal transformer over item sequences, scored against the whole catalogue.

The backbone every ablation shares. Two optional inputs, off by default:
- an extra sequence (e.g. inferred beyond-log behaviours) with its own segment embedding; every
  history position may attend to all of it, it attends only to itself;
- per-item side embeddings (e.g. knowledge vectors), projected into the ID space and fused with the
  ID embeddings on the input and (unless `side_output` is off, when warm candidates are scored by their ID
  embedding alone) the output side: added (`side_mode="add"`) or mixed by a
  learned per-dimension gate (`"gate"`), or (`"init"`) used only to seed the ID table before training (its
  leading principal components, at the ID embeddings' own scale), the model then being ID-only but for
  an optional cold head;
  `align_weight` > 0 adds a contrastive (InfoNCE) loss pulling each item's ID embedding towards its
  projected side vector, and `side_loss_weight` > 0 a second next-item loss scored against the projected
  side vectors alone (the candidates cold items are). Items in
  `cold_items` (never seen in training) are represented by their side vector alone; `id_dropout` trains
  that path by hiding a random share of ID embeddings at each step. `cold_head_share` > 0 instead gives
  cold candidates a projection of their own, trained on detached states against the warm candidates as
  they are scored, so the warm model trains exactly as without it. `cold_offset` shifts the cold
  candidates' scores when ranking: how much reach items nobody has seen yet get.
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
    side_mode: str = "add"  # add | gate | init (side vectors seed the ID table; no fusion)
    align_weight: float = 0.0
    align_temperature: float = 0.1
    id_dropout: float = 0.0  # training only: this share of items per step is seen through its side vector alone
    side_output: bool = True  # False: side vectors shape the inputs only; warm candidates are scored by ID alone
    side_loss_weight: float = 0.0  # weight of the next-item loss over side-vector candidates alone
    cold_head_share: float = 0.0  # > 0: cold candidates get a head of their own, trained with this share of
    #                               warm candidates scored through it at each step
    cold_offset: float = 0.0  # added to cold candidates' scores when ranking (< 0: fewer cold items near the top)
    positions: str = "learned"  # learned | rotary
    window: int = 0  # each item attends to itself and the window−1 items before it; 0 = all before it

    def __post_init__(self) -> None:
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', not {self.positions!r}")
        if self.window < 0:
            raise ValueError(f"window must be ≥ 0, got {self.window}")
        if self.side_dim and self.side_mode not in ("add", "gate", "init"):
            raise ValueError(f"side_mode must be 'add', 'gate' or 'init', not {self.side_mode!r}")
        if self.side_dim and self.side_mode == "init" and (self.align_weight or self.id_dropout
                                                           or self.side_loss_weight):
            raise ValueError("side_mode 'init' only seeds the ID table: align_weight, id_dropout and "
                             "side_loss_weight need a fused side path ('add' or 'gate')")

    @property
    def fuses_side(self) -> bool:
        """True when side vectors are fused into the item tables (not only seeding the ID table, or absent)."""
        return bool(self.side_dim) and self.side_mode != "init"

    @property
    def receptive_field(self) -> int:
        """How many latest items the last hidden state depends on (max_len when unwindowed)."""
        return min(self.max_len, self.layers * (self.window - 1) + 1) if self.window else self.max_len

    @property
    def incremental(self) -> bool:
        """True when `step()` scores exactly like the full pass over the last max_len items."""
        return (self.positions == "rotary" and self.window > 1
                and self.layers * (self.window - 1) + 1 <= self.max_len)

    def to_dict(self) -> dict:
        return asdict(self)


def principal_components(vectors: torch.Tensor, dim: int, std: float) -> torch.Tensor:
    """(N, dim): `vectors` (N, d) centred and projected on their `dim` leading principal directions (zero
    columns where d < dim), scaled so that the whole has standard deviation `std`. Items alike in `vectors`
    start alike; the spread of the leading directions is kept."""
    centred = vectors.double() - vectors.double().mean(0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ directions[:dim].T
    out = projected.new_zeros(vectors.shape[0], dim)
    out[:, :projected.shape[1]] = projected
    return (out * (std / out.std().clamp_min(1e-12))).to(vectors.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (..., T, head_dim) at integer positions (T,)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    angles = positions.to(torch.float32)[:, None] * freqs[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:2 * half]
    return torch.cat([first * cos - second * sin, first * sin + second * cos, x[..., 2 * half:]], dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: masked self-attention then a GELU MLP."""

    def __init__(self, cfg: RankerConfig, rotary: bool = False) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.rotary = rotary
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)

    def heads_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values (B, H, T, head_dim) of x (B, T, dim), before any rotation."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=2)
        return tuple(t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual, projection and MLP after attention (B, H, T, head_dim)."""
        batch, length, dim = x.shape
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, extra_len: int = 0,
                keep: list | None = None) -> torch.Tensor:
        """x (B, E+L, dim): E extra tokens (no positions) then L history tokens; mask (B, E+L, E+L).

        `keep`, when given, receives this layer's (keys, values) before rotation, for `step()`."""
        q, k, v = self.heads_of(x)
        if keep is not None:
            keep.append((k, v))
        if not self.rotary:
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None])  # no attention dropout: it costs a third of a CPU step
            return self.finish(x, attended)
        positions = torch.arange(x.shape[1] - extra_len, device=x.device)
        q_history = torch.cat([q[:, :, :extra_len], rotate(q[:, :, extra_len:], positions)], dim=2)
        scores = torch.cat([q @ k[:, :, :extra_len].transpose(-1, -2),
                            q_history @ rotate(k[:, :, extra_len:], positions).transpose(-1, -2)], dim=-1)
        scores = (scores / math.sqrt(q.shape[-1])).masked_fill(~mask[:, None], float("-inf"))
        return self.finish(x, torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v)

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
             extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token x (B, 1, dim) after cached keys/values (B, H, W−1, head_dim) of the window.

        Returns the token's output and the window's keys/values including it (B, H, W, head_dim)."""
        q, k, v = self.heads_of(x)
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        window = keys.shape[2]
        positions = torch.arange(window, device=x.device)
        scores = rotate(q, positions[-1:]) @ rotate(keys, positions).transpose(-1, -2)
        seen = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        if extra is not None:
            extra_keys, extra_values, extra_valid = extra
            scores = torch.cat([q @ extra_keys.transpose(-1, -2), scores], dim=-1)
            values_seen = torch.cat([extra_values, values], dim=2)
            seen = torch.cat([extra_valid, seen], dim=1)
        else:
            values_seen = values
        scores = (scores / math.sqrt(q.shape[-1])).masked_fill(~seen[:, None, None, :], float("-inf"))
        return self.finish(x, torch.softmax(scores.float(), dim=-1).to(v.dtype) @ values_seen), keys, values


class SequentialRanker(nn.Module):
    """Causal transformer: hidden state at each position scores every item (full softmax)."""

    def __init__(self, cfg: RankerConfig, side_embeddings: torch.Tensor | None = None,
                 cold_items: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._frozen_tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.segment_emb = nn.Embedding(2, cfg.dim)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        cold = torch.zeros(cfg.num_items + 1, dtype=torch.bool)
        if cold_items is not None:
            cold[torch.as_tensor(cold_items, dtype=torch.long)] = True
        # items absent at training time: never candidates in the training softmax; with side embeddings
        # they are represented by their side vector alone (saved with the weights only then)
        self.register_buffer("cold", cold, persistent=bool(cfg.side_dim))
        self.blocks = nn.ModuleList(Block(cfg, cfg.positions == "rotary") for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.side_dim:
            if side_embeddings is None or side_embeddings.shape != (cfg.num_items + 1, cfg.side_dim):
                raise ValueError(f"side_dim={cfg.side_dim} needs side embeddings of shape "
                                 f"({cfg.num_items + 1}, {cfg.side_dim})")
            self.register_buffer("side", side_embeddings.float().clone())
        elif cfg.cold_head_share:
            raise ValueError("cold_head_share needs side embeddings (side_dim > 0)")
        if cfg.fuses_side:
            self.side_proj = nn.Linear(cfg.side_dim, cfg.dim, bias=False)
            if cfg.side_mode == "gate":
                self.side_gate = nn.Linear(2 * cfg.dim, cfg.dim)
        if cfg.cold_head_share:
            self.cold_proj = nn.Linear(cfg.side_dim, cfg.dim, bias=False)
        self.apply(self._init)
        if cfg.side_dim and cfg.side_mode == "init":
            with torch.no_grad():
                self.item_emb.weight[1:] = principal_components(self.side[1:], cfg.dim, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def freeze(self) -> SequentialRanker:
        """For serving: eval mode, and the item table (side vectors fused) computed once, not per call."""
        self.eval()
        with torch.no_grad():
            self._frozen_tables = self.item_tables()
        return self

    def train(self, mode: bool = True) -> SequentialRanker:
        self._frozen_tables = None  # the weights may change again
        return super().train(mode)

    def item_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N+1, dim) item representations as inputs and as scored candidates: one fused table, unless
        `side_output` is off, when a warm candidate is its ID embedding alone (a cold one, or one hidden by
        `id_dropout`, keeps its side vector: it has nothing else). With a cold head, a cold candidate is the
        cold head's projection of its side vector."""
        if self._frozen_tables is not None:
            return self._frozen_tables
        table = self.item_emb.weight
        if not self.cfg.fuses_side:
            return table, self.with_cold_head(table)
        side = self.side_proj(self.side)
        cold = self.cold
        if self.training and self.cfg.id_dropout:  # simulate cold items so the side path stands on its own
            cold = cold | (torch.rand(cold.shape, device=cold.device) < self.cfg.id_dropout)
        ids = table.masked_fill(cold[:, None], 0.0)
        if self.cfg.side_mode == "gate":
            gate = torch.sigmoid(self.side_gate(torch.cat([ids, side], dim=1)))
            fused = torch.where(cold[:, None], side, gate * ids + (1 - gate) * side)
        else:
            fused = ids + side
        candidates = fused if self.cfg.side_output else torch.where(cold[:, None], fused, table)
        return fused, self.with_cold_head(candidates)

    def with_cold_head(self, candidates: torch.Tensor) -> torch.Tensor:
        """`candidates` with each cold item's row replaced by the cold head's projection of its side vector
        (unchanged without a cold head)."""
        if not self.cfg.cold_head_share:
            return candidates
        return torch.where(self.cold[:, None], self.cold_proj(self.side), candidates)

    def item_table(self) -> torch.Tensor:
        """(N+1, dim) item representations as the transformer's inputs."""
        return self.item_tables()[0]

    def candidate_table(self) -> torch.Tensor:
        """(N+1, dim) item representations that hidden states are scored against."""
        return self.item_tables()[1]

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

    def encode(self, history: torch.Tensor, extra: torch.Tensor | None = None,
               keep: list | None = None) -> torch.Tensor:
        """Hidden states (B, L, dim) for left-padded histories (B, L) and an optional extra sequence (B, E).

        `keep`, when given, receives each layer's (keys, values) over the E+L tokens, for `prefill()`."""
        batch, length = history.shape
        if length > self.cfg.max_len:
            raise ValueError(f"history length {length} exceeds max_len {self.cfg.max_len}")
        table = self.item_table()
        x = F.embedding(history, table) * math.sqrt(self.cfg.dim)
        if self.cfg.positions == "learned":
            # positions count back from the latest item, so left padding never shifts them
            x = x + self.pos_emb(torch.arange(length - 1, -1, -1, device=history.device))[None]
        valid = history != 0
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=history.device))
        if self.cfg.window:
            causal = causal & ~torch.tril(causal, diagonal=-self.cfg.window)
        mask = causal[None] & valid[:, None, :]
        e_len = 0
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
            x = block(x, mask, e_len, keep)
        x = self.norm(x)
        return x[:, -length:]

    def forward(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, N+1) over the whole catalogue at every position."""
        return self.scores(self.encode(history, extra))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (…, N+1) of hidden states (…, dim) over the whole catalogue, cold candidates offset by
        `cold_offset`: how far a cold item (never seen in training) must outscore a warm one to rank above
        it."""
        logits = hidden @ self.candidate_table().T
        return logits + self.cfg.cold_offset * self.cold if self.cfg.cold_offset else logits

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Full-softmax cross-entropy of the next item, over positions with a target (not padding)."""
        keep = (targets != 0) & ~self.cold[targets]  # a cold item is never a training target
        hidden, targets = self.encode(inputs, extra)[keep], targets[keep]
        candidates = self.candidate_table()
        logits = hidden @ candidates.T
        if self.training and self.cold.any():
            logits = logits.masked_fill(self.cold, float("-inf"))
        loss = F.cross_entropy(logits.float(), targets)
        if self.cfg.side_dim and self.cfg.align_weight:
            loss = loss + self.cfg.align_weight * self.alignment_loss(targets)
        if self.cfg.side_dim and self.cfg.side_loss_weight:
            loss = loss + self.cfg.side_loss_weight * self.side_candidate_loss(hidden, targets)
        if self.cfg.cold_head_share:
            loss = loss + self.cold_head_loss(hidden, targets, candidates)
        return loss

    def cold_head_loss(self, hidden: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of `targets` (warm) with `hidden` (T, dim) scored against `candidates`, a random
        `cold_head_share` of them replaced by the cold head's projection of their side vector. All but the
        head is detached: it learns to place an item among the warm candidates as they are scored, which is
        how a cold item is placed at test time, and it never moves the warm model."""
        through_head = torch.rand(candidates.shape[0], device=candidates.device) < self.cfg.cold_head_share
        table = torch.where(through_head[:, None], self.cold_proj(self.side), candidates.detach())
        logits = (hidden.detach() @ table.T).float()
        if self.cold.any():
            logits = logits.masked_fill(self.cold, float("-inf"))
        return F.cross_entropy(logits, targets)

    def side_candidate_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of `targets` (warm) with `hidden` (T, dim) scored against every item's projected side
        vector alone: trains the side path as the candidate a cold item is, for every target, not only for
        the ones `id_dropout` hides. The hidden states are detached: the side path learns to fit them, the
        transformer is not bent towards it."""
        logits = (hidden.detach() @ self.side_proj(self.side).T).float()
        if self.cold.any():
            logits = logits.masked_fill(self.cold, float("-inf"))
        return F.cross_entropy(logits, targets)

    def score_last(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N+1) for the next item after each (left-padded) history."""
        return self.scores(self.encode(history, extra)[:, -1])

    def prefill(self, history: torch.Tensor, extra: torch.Tensor | None = None) -> IncrementalState:
        """Full pass over left-padded histories (B, max_len), keeping what `step()` needs (eval only)."""
        if not self.cfg.incremental:
            raise ValueError("incremental scoring needs rotary positions and a window with "
                             f"layers × (window − 1) + 1 ≤ max_len (got {self.cfg.positions}, window "
                             f"{self.cfg.window}, max_len {self.cfg.max_len})")
        history = left_pad(history.tolist(), self.cfg.max_len).to(history.device) \
            if history.shape[1] < self.cfg.max_len else history
        keep: list[tuple[torch.Tensor, torch.Tensor]] = []
        with_extra = extra is not None and self.cfg.extra_len
        hidden = self.encode(history, extra if with_extra else None, keep)[:, -1]
        e_len = extra.shape[1] if with_extra else 0
        tail = self.cfg.window - 1
        return IncrementalState([k[:, :, -tail:] for k, _ in keep], [v[:, :, -tail:] for _, v in keep],
                                history[:, -tail:] != 0, hidden,
                                [(k[:, :, :e_len], v[:, :, :e_len]) for k, v in keep] if with_extra else None,
                                extra != 0 if with_extra else None)

    def step(self, items: torch.Tensor, state: IncrementalState) -> IncrementalState:
        """Append one item per user (B,) to the cached state: one token's forward pass (eval only)."""
        x = F.embedding(items[:, None], self.item_table()) * math.sqrt(self.cfg.dim)
        if state.extra is not None:
            x = x + self.segment_emb.weight[0]
        keys, values = [], []
        for n, block in enumerate(self.blocks):
            extra = None if state.extra is None else (*state.extra[n], state.extra_valid)
            x, k, v = block.step(x, state.keys[n], state.values[n], state.valid, extra)
            keys.append(k[:, :, 1:])
            values.append(v[:, :, 1:])
        valid = torch.cat([state.valid, torch.ones_like(state.valid[:, :1])], dim=1)[:, 1:]
        return IncrementalState(keys, values, valid, self.norm(x)[:, 0], state.extra, state.extra_valid)


@dataclass
class IncrementalState:
    """Per-layer keys/values (B, H, window−1, head_dim, before rotation) of each user's latest items.

    `valid` (B, window−1) marks real items (False: left padding); `extra` holds each layer's keys/values
    of the extra sequence (fixed while it does not change) and its validity; `hidden` (B, dim) is the
    last position's output."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    hidden: torch.Tensor
    extra: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    extra_valid: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> IncrementalState:
        """The state of a subset of the batch."""
        return IncrementalState([k[index] for k in self.keys], [v[index] for v in self.values], self.valid[index],
                                self.hidden[index],
                                None if self.extra is None else [(k[index], v[index]) for k, v in self.extra],
                                None if self.extra_valid is None else self.extra_valid[index])


def cat_states(states: list[IncrementalState]) -> IncrementalState:
    """Stack states of several batches (same extra length) into one."""
    first = states[0]
    return IncrementalState(
        [torch.cat([s.keys[n] for s in states]) for n in range(len(first.keys))],
        [torch.cat([s.values[n] for s in states]) for n in range(len(first.values))],
        torch.cat([s.valid for s in states]), torch.cat([s.hidden for s in states]),
        None if first.extra is None else [(torch.cat([s.extra[n][0] for s in states]),
                                          torch.cat([s.extra[n][1] for s in states])) for n in range(len(first.extra))],
        None if first.extra_valid is None else torch.cat([s.extra_valid for s in states]))


def left_pad(sequences: list, length: int, pad: int = 0) -> torch.Tensor:
    """Stack the last `length` items of each sequence, padded on the left."""
    out = torch.full((len(sequences), length), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tail = list(seq[-length:]) if length else []
        if tail:
            out[row, length - len(tail):] = torch.as_tensor(tail, dtype=torch.long)
    return out
