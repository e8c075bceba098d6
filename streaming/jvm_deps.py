"""Resolve the pinned JVM jars (Kafka broker, Flink Kafka connector) into a local cache.

The versions live in ``streaming/jvm/pom.xml``. Maven copies each profile's dependencies into
``<cache>/jvm/<hash of pom.xml>/{broker,connector}`` once; a marker file written after success
makes later calls return at once, without Maven or a network.

The glue module ``streaming/jvm/glue`` (two small Kafka record (de)serializers for PyFlink) is
built from source with ``mvn package`` into ``<cache>/jvm/glue-<hash of its POMs and sources>``
once, and its jar joins the connector jars (``pipeline.jars``).

Run ``python -m streaming.jvm_deps`` to resolve ahead of time and print the paths.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POM_PATH = Path(__file__).resolve().parent / "jvm" / "pom.xml"
GLUE_DIR = Path(__file__).resolve().parent / "jvm" / "glue"
GLUE_JAR_PREFIX = "reaseq-flink-glue-"
MARKER = "resolved.json"
GROUPS = ("broker", "connector")

JAVA_HINT = "install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)"
JAVAC_HINT = "install the OpenJDK 17 JDK, not only the JRE (apt-get install openjdk-17-jdk-headless)"
MVN_HINT = "install Maven 3.8+ (apt-get install maven)"


class JvmSetupError(RuntimeError):
    """A JVM prerequisite (java, mvn, or the jars themselves) is missing or failed."""


@dataclass(frozen=True)
class JvmJars:
    """Where the resolved jars are: the broker's folder and the connector's jar files."""

    broker_dir: Path
    connector_jars: tuple[Path, ...]

    @property
    def broker_classpath(self) -> str:
        """Classpath for ``java -cp`` that takes every jar of the broker folder."""
        return str(self.broker_dir / "*")

    @property
    def glue_jar(self) -> Path | None:
        """The reaseq-flink-glue jar among the connector jars, if it was built."""
        return next((p for p in self.connector_jars if p.name.startswith(GLUE_JAR_PREFIX)), None)

    @property
    def pipeline_jars(self) -> str:
        """The connector jars as Flink's ``pipeline.jars`` value (``;``-separated file URLs)."""
        return ";".join(p.resolve().as_uri() for p in self.connector_jars)


def default_cache_dir() -> Path:
    """The project's cache root (``$REASEQ_CACHE_DIR``, else ``~/.cache/reaseq``), shared with the datasets."""
    from ranking.paths import cache_dir

    return cache_dir()


def require_java() -> str:
    """Path of ``java``, or a :class:`JvmSetupError` saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise JvmSetupError(f"`java` was not found on PATH: {JAVA_HINT}.")
    return java


def require_mvn() -> str:
    """Path of ``mvn``, or a :class:`JvmSetupError` saying what to install."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JvmSetupError(
            f"`mvn` was not found on PATH and the JVM jars are not in the cache yet: {MVN_HINT}."
        )
    return mvn


def require_javac() -> str:
    """Path of ``javac`` (Maven compiles the glue module with it), or a :class:`JvmSetupError`."""
    javac = shutil.which("javac")
    if javac is None:
        raise JvmSetupError(f"`javac` was not found on PATH and the glue jar is not in the cache yet: {JAVAC_HINT}.")
    return javac


