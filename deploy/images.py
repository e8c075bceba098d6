"""`make images`: build the Flink and Ray images here, daemonless, with buildah, and smoke-test them inside.

Base images cannot be pulled here, so the Dockerfiles' base (`debian:bookworm-slim`) is made from Debian's
own packages: `debootstrap --variant=minbase bookworm` (Debian 12: Python 3.11, OpenJDK 17), imported
into the local image storage under that name. The same Dockerfiles build with Docker anywhere, on the
registry's image (pin it by digest for production). Storage: vfs, isolation: chroot (no daemon, no
user namespaces needed). The debootstrapped root file system is cached under
~/.cache/reaseq/images/ keyed by suite, variant, mirror and the host's local CAs (added to the base, so
that builds behind a TLS-intercepting proxy trust it); pip and Maven downloads are cached across builds
through the Dockerfiles' cache mounts.

    python -m deploy.images [--only flink|ray] [--skip-smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "deploy" / "images"
BASE_NAME = "docker.io/library/debian:bookworm-slim"
SUITE, VARIANT, MIRROR = "bookworm", "minbase", "http://deb.debian.org/debian"
STORAGE = ["--storage-driver", "vfs"]
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
INPUTS_LABEL = "io.reaseq.inputs"
# what the Dockerfiles copy from the repository (the artifacts an image bakes in are its `needs`)
COPIED = ("pyproject.toml", "constraints.txt", "README.md", "reaseq", "streaming", "inference", "ranking",
          "monitoring", "bench", "deploy/images")


@dataclass(frozen=True)
class Image:
    """One image: its Dockerfile, its tag, and commands that must succeed inside it."""

    name: str
    dockerfile: Path
    tag: str
    smoke: tuple[tuple[str, ...], ...]
    needs: tuple[str, ...] = ()  # paths under the repository root the build context must hold
    default: bool = True  # built by `make images`; otherwise only when named with --only


FLINK = Image("flink", IMAGES / "flink.Dockerfile", "localhost/reaseq-flink:latest", (
    ("id", "-u"),
    ("java", "-version"),
    ("bash", "-c", 'test -x "$JAVA_HOME/bin/java" && echo "$JAVA_HOME"'),
    # everything the job's operators import (the TaskManager's embedded interpreter loads them)
    ("python", "-c", "import pyflink, streaming.job, streaming.operators, streaming.scoring, streaming.refresher; "
                     "print('pyflink', pyflink.__file__)"),
    ("bash", "-c", "ls /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"),  # thread mode embeds the interpreter
    ("bash", "-c", "ls /opt/flink/lib/flink-sql-connector-kafka-*.jar /opt/flink/lib/reaseq-flink-glue-*.jar "
                   "/opt/flink/plugins/s3-fs-presto/flink-s3-fs-presto-*.jar "
                   "/opt/flink/plugins/metrics-prometheus/*.jar"),
    ("/docker-entrypoint.sh", "bash", "-c", "FLINK_LOG_DIR=/tmp flink --version"),  # pods: log/ is a volume
    ("env", "ENABLE_BUILT_IN_PLUGINS=flink-s3-fs-presto-2.3.0.jar", "/docker-entrypoint.sh", "true"),
    # nothing of the image is the flink user's to write: the pods' root filesystem is read-only
    ("bash", "-c", "! find / -xdev -user flink -not -path '/proc/*' -not -path '/tmp/*' 2>/dev/null | grep . "
                   "&& ! touch /opt/flink/log/x"),
    ("bash", "-c", "! command -v mvn && ! command -v javac && ! command -v gcc"),  # no build tools at runtime
))
RAY = Image("ray", IMAGES / "ray.Dockerfile", "localhost/reaseq-ray:latest", (
    ("id", "-u"),
    ("python", "-c", "import ray, torch, ray.serve; print('ray', ray.__version__, 'torch', torch.__version__)"),
    ("python", "-c", "from inference.serve.scoring import LoadedRanker, score_users; "
                     "r = LoadedRanker.load('ml-100k', 'cpu'); "
                     "print(score_users(r, [{'user_id': 'u', 'recent_items': r.item_ids[:3]}], top_k=3)[0]['items'])"),
    ("python", "-c", "from inference.behavior.reasoner import BehaviorReasoner; "
                     "print('behaviour model', BehaviorReasoner.load('ml-100k', 'cpu').version)"),
    # the CLI the LLM's weights Job and its workers' init check run, installed without the repository around it
    ("reaseq", "knowledge", "weights", "--help"),
    ("bash", "-c", "! command -v gcc && ! command -v cc && ! command -v make"),  # no build tools at runtime
), needs=("artifacts/ranker/ml-100k/LATEST", "artifacts/behavior/ml-100k/LATEST"))
RAY_LLM = Image("ray-llm", IMAGES / "ray-llm.Dockerfile", "localhost/reaseq-ray-llm:latest", (
    ("id", "-u"),
    ("python", "-c", "import vllm, ray; from ray.serve.llm import build_openai_app, LLMConfig; "
                     "print('vllm', vllm.__version__, 'ray', ray.__version__)"),
    ("python", "-c", "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"),
    ("bash", "-c", "! command -v gcc && ! command -v cc && ! command -v make"),  # no build tools at runtime
), default=False)
ALL = {image.name: image for image in (FLINK, RAY, RAY_LLM)}


def run(args: list[str], log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; its output goes to `log` when given. Raises with the log's tail on failure."""
    if log is None:
        done = subprocess.run(args, capture_output=True, text=True)
        output = done.stdout + done.stderr
    else:
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(args)}\n")
            out.flush()
            done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        output = log.read_text()[-4000:]
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} … failed (exit {done.returncode}):\n{output[-4000:]}")
    return done


