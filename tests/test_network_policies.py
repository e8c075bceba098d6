"""The rendered NetworkPolicies, evaluated by Kubernetes' rules (deploy/netpol.py): each overlay's pods reach
exactly what they need — ingress and egress — and nothing else reaches out."""

from __future__ import annotations

import copy

import pytest

from deploy import netpol, validate

NAMESPACE = "reaseq"
NAMESPACE_LABELS = {"kubernetes.io/metadata.name": NAMESPACE}
DNS = netpol.Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"},
                      {"kubernetes.io/metadata.name": "kube-system"})
API_SERVER = netpol.Endpoint("kubernetes-api", ip="172.20.0.1")
S3 = netpol.Endpoint("object storage", ip="52.216.10.1")
PYPI = netpol.Endpoint("pypi.org", ip="151.101.0.223")
OPERATOR = netpol.Endpoint("flink-operator", "operators", {"app": "flink-kubernetes-operator"},
                           {"reaseq.io/operators": "true"})
PROMETHEUS = netpol.Endpoint("prometheus", "monitoring", {"app": "prometheus"}, {"reaseq.io/monitoring": "true"})
DEV_S3 = netpol.Endpoint("object-storage", "reaseq-storage", {"app": "s3"}, {"reaseq.io/object-storage": "true"})
OUTSIDER = netpol.Endpoint("other", "default", {"app": "x"}, {"kubernetes.io/metadata.name": "default"})


@pytest.fixture(scope="module")
def world() -> dict[str, tuple[list[dict], dict[str, netpol.Endpoint]]]:
    """Per overlay: every NetworkPolicy that would be in force (ours and Strimzi's) and the pods."""
    out = {}
    for overlay in validate.OVERLAYS:
        docs = validate.load_yaml_docs(validate.kustomize_build(validate.K8S / "overlays" / overlay))
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"] + netpol.operator_policies(docs, NAMESPACE)
        out[overlay] = (policies, netpol.pods(docs, NAMESPACE, NAMESPACE_LABELS))
    return out


def _allowed(world, overlay: str, source, destination, port: int, protocol: str = "TCP") -> bool:
    policies, pods = world[overlay]
    def pick(end):  # a pod by name, or the first whose name starts with it (a worker group of any name)
        if not isinstance(end, str):
            return end
        return pods.get(end) or next(pod for name, pod in pods.items() if name.startswith(end))

    return netpol.connection_allowed(policies, pick(source), pick(destination), port, protocol)


# (source, destination, port): what the system needs in both overlays
NEEDED = [
    ("reaseq-job-taskmanager", "reaseq-serve-head", 8000),
    ("reaseq-job-jobmanager", "reaseq-job-taskmanager", 6122),
    ("reaseq-job-taskmanager", "reaseq-job-jobmanager", 6123),
    ("reaseq-job-jobmanager", API_SERVER, 443),
    ("reaseq-serve-head", "reaseq-serve-worker", 6379),
    ("reaseq-serve-head", API_SERVER, 6443),
    ("reaseq-entity-operator", "reaseq-kafka", 9091),
    ("reaseq-entity-operator", API_SERVER, 443),
    (OPERATOR, "reaseq-job-jobmanager", 8081),
    (OPERATOR, "reaseq-serve-head", 8265),
    (PROMETHEUS, "reaseq-job-taskmanager", 9249),
    (PROMETHEUS, "reaseq-kafka", 9404),
]
# what must stay closed in both overlays
DENIED = [
    ("reaseq-serve-head", PYPI, 443),            # Serve starts from the image: no way out
    ("reaseq-serve-head", S3, 443),
    ("reaseq-serve-head", "reaseq-kafka", 9092),
    ("reaseq-kafka", PYPI, 443),
    ("reaseq-job-taskmanager", PYPI, 80),
    ("reaseq-job-taskmanager", "reaseq-kafka-exporter", 9404),
    (OUTSIDER, "reaseq-serve-head", 8000),
    (OUTSIDER, "reaseq-kafka", 9092),
    ("reaseq-serve-head", "reaseq-job-jobmanager", 8081),
]


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
@pytest.mark.parametrize(("source", "destination", "port"), NEEDED)
def test_what_the_system_needs_is_allowed(world, overlay, source, destination, port):
    assert _allowed(world, overlay, source, destination, port)


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
@pytest.mark.parametrize(("source", "destination", "port"), DENIED)
def test_what_it_does_not_need_is_denied(world, overlay, source, destination, port):
    assert not _allowed(world, overlay, source, destination, port)


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_every_pod_resolves_names_and_egress_is_denied_by_default(world, overlay):
    for name in world[overlay][1]:
        assert _allowed(world, overlay, name, DNS, 53, "UDP"), name
        assert not _allowed(world, overlay, name, netpol.Endpoint("anywhere", ip="8.8.8.8"), 25), name


