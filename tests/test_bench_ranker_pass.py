"""`reaseq bench ranker-pass` on a tiny artifact: it times all three paths and writes its JSON."""

from __future__ import annotations

import argparse
import json

from bench.ranker_pass import add_arguments, main_from_args
from ranking.experiment import train_and_save
from tests.helpers import TINY_RANKER


def test_ranker_pass_times_full_incremental_and_unchanged(ml100k_sequences, tmp_path, capsys):
    artifact = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=tmp_path / "artifacts").artifact
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--artifact", str(artifact.path), "--users", "40", "--batch", "8", "--repeats", "1",
                              "--out", str(tmp_path / "out")])
    assert main_from_args(args) == 0
    result = json.loads((tmp_path / "out" / "ranker-pass.json").read_text())
    assert result["users"] == 40 and result["artifact"] == artifact.version and result["git_commit"]
    assert all(result["us_per_user"][k] > 0 for k in ("full_pass", "incremental", "unchanged"))
    assert "full ÷ incremental" in capsys.readouterr().out
