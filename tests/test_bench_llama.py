"""`reaseq bench llama`: the llama-cpp builds' cost per item, side by side."""

from __future__ import annotations

import argparse
import json

from bench.llama import add_arguments, main_from_args, spread, summarise


def _run(seconds: float, tokens_per_second: float, decisions: dict) -> dict:
    return {"seconds_per_item": seconds, "prompt_tokens_per_second": tokens_per_second, "decisions": decisions}


def test_the_summary_takes_medians_ratios_per_round_and_counts_records_that_agree():
    same, other = (("adults",), ("dark",), ("late night",)), (("children",), ("funny",), ("late night",))
    runs = {"portable": [_run(5.0, 40, {}), _run(6.0, 38, {}), _run(5.0, 41, {"1": same, "2": same})],
            "avx512": [_run(2.5, 80, {}), _run(4.0, 60, {}), _run(2.0, 90, {"1": same, "2": other})]}
    summary = summarise(runs)
    assert summary["builds"]["portable"] == {"seconds_per_item": 5.0, "prompt_tokens_per_second": 40,
                                             "rounds": 3, "speedup_vs_portable": 1.0}
    # per-round ratios 2.0, 1.5, 2.5: the median of the ratios, not the ratio of the medians (5.0 / 2.5)
    assert summary["builds"]["avx512"]["speedup_vs_portable"] == 2.0
    assert summary["builds"]["avx512"]["seconds_per_item"] == 2.5
    assert summary["items"] == 2 and summary["same_records"] == 1


def test_items_are_spread_over_the_catalogue():
    items = [str(n) for n in range(100)]
    assert spread(items, 3) == ["0", "50", "99"] and spread(items[:2], 5) == ["0", "1"]


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--llm", "smollm2-135m", "--threads", "1", "--out", str(tmp_path), *extra])


def test_a_real_round_with_the_portable_build_writes_its_cost_and_decisions(tmp_path, capsys):
    assert main_from_args(_args(tmp_path, "--builds", "portable", "--items", "2", "--rounds", "1")) == 0
    result = json.loads((tmp_path / "llama-ml-100k.json").read_text())
    row = result["builds"]["portable"]
    assert row["seconds_per_item"] > 0 and row["prompt_tokens_per_second"] > 0 and row["speedup_vs_portable"] == 1.0
    assert result["item_ids"] == ["1", "1682"] and result["runs"]["portable"][0]["llm_calls"] >= 6
    assert "git_commit" in result and "| portable |" in capsys.readouterr().out


def test_an_avx512_build_that_cannot_run_here_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path / "empty-cache"))  # never installed there
    assert main_from_args(_args(tmp_path, "--builds", "portable", "avx512")) == 1
    error = capsys.readouterr().err  # not installed, or (on a CPU without AVX-512) cannot run at all
    assert "make llama-avx512" in error or "lacks avx512" in error
    assert not (tmp_path / "llama-ml-100k.json").exists()