def test_the_job_reaches_kafka_on_the_listener_each_overlay_has(world):
    assert _allowed(world, "dev", "reaseq-job-taskmanager", "reaseq-kafka", 9092)
    assert _allowed(world, "prod", "reaseq-job-taskmanager", "reaseq-kafka", 9093)
    assert not _allowed(world, "prod", "reaseq-job-taskmanager", "reaseq-kafka", 9092)  # TLS only in prod


def test_the_jobs_checkpoints_reach_each_overlays_object_storage(world):
    assert _allowed(world, "prod", "reaseq-job-taskmanager", S3, 443)
    assert _allowed(world, "dev", "reaseq-job-taskmanager", DEV_S3, 8333)
    assert not _allowed(world, "prod", "reaseq-job-taskmanager", DEV_S3, 8333)


def test_only_the_weights_job_reaches_pypi_and_only_the_knowledge_job_reaches_the_llm(world):
    pods = world["prod"][1]
    knowledge_job = netpol.Endpoint("knowledge", NAMESPACE, {"reaseq.io/knowledge-job": "true"}, NAMESPACE_LABELS)
    assert _allowed(world, "prod", "reaseq-llm-weights", PYPI, 443)
    assert not _allowed(world, "prod", "reaseq-llm-weights", "reaseq-kafka", 9093)
    # the job's pods reach any address on 443 (its object storage's, until narrowed: README, Deploy)
    reach_out = [n for n in pods if _allowed(world, "prod", n, PYPI, 443) and not n.startswith("reaseq-job-")]
    assert reach_out == ["reaseq-llm-weights"]
    assert _allowed(world, "prod", knowledge_job, "reaseq-llm-worker", 8000)
    assert not _allowed(world, "prod", "reaseq-job-taskmanager", "reaseq-llm-worker", 8000)
    assert not _allowed(world, "prod", "reaseq-llm-worker", PYPI, 443)


def test_a_policy_that_opens_egress_wide_fails_the_checks(world):
    """The checks above are not vacuous: one extra allow-all egress rule for Serve breaks them."""
    policies, pods = world["dev"]
    allow_all = {"kind": "NetworkPolicy", "metadata": {"name": "oops"},
                 "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    opened = [*copy.deepcopy(policies), allow_all]
    assert netpol.connection_allowed(opened, pods["reaseq-serve-head"], PYPI, 443)
    without_dns = [p for p in policies if p["metadata"]["name"] != "egress-dns"]
    assert not netpol.connection_allowed(without_dns, pods["reaseq-serve-head"], DNS, 53, "UDP")


def test_selector_and_port_semantics():
    assert netpol.selects({}, {"a": "1"}) and netpol.selects(None, {})
    assert netpol.selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"})
    assert not netpol.selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
    assert not netpol.selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"})
    assert netpol.port_matches([{"port": 9000, "endPort": 9010}], 9005, "TCP")
    assert not netpol.port_matches([{"port": 53, "protocol": "UDP"}], 53, "TCP")
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    assert netpol.peer_matches(block, NAMESPACE, netpol.Endpoint("x", ip="10.2.0.1"))
    assert not netpol.peer_matches(block, NAMESPACE, netpol.Endpoint("x", ip="10.1.0.1"))
    # a bare podSelector matches pods of the policy's own namespace only
    assert not netpol.peer_matches({"podSelector": {}}, NAMESPACE, OUTSIDER)
