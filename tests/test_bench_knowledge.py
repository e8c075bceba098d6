"""`reaseq bench knowledge`: the four-arm ablation through `bench compare`, its cold slice and goal verdicts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bench.compare import COLD_OFFSETS
from bench.knowledge import (
    add_arguments,
    default_arms,
    goal_verdicts,
    main_from_args,
    plot_ablation,
    zero_baseline_slices,
)
from inference.knowledge.embeddings import DIM, KG_VECTORS, save_embeddings
from inference.knowledge.store import EMBEDDINGS, resolve_version
from ranking.splits import SequenceData, save_sequences
from tests.test_compare import TINY_RANKER


def png_width(path: Path) -> int:
    return int.from_bytes(Path(path).read_bytes()[16:20], "big")


def _versus(relative: float, low: float, high: float) -> dict[str, dict[str, float]]:
    return {"all": {"relative_pct": relative, "relative_ci_pct": [low, high], "ci_low": low / 100, "diff": 0.0}}


def _summary(**arms: dict) -> dict:
    return {"arms": {"ids": {"slices": {"cold_items": 0.0}}, **arms}, "popularity_ndcg10": {"cold_items": 0.0}}


def test_goals_need_the_gain_and_an_interval_above_zero():
    verdicts = {v["goal"].split(":")[0]: v for v in goal_verdicts(_summary(
        reaseq={"vs_ids": _versus(6.0, 1.0, 11.0)},
        knowledge={"vs_ids": _versus(3.0, -0.5, 6.5), "slices": {"cold_items": 0.01}},
        behaviors={"vs_ids": _versus(1.0, 0.2, 1.8)})) if "ΔNDCG@10" in v["goal"]}
    assert verdicts["reaseq"]["met"]
    assert not verdicts["knowledge"]["met"]  # above +2% but the interval reaches below 0
    assert not verdicts["behaviors"]["met"]  # interval above 0 but below +2%
    def cold_verdict(cold_ndcg: float) -> dict:
        knowledge = {"vs_ids": _versus(0, 0, 0), "slices": {"cold_items": cold_ndcg}}
        return next(v for v in goal_verdicts(_summary(knowledge=knowledge)) if "cold" in v["goal"])

    assert cold_verdict(0.01)["met"] and cold_verdict(0.01)["popularity"] == 0.0
    assert not cold_verdict(0.0)["met"]  # equal to popularity is not above it
    assert goal_verdicts(_summary()) == []  # no arms beside the baseline: nothing to judge


def test_default_arms_are_the_projects_four_configs_and_exist():
    for dataset in ("ml-100k", "ml-1m"):
        arms = default_arms(dataset)
        assert [a.name for a in arms] == ["ids", "knowledge", "behaviors", "reaseq"]
        for arm in arms:
            assert Path(arm.config).read_text().strip()


def test_a_tiny_ablation_with_a_knowledge_arm_writes_its_table_cold_slice_and_goals(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REASEQ_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(1, 41)]
    sequences = [rng.integers(1, 41, size=int(rng.integers(6, 25))) for _ in range(60)]
    data = SequenceData("synthetic", "f" * 16, items, [str(u) for u in range(60)], sequences)
    path = save_sequences(data, tmp_path / "synthetic.npz")
    save_embeddings("synthetic", items, items, rng.normal(size=(40, DIM)).astype(np.float32),
                    {"source": "knowledge", "knowledge_version": "k-test"})
    folder = resolve_version(EMBEDDINGS, "synthetic")
    np.save(folder / KG_VECTORS, rng.normal(size=(40, 8)).astype(np.float32))
    (tmp_path / "ids.yaml").write_text(TINY_RANKER)
    (tmp_path / "knowledge.yaml").write_text(TINY_RANKER.replace("model:\n", "model:\n  side_mode: gate\n  "
                                                                 "id_dropout: 0.2\n") + "  knowledge: LATEST\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--sequences", str(path), "--part", "ablation", "--seeds", "1", "2",
                              "--cold-fraction", "0.2", "--arm", f"ids={tmp_path / 'ids.yaml'}",
                              "--arm", f"knowledge={tmp_path / 'knowledge.yaml'}",
                              "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                              "--plot", str(tmp_path / "ablation.png")])
    assert main_from_args(args) == 0
    result = json.loads((tmp_path / "out" / "knowledge-synthetic-ablation.json").read_text())
    assert result["cold_items"] == 8 and result["slice_users"]["cold_items"] > 0
    assert result["embeddings_version"] == folder.name and result["knowledge_version"] == "k-test"
    assert result["arms"]["knowledge"]["model_config"]["side_mode"] == "gate"
    sweep = result["arms"]["knowledge"]["cold_offsets"]  # knowledge scores the cold items: what it costs
    ids_sweep = result["arms"]["ids"]["cold_offsets"]  # IDs only: cold items' untrained embeddings, priced too
    assert [e["offset"] for e in sweep] == list(COLD_OFFSETS) == [e["offset"] for e in ids_sweep]
    assert "vs_ids" in result["arms"]["knowledge"]["warm_only"] and result["arms"]["ids"]["warm_only"]["NDCG@10"] > 0
    for run in (tmp_path / "work" / "runs").glob("knowledge-seed*.json"):  # offset 0 is the model as trained
        kept = json.loads(run.read_text())
        assert kept["cold_offsets"][0]["test"]["all"] == pytest.approx(kept["test"]["NDCG@10"], abs=1e-9)
        assert kept["cold_offset_ranks"][0] == kept["ranks"] and len(kept["cold_offset_ranks"]) == len(COLD_OFFSETS)
    reach = result["arms"]["knowledge"]["cold_reach"]  # the reach rule's offset, with intervals per slice
    assert reach["offset"] in COLD_OFFSETS and "cold_reach" not in result["arms"]["ids"]
    assert reach["valid_floor"] == result["arms"]["ids"]["cold_offsets"][0]["valid"]["all"]
    assert set(reach["vs_ids"]) == set(result["slice_users"])
    assert [len(c) for c in result["arms"]["ids"]["valid_ndcg10_curves"].values()] == [1, 1]  # one epoch per seed
    assert result["git_commit"] and result["command"]
    goals = {v["goal"] for v in result["goals"]}
    assert any(g.startswith("knowledge: ΔNDCG@10") for g in goals) and any("cold" in g for g in goals)
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_width(tmp_path / "ablation.png") == 1760  # curves, relative differences and the cold items' cost
    altered = json.loads(json.dumps(result))
    cold = altered["arms"]["knowledge"]["vs_ids"]["cold_items"]  # as on ML-1M, where IDs only scores 0 there
    cold.update(base=0.0, diff=cold["other"], ci_low=cold["ci_low"] + cold["base"],
                ci_high=cold["ci_high"] + cold["base"])
    assert zero_baseline_slices(altered) == ["cold_items"]
    assert png_width(plot_ablation(altered, tmp_path / "cold.png")) == 2090  # one more panel, in absolute NDCG@10
    for row in altered["arms"].values():
        row["cold_offsets"] = None  # runs from before the sweep: no panel for it
    assert png_width(plot_ablation(altered, tmp_path / "no-sweep.png")) == 1650
    out = capsys.readouterr().out
    assert "most cold reach with validation ≥ ids" in out  # the reach table beside the others
    assert "ΔNDCG@10 vs ids" in out and ("MISSED: knowledge" in out or "met: knowledge" in out)
    assert "knowledge: cold_offset" in out and "| arm, cold items never ranked |" in out  # the sweep's tables
    args.name = "knowledge-synthetic-ablation-again.json"  # the same runs, resumed, written under another name
    assert main_from_args(args) == 0
    assert "0 run(s) to train (4 already done)" in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / args.name).read_text())
    assert again["arms"] == result["arms"]
    kept = sum(json.loads(run.read_text())["train_seconds"] for run in (tmp_path / "work" / "runs").glob("*.json"))
    assert again["ranker_train_seconds_sum"] == result["ranker_train_seconds_sum"] == pytest.approx(kept, abs=0.05)
    save_embeddings("synthetic", items, items[::-1], rng.normal(size=(40, DIM)).astype(np.float32),
                    {"source": "knowledge", "knowledge_version": "k-test-2"})  # a re-embed moves LATEST
    newer = resolve_version(EMBEDDINGS, "synthetic")
    np.save(newer / KG_VECTORS, rng.normal(size=(40, 8)).astype(np.float32))
    args.name = "knowledge-synthetic-ablation-reembedded.json"
    assert main_from_args(args) == 0
    out = capsys.readouterr().out
    assert "2 kept run(s) read other knowledge embeddings" in out and "2 run(s) to train (2 already done)" in out
    runs = {run.stem: json.loads(run.read_text()) for run in (tmp_path / "work" / "runs").glob("*.json")}
    assert {name: run["knowledge"] and run["knowledge"]["embeddings_version"] for name, run in runs.items()} == {
        "ids-seed1": None, "ids-seed2": None, "knowledge-seed1": newer.name, "knowledge-seed2": newer.name}
