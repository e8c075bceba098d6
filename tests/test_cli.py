"""The `reaseq` command line: help, clear errors, and a real train → artifact → evaluate round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from reaseq.cli import main


def test_console_script_help():
    exe = shutil.which("reaseq") or f"{sys.executable} -m reaseq"
    result = subprocess.run(f"{exe} --help", shell=True, capture_output=True, text=True, check=True)
    for command in ("data", "train", "evaluate", "bench", "demo"):
        assert command in result.stdout


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  layers: 2\n  colour: blue\n")
    assert main(["train", "ranker", "--config", str(config)]) == 2
    assert "unknown model keys ['colour']" in capsys.readouterr().err
    config.write_text("model: [1, 2\n")
    assert main(["train", "ranker", "--config", str(config)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_evaluate_without_artifact_says_how_to_train(artifacts_root, capsys):
    assert main(["evaluate", "--dataset", "ml-100k"]) == 2
    assert "reaseq train ranker --dataset ml-100k" in capsys.readouterr().err


def test_ml1m_without_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REASEQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("REASEQ_DATA_DIR", str(tmp_path / "empty"))
    assert main(["data", "info", "--dataset", "ml-1m"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_train_then_evaluate_round_trip(tmp_path, artifacts_root, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {max_len: 20, dim: 16, layers: 1, heads: 1}\ntrain: {epochs: 2, batch_size: 256}\n")
    assert main(["train", "ranker", "--dataset", "ml-100k", "--config", str(config), "--quiet", "--seed", "3"]) == 0
    latest = (artifacts_root / "ranker" / "ml-100k" / "LATEST").read_text()
    artifact = artifacts_root / "ranker" / "ml-100k" / latest
    assert {p.name for p in artifact.iterdir()} == {"config.json", "weights.pt", "metrics.json", "dataset.json"}
    metrics = json.loads((artifact / "metrics.json").read_text())
    dataset = json.loads((artifact / "dataset.json").read_text())
    assert dataset["name"] == "ml-100k" and dataset["users"] == 943 and len(dataset["fingerprint"]) == 16
    assert json.loads((artifact / "config.json").read_text())["train"]["seed"] == 3
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "ml-100k", "--artifact", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert f"NDCG@10 {metrics['test']['NDCG@10']:.4f}" in out
    assert "popularity" in out


def test_demo_help_lists_its_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "ML-100K" in capsys.readouterr().out


@pytest.mark.parametrize(("summary", "status", "message"), [
    ({"scores": 10, "dead_letters": 0, "replay_error": None}, 0, ""),
    ({"scores": 8, "dead_letters": 2, "replay_error": None}, 0, ""),
    ({"scores": 7, "dead_letters": 1, "replay_error": None}, 1, "2 of 10 events have neither scores nor a dead letter"),
    ({"scores": 4, "dead_letters": 0, "replay_error": "KafkaTimeoutError()"}, 1, "the replay failed after 4 events"),
])
def test_stream_run_exits_nonzero_when_events_are_lost(monkeypatch, capsys, summary, status, message):
    import streaming.runner

    full = {"events": 10, "sent": summary["scores"], **summary}
    monkeypatch.setattr(streaming.runner, "run_pipeline", lambda opts, out=None: full)
    assert main(["stream", "run", "--limit", "10"]) == status
    err = capsys.readouterr().err
    assert (message in err) if message else err == ""
