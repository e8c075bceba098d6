"""Where datasets, processed splits and artifacts live (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root for downloaded raw data and processed splits: $REASEQ_CACHE_DIR or ~/.cache/reaseq."""
    root = os.environ.get("REASEQ_CACHE_DIR") or Path.home() / ".cache" / "reaseq"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Root for versioned model artifacts: $REASEQ_ARTIFACTS_DIR or ./artifacts."""
    path = Path(os.environ.get("REASEQ_ARTIFACTS_DIR") or "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
