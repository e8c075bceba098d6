"""The ranker backbone: causality, padding invariance, the optional extra sequence and side embeddings."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ranking.model import RankerConfig, SequentialRanker, left_pad


def _model(**kwargs) -> SequentialRanker:
    torch.manual_seed(0)
    return SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2, dropout=0.0, **kwargs),
                            kwargs.pop("side", None)).eval()


def test_outputs_are_causal():
    model = _model()
    history = torch.tensor([[3, 5, 7, 9, 11, 13]])
    changed = history.clone()
    changed[0, 4:] = torch.tensor([20, 21])
    with torch.no_grad():
        a, b = model(history), model(changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


def test_left_padding_does_not_change_the_last_position():
    model = _model()
    with torch.no_grad():
        short = model.score_last(torch.tensor([[4, 6, 8]]))
        padded = model.score_last(left_pad([[4, 6, 8]], 8))
    assert padded.shape == (1, 31)
    assert torch.allclose(short, padded, atol=1e-5)


def test_extra_sequence_is_attended_and_off_by_default():
    plain = _model()
    history = torch.tensor([[4, 6, 8]])
    extra = torch.tensor([[10, 12]])
    with torch.no_grad():
        assert torch.allclose(plain.score_last(history), plain.score_last(history, extra))
    with_extra = _model(extra_len=2)
    with torch.no_grad():
        base = with_extra.score_last(history, torch.zeros_like(extra))
        informed = with_extra.score_last(history, extra)
        other = with_extra.score_last(history, torch.tensor([[20, 22]]))
    assert not torch.allclose(base, informed, atol=1e-4)
    assert not torch.allclose(informed, other, atol=1e-4)


def test_side_embeddings_change_item_representations():
    side = torch.randn(31, 5)
    model = SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5), side)
    assert model.item_table().shape == (31, 16)
    assert not torch.allclose(model.item_table(), model.item_emb.weight)
    with pytest.raises(ValueError, match="side embeddings of shape"):
        SequentialRanker(RankerConfig(num_items=30, side_dim=5), torch.randn(10, 5))


def test_history_longer_than_max_len_is_rejected():
    with pytest.raises(ValueError, match="exceeds max_len"):
        _model().score_last(torch.ones(1, 9, dtype=torch.long))


def _rotary(**kwargs) -> SequentialRanker:
    torch.manual_seed(1)
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, dropout=0.0, positions="rotary", window=4, **kwargs)
    return SequentialRanker(cfg).eval()


@pytest.mark.parametrize("extra", [None, [[5, 0, 7]]])
def test_incremental_steps_agree_with_the_full_pass(extra):
    """One token at a time from cached keys/values == a full pass over the last max_len items, at every event
    of a history five times longer than max_len (the window keeps the receptive field within it)."""
    model = _rotary(extra_len=3 if extra else 0)
    extra = torch.tensor(extra) if extra else None
    history = torch.randint(1, 31, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        state = model.prefill(left_pad([history[:1]], 8), extra)
        for end in range(2, len(history) + 1):
            state = model.step(torch.tensor([history[end - 1]]), state)
            full = model.encode(left_pad([history[:end]], 8), extra)[:, -1]
            assert torch.allclose(state.hidden, full, atol=1e-5), end
            whole = model.encode(torch.tensor([history[max(0, end - 8):end]]), extra)[:, -1]
            assert torch.allclose(whole, full, atol=1e-5)


def test_the_last_state_depends_on_the_receptive_field_only():
    model = _rotary()
    assert model.cfg.incremental and model.cfg.receptive_field == 2 * (4 - 1) + 1
    with torch.no_grad():
        base = model.encode(torch.tensor([[3, 5, 7, 9, 11, 13, 15, 17]]))[:, -1]
        oldest_changed = model.encode(torch.tensor([[1, 5, 7, 9, 11, 13, 15, 17]]))[:, -1]  # 8 back: outside
        inside_changed = model.encode(torch.tensor([[3, 1, 7, 9, 11, 13, 15, 17]]))[:, -1]  # 7 back: inside
    assert torch.allclose(base, oldest_changed, atol=1e-5)
    assert not torch.allclose(base, inside_changed, atol=1e-4)


def test_incremental_scoring_refuses_a_model_it_cannot_reproduce():
    for kwargs in ({"positions": "learned", "window": 4}, {"positions": "rotary", "window": 0},
                   {"positions": "rotary", "window": 6}):  # 2 × 5 + 1 = 11 > max_len 8
        model = SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2, **kwargs)).eval()
        assert not model.cfg.incremental
        with pytest.raises(ValueError, match="incremental scoring needs"):
            model.prefill(torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be"):
        RankerConfig(num_items=3, positions="absolute")


@pytest.mark.parametrize("side_mode", ["add", "gate"])
def test_with_side_output_off_warm_candidates_are_scored_by_id_alone_and_cold_ones_by_side(side_mode):
    side, cold = torch.randn(31, 5), torch.tensor([4, 9])
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5, side_mode=side_mode, side_output=False)
    model = SequentialRanker(cfg, side, cold).eval()
    inputs, candidates = model.item_tables()
    warm = torch.ones(31, dtype=torch.bool)
    warm[cold] = False
    assert torch.equal(candidates[warm], model.item_emb.weight[warm])  # no side vector in a warm candidate
    assert torch.equal(candidates[cold], inputs[cold])  # a cold item is its side vector, as input and candidate
    assert not torch.allclose(inputs[warm], model.item_emb.weight[warm])  # the inputs still read the side
    tied = SequentialRanker(replace(cfg, side_output=True), side, cold).eval()
    tied.load_state_dict(model.state_dict())
    history = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        hidden = model.encode(history)[:, -1]
        assert torch.allclose(model.score_last(history), hidden @ candidates.T, atol=1e-5)
        assert torch.allclose(tied.encode(history)[:, -1], hidden, atol=1e-6)  # same inputs either way
        assert not torch.allclose(tied.score_last(history), model.score_last(history), atol=1e-4)


def test_the_side_candidate_loss_adds_the_next_item_loss_over_side_vectors_alone():
    torch.manual_seed(0)
    side, cold = torch.randn(31, 5), torch.tensor([4, 9])
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5, side_mode="gate", side_output=False,
                       side_loss_weight=0.5)
    model = SequentialRanker(cfg, side, cold).eval()  # eval: no dropout, so both passes see the same hidden states
    plain = SequentialRanker(replace(cfg, side_loss_weight=0.0), side, cold).eval()
    plain.load_state_dict(model.state_dict())
    inputs, targets = torch.randint(1, 31, (4, 8)), torch.randint(1, 31, (4, 8))
    with torch.no_grad():
        hidden = model.encode(inputs)
        keep = (targets != 0) & ~model.cold[targets]
        side_logits = hidden[keep] @ model.side_proj(model.side).T
        side_logits[:, cold] = float("-inf")
        expected = plain.loss(inputs, targets) + 0.5 * F.cross_entropy(side_logits, targets[keep])
        assert torch.allclose(model.loss(inputs, targets), expected, atol=1e-5)
        assert model.loss(inputs, targets) > plain.loss(inputs, targets)
    model.side_candidate_loss(model.encode(inputs)[keep], targets[keep]).backward()
    assert model.side_proj.weight.grad.abs().sum() > 0  # it trains the side path
    assert all(p.grad is None for p in model.blocks.parameters())  # and leaves the transformer alone


def test_a_frozen_ranker_reuses_its_item_table_until_trained_again():
    side = torch.randn(31, 5)
    model = SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5, side_mode="gate"),
                             side).freeze()
    history = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        frozen = model.score_last(history)
        assert model.item_table() is model.item_table()
        model.train()  # drops the memo: the weights may change
        assert model.item_table() is not model.item_table()
        assert torch.allclose(model.eval().score_last(history), frozen, atol=1e-6)


@pytest.mark.parametrize("side_mode", ["gate", "init"])  # init: the knowledge-seeded ID table and a cold head
def test_the_cold_head_scores_cold_candidates_and_learns_without_moving_the_warm_model(side_mode):
    torch.manual_seed(0)
    side, cold = torch.randn(31, 5), torch.tensor([4, 9])
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5, side_mode=side_mode, side_output=False,
                       dropout=0.0, cold_head_share=1.0)  # every candidate through the head: the loss is exact
    model = SequentialRanker(cfg, side, cold).train()  # training: cold candidates are out of the softmax
    plain = SequentialRanker(replace(cfg, cold_head_share=0.0), side, cold).train()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("cold_proj")})
    inputs, targets = torch.randint(1, 31, (4, 8)), torch.randint(1, 31, (4, 8))
    with torch.no_grad():
        candidates, without_head = model.candidate_table(), plain.candidate_table()
        warm = ~model.cold
        assert torch.equal(candidates[warm], without_head[warm])  # warm candidates as without the head
        assert torch.allclose(candidates[cold], model.cold_proj(side[cold]))  # cold ones through the head
        assert not torch.allclose(candidates[cold], without_head[cold])
        keep = (targets != 0) & ~model.cold[targets]
        head_logits = model.encode(inputs)[keep] @ model.cold_proj(side).T
        head_logits[:, cold] = float("-inf")
        expected = plain.loss(inputs, targets) + F.cross_entropy(head_logits, targets[keep])
        assert torch.allclose(model.loss(inputs, targets), expected, atol=1e-5)
    model.loss(inputs, targets).backward()
    assert model.cold_proj.weight.grad.abs().sum() > 0  # the head learns
    head_only = SequentialRanker(replace(cfg, cold_head_share=0.5), side, cold).train()  # some rows warm
    head_only.load_state_dict(model.state_dict())
    hidden = head_only.encode(inputs)[keep]
    head_only.cold_head_loss(hidden, targets[keep], head_only.candidate_table()).backward()
    moved = [name for name, p in head_only.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved == ["cold_proj.weight"]  # and nothing else does through its loss


def test_a_cold_head_needs_side_embeddings():
    with pytest.raises(ValueError, match="cold_head_share needs side embeddings"):
        SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2, cold_head_share=0.2))


def test_the_cold_offset_moves_cold_candidates_scores_alone_in_every_scoring_path():
    torch.manual_seed(0)
    side, cold = torch.randn(31, 5), torch.tensor([4, 9])
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=5, side_output=False, positions="rotary",
                       window=4)
    model = SequentialRanker(cfg, side, cold).eval()
    offset = SequentialRanker(replace(cfg, cold_offset=-3.0), side, cold).eval()
    offset.load_state_dict(model.state_dict())
    history = torch.tensor([[3, 5, 7, 2, 8]])
    with torch.no_grad():
        shift = offset.score_last(history) - model.score_last(history)
        expected = torch.zeros(31)
        expected[cold] = -3.0
        assert torch.allclose(shift[0], expected, atol=1e-5)
        assert torch.allclose(offset(history)[:, -1], offset.score_last(history), atol=1e-5)
        hidden = offset.prefill(history).hidden  # the serving path scores kept hidden states
        assert torch.allclose(offset.scores(hidden), offset.score_last(history), atol=1e-5)


def test_side_mode_init_seeds_the_id_table_with_the_side_vectors_and_is_otherwise_id_only():
    torch.manual_seed(0)
    groups = torch.randn(3, 12)
    side = torch.cat([torch.zeros(1, 12), groups.repeat_interleave(10, 0) + 0.05 * torch.randn(30, 12)])
    cfg = RankerConfig(num_items=30, max_len=8, dim=16, heads=2, side_dim=12, side_mode="init")
    model = SequentialRanker(cfg, side)
    table = model.item_emb.weight
    assert not hasattr(model, "side_proj")
    assert torch.equal(model.item_table(), table) and torch.equal(model.candidate_table(), table)
    assert table[1:].std().item() == pytest.approx(0.02, rel=1e-3)
    similarity = torch.nn.functional.normalize(table[1:], dim=1) @ torch.nn.functional.normalize(table[1:], dim=1).T
    same = torch.block_diag(*[torch.ones(10, 10, dtype=torch.bool)] * 3)
    assert similarity[same].mean() > 0.9 > 0.0 > similarity[~same].mean()  # items alike in knowledge start alike
    plain = SequentialRanker(RankerConfig(num_items=30, max_len=8, dim=16, heads=2))
    assert set(model.state_dict()) == set(plain.state_dict()) | {"side", "cold"}
    with pytest.raises(ValueError, match="only seeds the ID table"):
        SequentialRanker(RankerConfig(num_items=30, side_dim=12, side_mode="init", id_dropout=0.2), side)
    with_head = SequentialRanker(replace(cfg, cold_head_share=0.2), side, torch.tensor([4]))
    assert torch.equal(with_head.item_table(), with_head.item_emb.weight)  # inputs stay the ID table, cold or not
