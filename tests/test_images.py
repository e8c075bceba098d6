"""The images' build driver (deploy/images.py) and entry point: a Dockerfile that asks its base for what the
base lacks fails the build with the package manager's message; the Flink entry point enables plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import images

ENTRYPOINT = images.IMAGES / "flink-entrypoint.sh"


def _entrypoint(flink_home: Path, plugins: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLINK_HOME": str(flink_home), "ENABLE_BUILT_IN_PLUGINS": plugins}
    return subprocess.run([str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, timeout=30)


def test_the_flink_entrypoint_runs_the_command_when_the_named_plugins_are_baked_in(tmp_path):
    """Plugins are baked into plugins/ (the root filesystem is read-only): one ENABLE_BUILT_IN_PLUGINS names
    must be there already, or the pod stops at once with a message, copying nothing."""
    (tmp_path / "plugins" / "s3-fs-presto").mkdir(parents=True)
    (tmp_path / "plugins" / "s3-fs-presto" / "flink-s3-fs-presto-2.3.0.jar").write_bytes(b"jar")
    done = _entrypoint(tmp_path, "flink-s3-fs-presto-2.3.0.jar;", "echo", "started")
    assert done.returncode == 0 and done.stdout.strip() == "started", done.stderr
    assert _entrypoint(tmp_path, "", "echo", "started").stdout.strip() == "started"
    missing = _entrypoint(tmp_path, "flink-s3-fs-hadoop-2.3.0.jar", "echo", "started")
    assert missing.returncode == 1 and "not baked into" in missing.stderr and "started" not in missing.stdout
    assert "s3-fs-presto/" in missing.stderr
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["s3-fs-presto"]


@pytest.mark.skipif(shutil.which("buildah") is None or shutil.which("debootstrap") is None,
                    reason="buildah/debootstrap not installed (make tools installs them as root)")
def test_a_dockerfile_whose_base_lacks_what_it_installs_fails_the_build(tmp_path):
    log = tmp_path / "build.log"
    images.ensure_base(log)
    install = "apt-get update && apt-get install -y --no-install-recommends python3.12"  # Debian 12 has 3.11
    (tmp_path / "Dockerfile").write_text(f"FROM {images.BASE_NAME}\nRUN {install}\n")
    broken = images.Image("broken", tmp_path / "Dockerfile", "localhost/reaseq-test-broken:latest", ())
    with pytest.raises(RuntimeError, match=r"python3\.12"):
        images.build(broken, log, context=tmp_path)
    assert not images.image_exists(broken.tag)
