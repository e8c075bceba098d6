"""Offline validation of the deployment: kustomize renders every overlay, kubeconform checks each object
against the Kubernetes and operator CRD schemas kept in deploy/k8s/schemas/, promtool checks and unit-tests
the rules, and every dashboard and rule query reads only series the system exports.

Tools come from `make tools` (deploy/tools/install.sh) in ~/.cache/reaseq/tools/bin ($REASEQ_TOOLS/bin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitoring import exported
from monitoring.promql import metric_names

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("dev", "prod")
SCHEMA_LOCATIONS = (str(SCHEMAS / "kubernetes" / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
                    str(SCHEMAS / "crds" / "{{ .Group }}" / "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"))


def tool(name: str) -> str:
    """Path of a pinned tool installed by `make tools`."""
    root = Path(os.environ.get("REASEQ_TOOLS") or Path.home() / ".cache" / "reaseq" / "tools")
    path = root / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found in {path.parent} nor on PATH: run `make tools`")
    return found


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=300)


def kustomize_build(path: Path) -> str:
    """Rendered manifests of a kustomization directory (raises with kustomize's message on failure)."""
    result = _run([tool("kustomize"), "build", str(path)])
    if result.returncode != 0:
        raise ValueError(f"kustomize build {path} failed:\n{result.stderr}")
    return result.stdout


@dataclass
class Problem:
    """One object that failed validation."""

    kind: str
    name: str
    status: str
    message: str


def kubeconform(manifests: str) -> tuple[int, list[Problem]]:
    """(objects checked, problems) for a multi-document YAML: strict, every kind needs a schema."""
    args = [tool("kubeconform"), "-strict", "-summary", "-output", "json"]
    for location in SCHEMA_LOCATIONS:
        args += ["-schema-location", location]
    result = _run([*args, "-"], manifests)
    report = json.loads(result.stdout or "{}")
    problems = [Problem(r.get("kind", ""), r.get("name", ""), r.get("status", ""), r.get("msg", ""))
                for r in report.get("resources", []) if r.get("status") != "statusValid"]
    checked = sum(report.get("summary", {}).get(k, 0) for k in ("valid", "invalid", "errors", "skipped"))
    if result.returncode != 0 and not problems:
        problems.append(Problem("", "", "error", result.stderr or result.stdout))
    return checked, problems


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([tool("promtool"), *args])


def rule_exprs(rules: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule name, expr) of every recording and alert rule."""
    return [(r.get("record") or r.get("alert"), r["expr"]) for g in rules["groups"] for r in g["rules"]]


def recorded(rules: dict[str, Any]) -> set[str]:
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def unknown_series(expr: str, recorded_names: set[str]) -> list[str]:
    """Series an expression reads that nothing exports (recording rules count as exported)."""
    found = metric_names(expr)
    bad = [n for n in found.exact if n not in recorded_names and not exported.known(n)]
    bad += [p for p in found.patterns if not exported.known_regex(p)]
    return sorted(bad)


def check_queries(queries: list[tuple[str, str]], recorded_names: set[str]) -> dict[str, list[str]]:
    """{where: unknown series} for every query reading a series nothing exports."""
    out = {}
    for where, expr in queries:
        bad = unknown_series(expr, recorded_names)
        if bad:
            out[where] = bad
    return out


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def provided_secrets(docs: list[dict[str, Any]]) -> set[str]:
    """Secrets the operators create from objects in the overlay: Strimzi writes one per KafkaUser and the
    cluster CA certificate of each Kafka."""
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}
    names |= {f"{d['metadata']['name']}-cluster-ca-cert" for d in docs if d["kind"] == "Kafka"}
    return names


def references(node: Any) -> list[tuple[str, str]]:
    """Every (kind, name) a pod template anywhere inside `node` refers to: ConfigMap and Secret volumes,
    projected sources, envFrom and env valueFrom."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMap", "configMapRef", "configMapKeyRef") and isinstance(value, dict) and "name" in value:
                found.append(("ConfigMap", value["name"]))
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                found.append(("Secret", value["secretName"]))
            elif key in ("secretRef", "secretKeyRef") and isinstance(value, dict) and "name" in value:
                found.append(("Secret", value["name"]))
            found += references(value)
    elif isinstance(node, list):
        for value in node:
            found += references(value)
    return found


def external_secrets() -> set[str]:
    """Secrets the cluster's owner creates (deploy/k8s/cluster.yaml), which no overlay defines."""
    cluster = yaml.safe_load((K8S / "cluster.yaml").read_text())
    return {cluster["object_storage"]["secret"]}


def unresolved_references(docs: list[dict[str, Any]], external: set[str] = frozenset()) -> list[str]:
    """References to a ConfigMap or Secret that no object of the overlay provides (nor an operator, nor
    the `external` Secrets the cluster's owner creates) — what a pod would fail to mount."""
    have = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    have |= {("Secret", name) for name in provided_secrets(docs) | set(external)}
    missing = []
    for doc in docs:
        for kind, name in references(doc.get("spec", {})):
            if (kind, name) not in have:
                missing.append(f"{doc['kind']}/{doc['metadata']['name']} refers to {kind} {name!r}, which the "
                               "overlay does not define")
    return sorted(set(missing))
