"""JSON schemas for kubeconform, kept in the repo (deploy/k8s/schemas/), pinned, so validation runs offline.

Two sources, both rebuilt by `python -m deploy.schemas` (see deploy/k8s/schemas/SOURCES.md):
- Kubernetes kinds: the "-local-strict" schemas shipped in the `kubernetes-validate` wheel (PyPI), which
  reference a shared _definitions.json; `bundle` makes one standalone file per kind holding only the
  definitions it reaches.
- Operator CRDs: each served version's openAPIV3Schema, made strict (`crd_schemas`) the way
  openapi2jsonschema does: objects with properties reject unknown fields, int-or-string allows both.
File names follow kubeconform's `{kind}-{group}-{version}` (Kubernetes) and `{group}/{kind}_{version}` (CRDs).
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).parent / "k8s" / "schemas"
KUBERNETES_VERSION = "v1.33.0"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
# Kubernetes kinds the manifests use (kubeconform file stems)
NATIVE_KINDS = ("configmap-v1", "namespace-v1", "service-v1", "serviceaccount-v1", "secret-v1",
                "role-rbac-v1", "rolebinding-rbac-v1", "poddisruptionbudget-policy-v1",
                "networkpolicy-networking-v1", "persistentvolumeclaim-v1", "job-batch-v1")
_REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")


def _refs(node: Any) -> set[str]:
    """Definition names referenced anywhere under `node`."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and (m := _REF.match(ref)):
            found.add(m.group(1))
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and (m := _REF.match(ref)):
            out["$ref"] = f"#/$defs/{m.group(1)}"
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def bundle(kind_schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A standalone schema: the kind's schema plus every definition it reaches, refs made local."""
    needed: set[str] = set()
    todo = list(_refs(kind_schema))
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(_refs(definitions[name]) - needed)
    out = _rewrite(kind_schema)
    out.pop("$id", None)  # refs resolve inside this file
    out["$defs"] = {name: _rewrite(definitions[name]) for name in sorted(needed)}
    return out


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if out.pop("x-kubernetes-int-or-string", False):
            out.pop("type", None)
            out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{`group/kind_version.json`: strict schema} for the storage version of a CustomResourceDefinition."""
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"].lower()
    out = {}
    for version in crd["spec"]["versions"]:
        if not version.get("storage", False):
            continue
        schema = _strict(version["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        # some CRDs leave the object's envelope out of their schema
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        out[f"{group}/{kind}_{version['name']}.json"] = schema
    return out


def write_json(path: Path, schema: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")


def build_native(wheel: Path, out: Path = SCHEMAS / "kubernetes") -> list[Path]:
    """Write standalone schemas of NATIVE_KINDS from a downloaded kubernetes-validate wheel."""
    prefix = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}-local-strict/"
    written = []
    with zipfile.ZipFile(wheel) as zf:
        definitions = json.loads(zf.read(prefix + "_definitions.json"))["$defs"]
        for stem in NATIVE_KINDS:
            path = out / f"{stem}.json"
            write_json(path, bundle(json.loads(zf.read(f"{prefix}{stem}.json")), definitions))
            written.append(path)
    return written


def build_crds(crd_files: list[Path], out: Path = SCHEMAS / "crds") -> list[Path]:
    """Write strict schemas for every CRD in the given YAML files."""
    written = []
    for file in crd_files:
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                for name, schema in crd_schemas(doc).items():
                    write_json(out / name, schema)
                    written.append(out / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-validate-wheel", type=Path, help=f"a downloaded {KUBERNETES_VALIDATE} wheel")
    parser.add_argument("--crd", type=Path, nargs="*", default=[], help="CRD YAML files (operators' releases)")
    args = parser.parse_args()
    paths = build_native(args.kubernetes_validate_wheel) if args.kubernetes_validate_wheel else []
    paths += build_crds(args.crd)
    for path in paths:
        print(path.relative_to(SCHEMAS))


if __name__ == "__main__":
    main()