def pom_hash(pom: Path = POM_PATH) -> str:
    """Short content hash of the POM, naming its cache folder."""
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def glue_hash(glue: Path = GLUE_DIR) -> str:
    """Short hash of the glue module's sources, its POM and its parent POM (``../pom.xml``)."""
    files = [glue / "pom.xml", *sorted(p for p in (glue / "src").rglob("*") if p.is_file())]
    digest = hashlib.sha256()
    for path in [glue.parent / "pom.xml", *files]:
        if path.is_file():
            digest.update(f"\0{os.path.relpath(path, glue)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _read_marker(root: Path) -> JvmJars | None:
    marker = root / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        jars = JvmJars(
            broker_dir=root / "broker",
            connector_jars=tuple(root / "connector" / name for name in data["connector"]),
        )
        broker_ok = all((root / "broker" / name).is_file() for name in data["broker"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not broker_ok or not all(p.is_file() for p in jars.connector_jars):
        return None
    return jars


def _run_maven(cmd: list[str], failure: str) -> None:
    """Run Maven; on failure raise JvmSetupError with `failure`, the command and Maven's last lines."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise JvmSetupError(f"{failure}\n$ {' '.join(cmd)}\n{tail}")


MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def fetch_jar(coordinates: str, jar: Path, timeout_s: float = 300) -> str | None:
    """Copy one artifact (`group:artifact:version`) from Maven to `jar`, atomically; None when done, else
    why not (no Maven, Maven's exit status, a time-out). Used by the benchmarks' optional tools."""
    mvn = shutil.which("mvn")
    if mvn is None:
        return "mvn not on PATH"
    jar.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=jar.parent))
    try:
        done = subprocess.run([mvn, "-q", "-B", f"{MAVEN_DEPENDENCY_PLUGIN}:copy", f"-Dartifact={coordinates}",
                               f"-DoutputDirectory={staging}"], capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        fetched = next(staging.glob("*.jar"), None)
        if done.returncode != 0 or fetched is None:
            return f"{coordinates}: mvn exit {done.returncode}"
        os.replace(fetched, jar)
        return None
    except subprocess.TimeoutExpired:
        return f"{coordinates}: mvn timed out"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_dependencies(mvn: str, pom: Path, group: str, out: Path) -> None:
    cmd = [
        mvn, "-B", "-q", "-f", str(pom), "-P", group,
        "dependency:copy-dependencies", f"-DoutputDirectory={out}",
    ]
    _run_maven(cmd, f"Maven could not resolve the {group!r} jars of {pom} (is Maven Central reachable?).")
    if not any(out.glob("*.jar")):
        raise JvmSetupError(f"Maven copied no jars for the {group!r} profile of {pom}.")


def _cached_glue_jar(root: Path) -> Path | None:
    marker = root / MARKER
    if not marker.is_file():
        return None
    try:
        jar = root / json.loads(marker.read_text())["jar"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return jar if jar.is_file() else None


def _build_glue(mvn: str, glue: Path, root: Path) -> Path:
    """``mvn package`` the glue module into ``root`` (build folder inside it); return the jar."""
    build = root / ".build"
    shutil.rmtree(build, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(glue / "pom.xml"), "package", "-DskipTests",
        f"-Dglue.build.directory={build}",
    ]
    _run_maven(cmd, f"Maven could not build the glue jar from {glue} "
                    "(is Maven Central reachable for its first build?).")
    built = sorted(build.glob(f"{GLUE_JAR_PREFIX}*.jar"))
    if len(built) != 1:
        raise JvmSetupError(f"Maven built {len(built)} glue jars in {build}, expected one.")
    jar = root / built[0].name
    shutil.copyfile(built[0], root / f".{jar.name}.tmp")
    (root / f".{jar.name}.tmp").rename(jar)
    shutil.rmtree(build, ignore_errors=True)
    (root / f"{MARKER}.tmp").write_text(json.dumps({"jar": jar.name, "glue_hash": root.name}, indent=1))
    (root / f"{MARKER}.tmp").rename(root / MARKER)
    return jar


def resolve_glue_jar(cache: Path | None = None, *, glue: Path = GLUE_DIR) -> Path:
    """Return the glue jar, building it with Maven when its cache entry is missing.

    The cache entry is named by :func:`glue_hash`, so an edited source or POM builds anew; a
    built one needs neither Maven nor a network. Safe to call from several processes at once.
    """
    if not (glue / "pom.xml").is_file():
        raise JvmSetupError(f"The glue module's POM {glue / 'pom.xml'} is missing (an incomplete checkout?).")
    root = (cache or default_cache_dir()) / "jvm" / f"glue-{glue_hash(glue)}"
    jar = _cached_glue_jar(root)
    if jar is not None:
        return jar
    require_java()
    mvn = require_mvn()
    require_javac()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jar = _cached_glue_jar(root)  # another process may have finished meanwhile
        return jar if jar is not None else _build_glue(mvn, glue, root)


def resolve_jars(cache: Path | None = None, *, pom: Path = POM_PATH, glue: Path | None = GLUE_DIR) -> JvmJars:
    """Return the broker jar folder and connector jars, resolving them with Maven if needed.

    The connector jars end with the glue jar built from ``glue`` (skipped when ``glue`` is None).
    Safe to call from several processes at once (a file lock serialises the resolution).
    """
    deps = _resolve_dependencies(cache, pom)
    if glue is None:
        return deps
    glue_jar = resolve_glue_jar(cache, glue=glue)
    return JvmJars(broker_dir=deps.broker_dir, connector_jars=(*deps.connector_jars, glue_jar))


def _resolve_dependencies(cache: Path | None, pom: Path) -> JvmJars:
    root = (cache or default_cache_dir()) / "jvm" / pom_hash(pom)
    jars = _read_marker(root)
    if jars is not None:
        return jars
    require_java()
    mvn = require_mvn()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jars = _read_marker(root)  # another process may have finished meanwhile
        if jars is not None:
            return jars
        listing: dict[str, list[str]] = {}
        for group in GROUPS:
            final = root / group
            tmp = root / f".{group}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _copy_dependencies(mvn, pom, group, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            listing[group] = sorted(p.name for p in final.glob("*.jar"))
        listing["pom_sha256"] = [hashlib.sha256(pom.read_bytes()).hexdigest()]
        (root / f"{MARKER}.tmp").write_text(json.dumps(listing, indent=1))
        (root / f"{MARKER}.tmp").rename(root / MARKER)
        jars = _read_marker(root)
    if jars is None:  # pragma: no cover - only on a broken file system
        raise JvmSetupError(f"JVM jars resolved into {root} but could not be read back.")
    return jars


def s3_plugin_coordinates() -> str:
    """Flink's S3 filesystem plugin (Presto's, the one Flink recommends for checkpoints) at PyFlink's version."""
    from importlib.metadata import version

    return f"org.apache.flink:flink-s3-fs-presto:{version('apache-flink')}"


def main(argv: list[str] | None = None) -> int:
    """Resolve the jars and print where they are; optionally copy them where an image's Flink wants them."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m streaming.jvm_deps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy-connector-to", default=None, help="also copy the connector and glue jars into this "
                        "folder (an image's FLINK_HOME/lib: the job then needs no pipeline.jars)")
    parser.add_argument("--s3-plugin-to", default=None, help="also fetch Flink's S3 filesystem plugin "
                        "(flink-s3-fs-presto at PyFlink's version) into this folder (an image's FLINK_HOME/opt)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        jars = resolve_jars()
    except JvmSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"broker jars:    {jars.broker_dir}")
    print(f"connector jars: {' '.join(str(p) for p in jars.connector_jars)}")
    print(f"glue jar:       {jars.glue_jar}")
    if args.copy_connector_to:
        Path(args.copy_connector_to).mkdir(parents=True, exist_ok=True)
        for jar in jars.connector_jars:
            shutil.copy2(jar, Path(args.copy_connector_to) / jar.name)
    if args.s3_plugin_to:
        coordinates = s3_plugin_coordinates()
        target = Path(args.s3_plugin_to) / f"{coordinates.split(':')[1]}-{coordinates.split(':')[2]}.jar"
        failure = fetch_jar(coordinates, target, timeout_s=900)
        if failure:
            print(f"error: could not fetch the S3 plugin: {failure}", file=sys.stderr)
            return 1
        print(f"s3 plugin:      {target}")
    print(f"({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
