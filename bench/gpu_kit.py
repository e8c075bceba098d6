"""`reaseq bench gpu-kit`: one folder that runs the knowledge ablation on a bare GPU machine.

A lent GPU machine has CUDA torch, numpy, pandas, PyYAML, tqdm and matplotlib, but no network, no dataset
and not every dependency of this project. The kit carries what it lacks:

  <kit>/<dataset>.npz            the user sequences (`reaseq data export`), so no dataset is loaded there
  <kit>/artifacts/...            the knowledge-embeddings version the knowledge arms read (LATEST)
  <kit>/wheels/                  pinned wheels (constraints.txt) for the packages the image lacks
  <kit>/run.sh                   installs those wheels into <kit>/site, restores earlier finished runs,
                                 trains within a time budget and packs the finished runs into $OUT

`bench compare` keeps every finished run on disk, so a second call (with the first call's `work.tar.gz`
copied back into the kit) resumes where the first stopped. Build it here, then on the GPU machine run
`bash <kit>/run.sh` with the kit carried along.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ranking.splits import SequenceData, save_sequences

# what the GPU image lacks that the ablation imports (pydantic, through the knowledge schema), and its deps
DEVICE_MISSING = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection")
DEVICE_PYTHON = "3.12"
KIT_LIMIT_BYTES = 60 * 2**20  # what travels per call is at most 64 MiB, the checkout included


@dataclass(frozen=True)
class KitPlan:
    """What the kit's run.sh runs: the knowledge ablation's arguments and the time it may take."""

    dataset: str
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int = 60
    jobs: int = 12
    budget_s: int = 540  # under the device's 10-minute command limit, leaving time to pack the runs
    device: str = "cuda"
    pins: tuple[str, ...] = field(default_factory=tuple)
    arms: tuple[str, ...] = ()  # NAME=CONFIG.yaml replacing the four default arms (relative to the repository)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_pins(constraints: str, names: tuple[str, ...] = DEVICE_MISSING) -> tuple[str, ...]:
    """`name==version` for each of `names` from a constraints file's text; a missing pin raises KeyError."""
    pinned = {}
    for line in constraints.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            name = name.strip()
            pinned[_normalise(name)] = f"{name}=={version.strip()}"
    missing = [name for name in names if _normalise(name) not in pinned]
    if missing:
        raise KeyError(f"not pinned in constraints.txt: {', '.join(missing)}")
    return tuple(pinned[_normalise(name)] for name in names)


def ablation_command(plan: KitPlan, kit: str) -> list[str]:
    """The command line run.sh runs from the repository root: `reaseq bench knowledge` without the rest of the
    CLI, whose other commands import Kafka, Flink and Ray."""
    return ["python3", "-m", "bench.knowledge", "--dataset", plan.dataset, "--part", "ablation",
            "--sequences", f"{kit}/{plan.dataset}.npz", "--seeds", *map(str, plan.seeds),
            "--epochs", str(plan.epochs), "--device", plan.device, "--jobs", str(plan.jobs),
            "--work-dir", f"{kit}/work", "--out", "$OUT", "--plot", f"$OUT/ablation-{plan.dataset}.png",
            *(arg for arm in plan.arms for arg in ("--arm", arm))]


def run_script(plan: KitPlan, kit: str) -> str:
    """run.sh: install the carried wheels, restore finished runs, train within the budget, pack the runs."""
    command = " ".join(arg if arg.startswith("$OUT") else shlex.quote(arg)
                       for arg in ablation_command(plan, kit)).replace("$OUT", '"$OUT"')
    return f"""#!/usr/bin/env bash
# The {plan.dataset} knowledge ablation on a GPU machine; run from the repository root: bash {kit}/run.sh
# Writes the result JSON, its plot, log.txt and work.tar.gz (every finished run) to $OUT. Copy work.tar.gz
# back into {kit}/ before the next call and it resumes where this one stopped.
set -uo pipefail
kit={shlex.quote(kit)}
case "$kit" in /*) ;; *) kit="$PWD/$kit" ;; esac
export OUT="${{OUT:-$kit/out}}"
mkdir -p "$OUT" "$kit/site" "$kit/work"
python3 -m pip install -q --no-deps --no-index --find-links "$kit/wheels" --target "$kit/site" \\
  {' '.join(plan.pins)} || {{ echo "the kit's wheels did not install"; exit 3; }}
export PYTHONPATH="$kit/site${{PYTHONPATH:+:$PYTHONPATH}}"
export REASEQ_ARTIFACTS_DIR="$kit/artifacts" REASEQ_CACHE_DIR="$kit/cache"
if [ -f "$kit/work.tar.gz" ]; then tar -xzf "$kit/work.tar.gz" -C "$kit"; fi
echo "finished runs at start: $(find "$kit/work" -name '*.json' | wc -l)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi here"
timeout --kill-after=20 {plan.budget_s} {command} > "$OUT/log.txt" 2>&1
status=$?
tr '\\r' '\\n' < "$OUT/log.txt" | grep -v '%|' | tail -60
tar -czf "$OUT/work.tar.gz" -C "$kit" work
echo "finished runs now: $(find "$kit/work" -name '*.json' | wc -l); exit status $status (124: the budget ran out)"
exit "$status"
"""


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def copy_latest_embeddings(dataset: str, artifacts: Path, kit: Path) -> str:
    """Copy the LATEST knowledge-embeddings version of `dataset` into the kit; return the version."""
    from inference.knowledge.store import EMBEDDINGS, resolve_version

    source = resolve_version(EMBEDDINGS, dataset, None, artifacts)
    target = kit / "artifacts" / EMBEDDINGS / dataset
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target / source.name)
    (target / "LATEST").write_text(source.name)
    return source.name


