"""What the rendered NetworkPolicies let through, by Kubernetes' rules, without a cluster.

`connection_allowed()` decides one connection (a pod to a pod or to an address outside, on a port) the
way a NetworkPolicy-enforcing network does: egress is open for a pod no Egress policy selects, otherwise
some rule of a policy selecting it must match the destination and port; the same for ingress at a
destination pod. `pods()` gives the pods the operators would create from the overlay's objects, with the
labels they put on them (Flink operator: app/component/type; KubeRay: ray.io/*; Strimzi: strimzi.io/*), and
`operator_policies()` the NetworkPolicy Strimzi writes from each listener's `networkPolicyPeers`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace, its labels, the namespace's labels) or an address outside the cluster (`ip`)."""

    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.ip is None


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against labels; {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    """One `from`/`to` entry of a rule against the other end of the connection."""
    if "ipBlock" in peer:
        if other.is_pod:  # pod addresses are the cluster's; our policies never name them by CIDR
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return (address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(c) for c in block.get("except", [])))
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low, high = int(entry["port"]), int(entry.get("endPort", entry["port"]))
        if low <= port <= high:
            return True
    return False


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _side_allows(policies: list[dict[str, Any]], direction: str, pod: Endpoint, other: Endpoint, port: int,
                 protocol: str) -> bool:
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    selecting = [p for p in policies
                 if p["metadata"].get("namespace", pod.namespace) == pod.namespace
                 and direction in _types(p) and selects(p["spec"].get("podSelector"), pod.labels)]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", pod.namespace)
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, namespace, other) for p in peers)) \
                    and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def connection_allowed(policies: list[dict[str, Any]], source: Endpoint, destination: Endpoint, port: int,
                       protocol: str = "TCP") -> bool:
    """Whether `source` may open a connection to `destination` on `port` under `policies`."""
    if source.is_pod and not _side_allows(policies, "Egress", source, destination, port, protocol):
        return False
    return not destination.is_pod or _side_allows(policies, "Ingress", destination, source, port, protocol)


def _template_labels(template: dict[str, Any] | None) -> dict[str, str]:
    return dict(((template or {}).get("metadata") or {}).get("labels") or {})


def pods(docs: list[dict[str, Any]], namespace: str, namespace_labels: dict[str, str]) -> dict[str, Endpoint]:
    """The pods the overlay's objects become, by a short name, with the labels their controllers give them."""
    found: dict[str, Endpoint] = {}

    def add(name: str, labels: dict[str, str]) -> None:
        found[name] = Endpoint(name, namespace, labels, namespace_labels)

    for doc in docs:
        kind, meta, spec = doc["kind"], doc["metadata"], doc.get("spec", {})
        common = dict(meta.get("labels") or {})
        if kind == "FlinkDeployment":
            base = {**common, **_template_labels(spec.get("podTemplate")), "app": meta["name"],
                    "type": "flink-native-kubernetes"}
            for component in ("jobmanager", "taskmanager"):
                role = spec.get("jobManager" if component == "jobmanager" else "taskManager", {})
                add(f"{meta['name']}-{component}",
                    {**base, **_template_labels(role.get("podTemplate")), "component": component})
        elif kind == "RayService":
            cluster = spec["rayClusterConfig"]
            ray = {"ray.io/is-ray-node": "yes", "ray.io/cluster": meta["name"]}
            add(f"{meta['name']}-head", {**common, **_template_labels(cluster["headGroupSpec"]["template"]),
                                         **ray, "ray.io/node-type": "head"})
            for group in cluster.get("workerGroupSpecs", []):
                add(f"{meta['name']}-worker-{group['groupName']}",
                    {**common, **_template_labels(group["template"]), **ray, "ray.io/node-type": "worker",
                     "ray.io/group": group["groupName"]})
        elif kind == "Kafka":
            strimzi = {"strimzi.io/cluster": meta["name"]}
            add(f"{meta['name']}-kafka", {**strimzi, "strimzi.io/kind": "Kafka",
                                          "strimzi.io/name": f"{meta['name']}-kafka"})
            add(f"{meta['name']}-entity-operator", {**strimzi, "strimzi.io/kind": "Kafka",
                                                    "strimzi.io/name": f"{meta['name']}-entity-operator"})
            add(f"{meta['name']}-kafka-exporter", {**strimzi, "strimzi.io/kind": "Kafka",
                                                   "strimzi.io/name": f"{meta['name']}-kafka-exporter"})
        elif kind == "Job":
            add(meta["name"], {**common, **_template_labels(spec.get("template")), "job-name": meta["name"]})
    return found


def operator_policies(docs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The ingress NetworkPolicy Strimzi creates for each Kafka: every listener port open to its
    `networkPolicyPeers` (to everyone when it has none), the cluster's own ports to the cluster's pods."""
    made = []
    for doc in docs:
        if doc["kind"] != "Kafka":
            continue
        name = doc["metadata"]["name"]
        cluster_pods = {"podSelector": {"matchLabels": {"strimzi.io/cluster": name}}}
        ingress = [{"from": [cluster_pods], "ports": [{"port": 9090}, {"port": 9091}]}]
        for listener in doc["spec"]["kafka"]["listeners"]:
            rule: dict[str, Any] = {"ports": [{"port": listener["port"]}]}
            if listener.get("networkPolicyPeers"):
                rule["from"] = listener["networkPolicyPeers"]
            ingress.append(rule)
        made.append({"kind": "NetworkPolicy", "metadata": {"name": f"{name}-network-policy-kafka",
                                                           "namespace": namespace},
                     "spec": {"podSelector": {"matchLabels": {"strimzi.io/name": f"{name}-kafka"}},
                              "policyTypes": ["Ingress"], "ingress": ingress}})
    return made
