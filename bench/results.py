"""Writing benchmark results: every JSON names the git commit (and whether the tree was dirty), the exact
command and the machine, so a number can be traced to the code and the run that made it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """{"git_commit": sha or None, "git_dirty": bool or None} of the checkout holding this code."""
    root = repo or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def provenance(command: str | None = None) -> dict[str, Any]:
    """Commit, dirty flag, command line, machine and time of this run."""
    from ranking.experiment import machine_description

    return {**git_state(), "command": command or "reaseq " + shlex.join(sys.argv[1:]),
            "machine": machine_description(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_result(result: dict[str, Any], name: str, out_dir: str | Path = RESULTS_DIR,
                 command: str | None = None) -> Path:
    """Write `result` with its provenance (fields the result already has win) to out_dir/name."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**provenance(command), **result}, indent=2))
    return path


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out a matplotlib figure, write it as a PNG (making its folder) and close it; the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
