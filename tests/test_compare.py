"""`reaseq bench compare`: the paired bootstrap, slices, sequence files and a whole (tiny) comparison."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest
import torch

from bench import compare
from bench.compare import Arm, add_arguments, main_from_args, paired_bootstrap, slices
from ranking.splits import SequenceData, load_sequences_file, save_sequences


def _data(users: int = 40, items: int = 30, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(1, items + 1, size=int(rng.integers(5, 30))) for _ in range(users)]
    return SequenceData("synthetic", "f" * 16, [str(i) for i in range(1, items + 1)],
                        [str(u) for u in range(users)], sequences)


def test_paired_bootstrap_brackets_a_known_difference():
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    result = paired_bootstrap(base, base + 0.05 + rng.normal(0, 0.01, 2000))
    assert result["ci_low"] < 0.05 < result["ci_high"]
    assert result["ci_low"] > 0.04 and result["relative_pct"] == pytest.approx(100 * 0.05 / base.mean(), rel=0.05)
    same = paired_bootstrap(base, base.copy())
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0
    assert paired_bootstrap(np.zeros(3), np.ones(3))["relative_pct"] is None  # no base to scale by
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap(base, base[:-1])


def test_slices_pick_sparse_users_and_tail_targets():
    data = _data()
    masks = slices(data)
    assert masks["all"].all()
    assert masks["sparse_users"].tolist() == [len(data.train(u)) <= 20 for u in range(40)]
    assert 0 < masks["tail_items"].sum() < 40


def test_sequence_files_round_trip_and_refuse_tampering(tmp_path):
    data = _data()
    path = save_sequences(data, tmp_path / "synthetic.npz")
    loaded = load_sequences_file(path)
    assert (loaded.dataset, loaded.fingerprint, loaded.item_ids, loaded.user_ids) == \
        (data.dataset, data.fingerprint, data.item_ids, data.user_ids)
    assert all((a == b).all() for a, b in zip(loaded.sequences, data.sequences, strict=True))
    with np.load(path) as archive:
        parts = dict(archive)
    parts["flat"] = parts["flat"].copy()
    parts["flat"][0] += 1
    np.savez(tmp_path / "tampered.npz", **parts)
    with pytest.raises(ValueError, match="checksum"):
        load_sequences_file(tmp_path / "tampered.npz")
    with pytest.raises(FileNotFoundError, match="reaseq data export"):
        load_sequences_file(tmp_path / "missing.npz")


def test_arms_parse_as_name_equals_config():
    assert Arm.parse("rotary=a/b.yaml") == Arm("rotary", "a/b.yaml")
    with pytest.raises(argparse.ArgumentTypeError):
        Arm.parse("no-config")


def test_a_tiny_comparison_trains_resumes_and_writes_its_table(tmp_path, capsys):
    sequences = save_sequences(_data(), tmp_path / "synthetic.npz")
    for name, extra in (("a", ""), ("b", "  positions: rotary\n  window: 3\n")):
        (tmp_path / f"{name}.yaml").write_text(f"model:\n  max_len: 6\n  dim: 8\n  layers: 1\n  heads: 1\n{extra}"
                                               "train:\n  epochs: 2\n  batch_size: 16\n  patience: 2\n  device: cpu\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--sequences", str(sequences), "--arm", f"a={tmp_path / 'a.yaml'}", "--arm", f"b={tmp_path / 'b.yaml'}",
            "--seeds", "1", "2", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main_from_args(parser.parse_args(argv)) == 0
    assert "  b seed 2: epoch 2/2, loss " in capsys.readouterr().out  # each run shows its epochs as they end
    result = json.loads((tmp_path / "out" / "compare-synthetic-a-vs-b.json").read_text())
    assert result["arms"]["b"]["model_config"]["positions"] == "rotary"
    assert set(result["arms"]["b"]["vs_a"]) == {"all", "sparse_users", "tail_items"}
    assert result["git_commit"] and result["machine"]
    assert main_from_args(parser.parse_args(argv)) == 0  # every run on file: nothing trains again
    assert "0 run(s) to train (4 already done)" in capsys.readouterr().out


def test_a_cold_split_adds_a_cold_slice_and_popularity_on_every_slice(tmp_path, capsys):
    sequences = save_sequences(_data(users=60), tmp_path / "synthetic.npz")
    (tmp_path / "a.yaml").write_text("model:\n  max_len: 6\n  dim: 8\n  layers: 1\n  heads: 1\n"
                                     "train:\n  epochs: 1\n  batch_size: 16\n  patience: 1\n  device: cpu\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--sequences", str(sequences), "--arm", f"a={tmp_path / 'a.yaml'}",
                              "--arm", f"b={tmp_path / 'a.yaml'}", "--seeds", "1", "--cold-fraction", "0.3",
                              "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert main_from_args(args) == 0
    result = json.loads((tmp_path / "out" / "compare-synthetic-a-vs-b-cold0.3.json").read_text())
    assert result["cold_items"] == 9 and result["slice_users"]["cold_items"] > 0
    assert set(result["popularity_ndcg10"]) == {"all", "sparse_users", "tail_items", "cold_items"}
    assert "cold_items" in result["arms"]["b"]["vs_a"]
    assert "| arm (synthetic, one seed) |" in capsys.readouterr().out  # no median of a single seed


TINY_RANKER = ("model:\n  max_len: 6\n  dim: 8\n  layers: 1\n  heads: 1\ntrain:\n  epochs: 1\n  batch_size: 16\n"
               "  patience: 1\n  device: cpu\n")


def _ids_and_behaviour_arms(tmp_path):
    """A synthetic sequences file, and tiny ids.yaml / behaviors.yaml arms (the latter reading behavior.yaml)."""
    (tmp_path / "ids.yaml").write_text(TINY_RANKER)
    (tmp_path / "behaviors.yaml").write_text(TINY_RANKER + f"  behaviors: {tmp_path / 'behavior.yaml'}\n")
    (tmp_path / "behavior.yaml").write_text(
        "model:\n  max_history: 8\n  slots: 3\n  dim: 8\n  layers: 1\n  heads: 1\n"
        "train:\n  epochs: 1\n  batch_size: 16\n  cuts_per_user: 1\n  holdout: 2\n  patience: 1\n  device: cpu\n"
        "sampling:\n  slots: 3\n  steps: 2\n")
    return save_sequences(_data(users=50, items=40), tmp_path / "synthetic.npz")


def test_an_arm_with_inferred_behaviours_trains_the_behaviour_model_once(tmp_path, capsys):
    sequences = _ids_and_behaviour_arms(tmp_path)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--sequences", str(sequences), "--arm", f"ids={tmp_path / 'ids.yaml'}",
            "--arm", f"behaviors={tmp_path / 'behaviors.yaml'}", "--seeds", "1", "2",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main_from_args(parser.parse_args(argv)) == 0
    assert len(list((tmp_path / "work" / "behaviors").glob("*.npz"))) == 1  # one behaviour model for both seeds
    result = json.loads((tmp_path / "out" / "compare-synthetic-ids-vs-behaviors.json").read_text())
    row = result["arms"]["behaviors"]
    assert row["model_config"]["extra_len"] == 3 and 0.0 <= row["behaviors"]["holdout_recall"] <= 1.0
    assert result["arms"]["ids"]["model_config"]["extra_len"] == 0 and result["arms"]["ids"]["behaviors"] is None
    timed = (tmp_path / "behavior.yaml").read_text().replace("train:\n", "train:\n  max_seconds: 60\n")
    (tmp_path / "behavior.yaml").write_text(timed)
    (tmp_path / "work" / "runs" / "behaviors-seed1.json").unlink()
    with pytest.raises(ValueError, match="by epochs only"):
        main_from_args(parser.parse_args(argv))


def test_a_behaviour_epoch_budget_overrides_the_config_and_keeps_its_inferences_apart(tmp_path):
    sequences = _ids_and_behaviour_arms(tmp_path)
    (tmp_path / "behavior.yaml").write_text((tmp_path / "behavior.yaml").read_text().replace("patience: 1",
                                                                                           "patience: 9"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--sequences", str(sequences), "--arm", f"ids={tmp_path / 'ids.yaml'}",
            "--arm", f"behaviors={tmp_path / 'behaviors.yaml'}", "--seeds", "1",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main_from_args(parser.parse_args([*argv, "--behavior-epochs", "3"])) == 0
    row = json.loads((tmp_path / "out" / "compare-synthetic-ids-vs-behaviors.json").read_text())["arms"]["behaviors"]
    assert row["behaviors"]["epochs"] == 3 and row["behaviors"]["file"].endswith("-e3.npz")
    assert [p.name for p in (tmp_path / "work" / "behaviors").glob("*.npz")] == [row["behaviors"]["file"]]
    (tmp_path / "work" / "runs" / "behaviors-seed1.json").unlink()
    assert main_from_args(parser.parse_args(argv)) == 0  # the config's own budget: trained anew, not read back
    row = json.loads((tmp_path / "out" / "compare-synthetic-ids-vs-behaviors.json").read_text())["arms"]["behaviors"]
    assert row["behaviors"]["epochs"] == 1 and len(list((tmp_path / "work" / "behaviors").glob("*.npz"))) == 2


def test_parallel_runs_without_behaviours_train_while_the_behaviour_model_does(tmp_path, monkeypatch):
    sequences = _ids_and_behaviour_arms(tmp_path)
    ids_run = tmp_path / "work" / "runs" / "ids-seed1.json"
    prepare = compare.prepare_behaviors

    def prepare_after_the_ids_run(*args, **kwargs):  # fails unless the ids run was started before it
        deadline = time.monotonic() + 120
        while not ids_run.is_file():
            assert time.monotonic() < deadline, "the ids run waited for the behaviour model"
            time.sleep(0.2)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(compare, "prepare_behaviors", prepare_after_the_ids_run)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--sequences", str(sequences), "--arm", f"ids={tmp_path / 'ids.yaml'}",
            "--arm", f"behaviors={tmp_path / 'behaviors.yaml'}", "--seeds", "1", "--jobs", "2",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main_from_args(parser.parse_args(argv)) == 0
    result = json.loads((tmp_path / "out" / "compare-synthetic-ids-vs-behaviors.json").read_text())
    assert result["arms"]["behaviors"]["model_config"]["extra_len"] == 3


def test_an_rft_arm_tunes_the_pretrained_model_the_plain_arm_shares(tmp_path):
    sequences = save_sequences(_data(users=50, items=40), tmp_path / "synthetic.npz")
    ranker = TINY_RANKER
    (tmp_path / "ids.yaml").write_text(ranker)
    behavior = ("model:\n  max_history: 8\n  slots: 3\n  dim: 8\n  layers: 1\n  heads: 1\n"
                "train:\n  epochs: 1\n  batch_size: 16\n  cuts_per_user: 1\n  holdout: 2\n  patience: 1\n"
                "  device: cpu\nsampling:\n  slots: 3\n  steps: 2\n")
    (tmp_path / "behavior.yaml").write_text(behavior)
    (tmp_path / "behavior-rft.yaml").write_text(
        behavior + f"rft:\n  steps: 2\n  users_per_step: 4\n  group_size: 2\n  eval_users: 5\n  device: cpu\n"
                   f"  reward_ranker: {tmp_path / 'ids.yaml'}\n"
                   "  reward:\n    future: 2\n    k: 5\n    min_history: 2\n")
    (tmp_path / "plain.yaml").write_text(ranker + f"  behaviors: {tmp_path / 'behavior.yaml'}\n")
    (tmp_path / "rft.yaml").write_text(ranker + f"  behaviors: {tmp_path / 'behavior-rft.yaml'}\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--sequences", str(sequences), "--arm", f"plain={tmp_path / 'plain.yaml'}",
            "--arm", f"rft={tmp_path / 'rft.yaml'}", "--seeds", "1",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main_from_args(parser.parse_args(argv)) == 0
    assert len(list((tmp_path / "work" / "behaviors").glob("*.npz"))) == 2
    assert len(list((tmp_path / "work" / "behaviors").glob("pretrained-*.pt"))) == 1  # trained once, shared
    result = json.loads((tmp_path / "out" / "compare-synthetic-plain-vs-rft.json").read_text())
    tuned = result["arms"]["rft"]["behaviors"]
    assert [row["step"] for row in tuned["rft"]["curve"]] == [1, 2]
    assert tuned["holdout_recall"] == result["arms"]["plain"]["behaviors"]["holdout_recall"]
    assert "rft" not in result["arms"]["plain"]["behaviors"]


def test_a_kept_run_counts_only_with_the_settings_and_embeddings_its_arm_has_now(tmp_path):
    from ranking.config import load_train_config

    config = tmp_path / "arm.yaml"
    config.write_text(TINY_RANKER)
    train = load_train_config(config, "ml-100k").to_dict()
    path = tmp_path / "arm-seed1.json"
    assert not compare.kept_run_is_current(path, None, train)  # not trained yet
    kept = {"train_config": {**train, "seed": 1, "device": "cpu", "model": {**train["model"], "extra_len": 8}},
            "knowledge": {"embeddings_version": "e1"}}
    path.write_text(json.dumps(kept))
    assert compare.kept_run_is_current(path, None, train)  # seed, device and the behaviours' length aside
    assert compare.kept_run_is_current(path, "e1", train)
    assert not compare.kept_run_is_current(path, "e2", train)  # re-embedded since
    assert not compare.kept_run_is_current(path, None, {**train, "epochs": train["epochs"] + 1})
    edited = {**train, "model": {**train["model"], "cold_head_share": 0.2}}  # an arm name reused for a new model
    assert not compare.kept_run_is_current(path, None, edited)


def test_the_cold_offset_sweep_prices_the_cold_items_reach_in_warm_ranking():
    from ranking.splits import cold_split

    data, cold = cold_split(_data(users=60, items=30), 0.2)
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold] = True
    calls = []

    def oracle(target):  # each user's target on top when cold, else just under every cold item
        def score(histories, users):
            calls.append(len(users))
            scores = torch.zeros(len(users), data.num_items + 1)
            scores[:, torch.as_tensor(cold)] = 1.0
            for row, user in enumerate(users):
                scores[row, target(user)] = 1.5 if is_cold[target(user)] else 0.5
            return scores
        return score

    sweep, ranks = compare.cold_offset_sweep(
        data, {"valid": oracle(data.valid_target), "test": oracle(data.test_target)}, cold,
        offsets=(0.0, -2.0, compare.NOT_RANKED))
    assert len(calls) == 2  # the model runs once per split, whatever the number of offsets
    assert len(ranks) == 3 and all(entry["test"]["all"] == pytest.approx(compare.ndcg_at_10(r).mean())
                                   for entry, r in zip(sweep, ranks, strict=True))  # each offset's ranks, kept
    not_ranked = ranks[-1]
    at_zero, pushed_down, _ = (entry["test"] for entry in sweep)
    assert at_zero["cold_targets"] == pytest.approx(1.0) and at_zero["warm_targets"] < 1.0  # cold items crowd the top
    assert pushed_down["warm_targets"] == pytest.approx(1.0) and pushed_down["cold_targets"] < 1.0
    assert [entry["offset"] for entry in sweep] == [0.0, -2.0, compare.NOT_RANKED] and sweep[1]["valid"]["all"] > 0
    test_cold = np.array([is_cold[data.test_target(u)] for u in range(len(data.sequences))])
    warm_left = [len(set(np.flatnonzero(~is_cold[1:]) + 1) - set(data.sequences[u][:-1].tolist())) for u in
                 range(len(data.sequences))]  # the warm candidates each user has not seen
    assert (not_ranked[~test_cold] == 0).all()
    assert all(not_ranked[u] >= warm_left[u] for u in np.flatnonzero(test_cold))  # every cold item below them all
    median = compare.median_sweep([sweep, sweep, [{**e, "test": {k: 0.0 for k in e["test"]}} for e in sweep]])
    assert median[0]["test"] == at_zero and median[1]["valid"] == sweep[1]["valid"]
    assert compare.median_sweep([sweep, None]) is None
    table = compare.cold_offset_table({"arms": {"ids": {}, "knowledge": {"cold_offsets": median}}})
    assert "knowledge: cold_offset" in table and "ids" not in table and table.count("(best on valid)") == 1
    assert "| not ranked" in table


def test_the_warm_only_table_compares_every_arm_with_the_cold_items_never_ranked():
    versus = {"all": {"relative_pct": 4.0, "relative_ci_pct": [1.0, 7.0]},
              "tail_items": {"relative_pct": -2.0, "relative_ci_pct": [-9.0, 5.0]}}
    arms = {"ids": {"warm_only": {"NDCG@10": 0.1}}, "knowledge": {"warm_only": {"NDCG@10": 0.104, "vs_ids": versus}}}
    summary = {"arms": arms, "slice_users": {"all": 900, "tail_items": 80, "cold_items": 90}}
    table = compare.warm_only_table(summary)
    assert "| knowledge | 0.1040 | +4.0% [+1.0, +7.0] | -2.0% [-9.0, +5.0] |" in table
    assert "| ids | 0.1000 | – | – |" in table and "| cold items |" not in table  # nobody ranks them there
    assert compare.warm_only_table({**summary, "arms": {**arms, "old": {}}}) == ""  # an arm without it: no table


def _sweep(valid_all: list[float]) -> list[dict]:
    offsets = (0.0, -0.5, -2.0, compare.NOT_RANKED)
    return [{"offset": o, "valid": {"all": v}, "test": {"all": v + 0.01, "cold_targets": 0.1 / (1 + i)}}
            for i, (o, v) in enumerate(zip(offsets, valid_all, strict=True))]


def test_the_reach_rule_shows_cold_items_as_much_as_validation_allows_against_the_baseline():
    sweep = _sweep([0.08, 0.095, 0.10, 0.10])
    assert compare.reach_offset(sweep, floor=0.09) == -0.5  # the most reach that still holds the floor
    assert compare.reach_offset(sweep, floor=0.07) == 0.0  # as trained already holds it
    assert compare.reach_offset(sweep, floor=0.2) == -2.0  # none holds it: the best on validation
    run = {"cold_offsets": sweep, "cold_offset_ranks": [[0], [1], [2], [3]]}
    assert compare.ranks_at_offset(run, -2.0) == [2] and compare.ranks_at_offset(run, -3.0) is None
    old = {"cold_offsets": sweep, "warm_only_ranks": [7]}  # a run kept from before every offset's ranks were
    assert compare.ranks_at_offset(old, compare.NOT_RANKED) == [7] and compare.ranks_at_offset(old, -0.5) is None


def test_the_cold_reach_is_compared_with_the_baseline_as_ranked_with_an_interval_per_slice():
    users = 400
    rng = np.random.default_rng(3)
    masks = {"all": np.ones(users, dtype=bool), "cold_items": np.arange(users) < 40}
    base_ranks = np.where(masks["cold_items"], 500, rng.integers(0, 30, users))  # the baseline never ranks cold
    better = np.where(masks["cold_items"], 3, np.maximum(0, base_ranks - 2))  # at -0.5: higher for every user
    worse = np.full(users, 900)  # as trained: the cold items crowd every warm target out
    rows = {"ids": {"cold_offsets": _sweep([0.09, 0.09, 0.09, 0.09])},
            "knowledge": {"cold_offsets": _sweep([0.08, 0.095, 0.10, 0.10])}, "plain": {}}
    runs = {("ids", 1): {}, ("knowledge", 1): {"cold_offsets": rows["knowledge"]["cold_offsets"],
                                               "cold_offset_ranks": [worse, better, base_ranks, base_ranks]}}
    per_user = {"ids": compare.ndcg_at_10(base_ranks)}
    compare.add_cold_reach(rows, runs, [1], per_user, masks)
    reach = rows["knowledge"]["cold_reach"]
    assert reach["offset"] == -0.5 and reach["valid_floor"] == 0.09 and "cold_reach" not in rows["plain"]
    assert reach["vs_ids"]["all"]["ci_low"] > 0 and reach["vs_ids"]["cold_items"]["base"] == 0
    assert reach["vs_ids"]["cold_items"]["other"] == pytest.approx(compare.ndcg_at_10(np.array([3])).item())
    table = compare.cold_reach_table({"arms": rows, "slice_users": {"all": users, "cold_items": 40}})
    assert "| knowledge | -0.5 | 0.1050 | +" in table and "| plain" not in table
    assert "+0.4307 [+0.4307, +0.4307] abs." in table  # cold items, where the baseline scores 0: absolute
    assert "holds the floor" not in table
    rows["knowledge"]["cold_reach"].update(offset=-2.0, valid=0.085)  # below the floor everywhere: said so
    assert "| -2 (no offset holds the floor: best on valid) |" in compare.cold_reach_table(
        {"arms": rows, "slice_users": {"all": users, "cold_items": 40}})
    rows["ids"]["cold_offsets"] = None  # a baseline without a sweep: no floor, no reach
    del rows["knowledge"]["cold_reach"]
    compare.add_cold_reach(rows, runs, [1], per_user, masks)
    assert "cold_reach" not in rows["knowledge"] and compare.cold_reach_table({"arms": rows, "slice_users": {}}) == ""


def test_epoch_line_names_the_run_its_epoch_and_the_best_so_far():
    from bench.compare import epoch_line

    row = {"epoch": 3, "loss": 7.1234, "valid_NDCG@10": 0.10123, "best": 0.11, "best_epoch": 2}
    assert epoch_line("knowledge-init", 2, 15, row) == \
        "  knowledge-init seed 2: epoch 3/15, loss 7.123, valid NDCG@10 0.1012 (best 0.1100 at epoch 2)"
    assert "valid" not in epoch_line("ids", 1, 15, {"epoch": 1, "loss": 8.0, "best": float("nan"), "best_epoch": 0})