def download_wheels(pins: tuple[str, ...], folder: Path, python: str = DEVICE_PYTHON) -> None:
    """Binary wheels of `pins` for a Python version (the GPU machine's) on manylinux x86-64, without their
    dependencies (each pin names its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(folder), *pins], check=True)


def build_kit(plan: KitPlan, kit: Path, artifacts: Path, repo: Path | None = None, data: SequenceData | None = None,
              wheels: bool = True) -> dict[str, object]:
    """Fill `kit` for `plan` and return its manifest. Inside the repository `repo`, run.sh names the kit by its
    relative path (what the device's carry takes); elsewhere by its absolute one. `data` defaults to the
    dataset's sequences. Earlier finished runs (`work.tar.gz`) are kept."""
    if data is None:
        from ranking.experiment import load_sequences

        data = load_sequences(plan.dataset)
    kit.mkdir(parents=True, exist_ok=True)
    inside = repo is not None and kit.resolve().is_relative_to(repo.resolve())
    name = kit.resolve().relative_to(repo.resolve()).as_posix() if inside else str(kit.resolve())
    save_sequences(data, kit / f"{plan.dataset}.npz")
    version = copy_latest_embeddings(data.dataset, artifacts, kit)
    if wheels:
        download_wheels(plan.pins, kit / "wheels")
    (kit / "run.sh").write_text(run_script(plan, name))
    size = folder_bytes(kit)
    if size > KIT_LIMIT_BYTES:
        raise RuntimeError(f"the kit is {size / 2**20:.1f} MiB; what travels to the GPU machine is at most 64 MiB")
    manifest = {"dataset": plan.dataset, "embeddings_version": version, "pins": list(plan.pins),
                "mib": round(size / 2**20, 1), "run": f"bash {name}/run.sh", "carry": [name]}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-1m", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--kit", default=".gpu", help="folder to fill, inside the repository and ignored by git "
                        "(default .gpu; carry it to the GPU machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=60, help="every arm's fixed epoch budget")
    parser.add_argument("--jobs", type=int, default=12, help="runs trained at once on the GPU")
    parser.add_argument("--budget-s", type=int, default=540, help="seconds the training may take per call "
                        "(the rest packs the finished runs)")
    parser.add_argument("--no-wheels", action="store_true", help="do not download the wheels (they are there)")
    parser.add_argument("--arm", action="append", default=[], type=_arm,
                        help="NAME=CONFIG.yaml (repeat it), replacing the four default arms; the first is the "
                             "baseline")


def _arm(text: str) -> str:
    """An arm as `bench knowledge --arm` takes it, whose config exists here (the GPU machine gets the tree)."""
    from bench.compare import Arm

    arm = Arm.parse(text)
    if not Path(arm.config).is_file():
        raise argparse.ArgumentTypeError(f"no config {arm.config!r} for arm {arm.name!r}")
    return f"{arm.name}={arm.config}"


def plan_from_args(args: argparse.Namespace, pins: tuple[str, ...]) -> KitPlan:
    """The kit's plan from `reaseq bench gpu-kit`'s arguments."""
    return KitPlan(args.dataset, tuple(args.seeds), args.epochs, args.jobs, args.budget_s, pins=pins,
                   arms=tuple(args.arm))


def main_from_args(args: argparse.Namespace) -> int:
    from ranking.paths import artifacts_dir

    repo = Path(__file__).resolve().parents[1]
    pins = wheel_pins((repo / "constraints.txt").read_text())
    plan = plan_from_args(args, pins)
    try:
        manifest = build_kit(plan, Path(args.kit), artifacts_dir(), repo, wheels=not args.no_wheels)
    except (FileNotFoundError, KeyError, RuntimeError) as error:
        print(f"gpu-kit: {error}", file=sys.stderr)
        return 1
    print(f"kit {args.kit}: {manifest['mib']} MiB, embeddings {manifest['embeddings_version']}\n"
          f"on the GPU machine: command `{manifest['run']}`, carry {manifest['carry']}; copy its work.tar.gz "
          f"back into {args.kit}/ before a second call to resume")
    return 0