def missing_tools() -> list[str]:
    return [t for t in ("buildah", "podman", "debootstrap") if shutil.which(t) is None]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: apt-get install buildah podman debootstrap "
                         "(Debian packages), then run `make images` again")


def cache_dir() -> Path:
    from ranking.paths import cache_dir as reaseq_cache

    return reaseq_cache() / "images"


def image_exists(tag: str) -> bool:
    return run(["buildah", *STORAGE, "inspect", "--type", "image", tag], check=False).returncode == 0


def host_cas() -> list[Path]:
    """This machine's own certificate authorities (e.g. a TLS-intercepting proxy's), which the base trusts too."""
    return sorted(LOCAL_CAS.glob("*.crt"))


def ensure_base(log: Path) -> str:
    """The Debian 12 base under the name the Dockerfiles use, from a cached debootstrap of Debian's packages.

    The host's local CAs go to the base's /usr/local/share/ca-certificates, so that installing
    ca-certificates in an image (and Java's trust store with it) trusts what this machine trusts."""
    if image_exists(BASE_NAME):
        return "present"
    cas = host_cas()
    digest = hashlib.sha256(json.dumps([SUITE, VARIANT, MIRROR, [c.read_text() for c in cas]]).encode())
    tarball = cache_dir() / f"debian-{SUITE}-{VARIANT}-{digest.hexdigest()[:12]}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", f"--variant={VARIANT}", SUITE, str(rootfs), MIRROR], log)
            local = rootfs / "usr/local/share/ca-certificates"
            local.mkdir(parents=True, exist_ok=True)
            for ca in cas:
                shutil.copy2(ca, local / ca.name)
            run(["tar", "-C", str(rootfs), "-cf", str(tarball.with_suffix(".part")), "."], log)
            tarball.with_suffix(".part").replace(tarball)
    run(["podman", *STORAGE, "import", str(tarball), BASE_NAME], log)
    return f"imported from {tarball.name}"


def inputs_digest(image: Image, context: Path = ROOT) -> str:
    """A digest of what the image is built from: its Dockerfile, the sources and pins it copies (the files git
    tracks, or all files outside git), the artifacts it bakes in, and the base's key."""
    listed = subprocess.run(["git", "-C", str(context), "ls-files", "-z", *COPIED], capture_output=True, text=True)
    files = sorted(f for f in listed.stdout.split("\0") if f) if listed.returncode == 0 else []
    files += sorted(str(p.relative_to(context)) for need in image.needs
                    for p in (context / need).parent.rglob("*") if p.is_file())
    digest = hashlib.sha256(image.dockerfile.read_bytes())
    for name in files:
        path = context / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps([SUITE, VARIANT, MIRROR]).encode())
    return digest.hexdigest()[:16]


def built_digest(tag: str) -> str | None:
    """The inputs digest recorded in a built image's labels (None: not built, or built without it)."""
    done = run(["podman", *STORAGE, "image", "inspect", "--format", f'{{{{ index .Labels "{INPUTS_LABEL}" }}}}', tag],
               check=False)
    value = done.stdout.strip()
    return value if done.returncode == 0 and value and value != "<no value>" else None


def build(image: Image, log: Path, context: Path = ROOT, digest: str | None = None) -> float:
    """buildah bud the image (context: the repository root; `digest`: its inputs', when already known);
    returns seconds."""
    missing = [p for p in image.needs if not (context / p).exists()]
    if missing:
        raise SystemExit(f"the {image.name} image bakes in {', '.join(missing)}, which does not exist yet: "
                         "train first (`make demo`, or `reaseq train ranker --dataset ml-100k` and "
                         "`reaseq train behavior --dataset ml-100k`)")
    started = time.monotonic()
    # vfs keeps every layer as a full copy: drop the image being replaced first (the Ray image is ~6 GB)
    run(["buildah", *STORAGE, "rmi", "-f", image.tag], log, check=False)
    run(["buildah", *STORAGE, "bud", "--isolation", "chroot", "--pull=never", "--layers=false",
         "--label", f"{INPUTS_LABEL}={digest or inputs_digest(image, context)}",
         "-f", str(image.dockerfile), "-t", image.tag, str(context)], log)
    run(["buildah", *STORAGE, "rmi", "--prune"], log, check=False)  # the replaced image: GBs under vfs
    return time.monotonic() - started


def size_bytes(tag: str) -> int:
    done = run(["podman", *STORAGE, "image", "inspect", "--format", "{{.Size}}", tag])
    return int(done.stdout.strip())


def smoke(image: Image, log: Path) -> list[str]:
    """Run each smoke command inside a container of the image (as the image's USER); returns their outputs."""
    container = run(["buildah", *STORAGE, "from", "--pull=never", image.tag]).stdout.strip()
    outputs = []
    try:
        for command in image.smoke:
            done = run(["buildah", *STORAGE, "run", "--isolation", "chroot", container, "--", *command], check=False)
            text = (done.stdout + done.stderr).strip()
            with log.open("a") as out:
                out.write(f"\n$ [{image.name}] {' '.join(command)}\n{text}\n")
            if done.returncode != 0:
                raise RuntimeError(f"smoke command failed in {image.tag}: {' '.join(command)}\n{text[-2000:]}")
            outputs.append(text.splitlines()[-1] if text else "")
    finally:
        run(["buildah", *STORAGE, "rm", container], check=False)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(ALL), action="append", help="build only this image (repeatable)")
    parser.add_argument("--skip-smoke", action="store_true", help="build without the smoke commands")
    parser.add_argument("--smoke-only", action="store_true", help="only run the smoke commands in built images")
    parser.add_argument("--force", action="store_true", help="build even when the image's inputs are unchanged")
    parser.add_argument("--available", action="store_true", help="skip (with the reason) an image whose baked-in "
                        "artifacts do not exist yet, instead of failing (make test: the Ray image needs training)")
    parser.add_argument("--log", default=None, help="build log (default: ~/.cache/reaseq/images/build.log)")
    args = parser.parse_args(argv)
    if args.available and missing_tools():
        print(f"skipping the images: {', '.join(missing_tools())} not installed (as root: apt-get install buildah "
              "podman debootstrap)")
        return 0
    require_tools()
    log = Path(args.log) if args.log else cache_dir() / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    print(f"base {BASE_NAME}: {ensure_base(log)} (log: {log})", flush=True)
    rows = []
    for name in args.only or [name for name, image in ALL.items() if image.default]:
        image = ALL[name]
        missing = [p for p in image.needs if not (ROOT / p).exists()]
        if missing and args.available:
            print(f"skipping {image.tag}: {', '.join(missing)} not trained yet (make demo trains them)", flush=True)
            continue
        digest = inputs_digest(image)  # reads every source and artifact: once per image
        if args.smoke_only:
            seconds = 0.0
        elif not args.force and built_digest(image.tag) == digest:
            print(f"{image.tag} is up to date with its inputs ({digest})", flush=True)
            seconds = 0.0
        else:
            print(f"building {image.tag} from {image.dockerfile.relative_to(ROOT)} …", flush=True)
            seconds = build(image, log, digest=digest)
        size = size_bytes(image.tag)
        print(f"  built in {seconds:.0f} s, {size / 2**30:.2f} GiB", flush=True)
        if not args.skip_smoke:
            for command, output in zip(image.smoke, smoke(image, log), strict=True):
                print(f"  ok: {' '.join(command)[:90]} → {output[:100]}", flush=True)
        rows.append((image.tag, seconds, size))
    print("\n| image | build | size |\n|---|---:|---:|")
    for tag, seconds, size in rows:
        print(f"| {tag} | {seconds:.0f} s | {size / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
