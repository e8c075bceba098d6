"""Offline validation of deploy/k8s and monitoring/: real kustomize, kubeconform and promtool (`make tools`).

Each check is also shown to fail on a deliberately broken manifest, rule or dashboard query.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from deploy import generate, validate
from deploy.schemas import bundle, crd_schemas
from monitoring import exported
from monitoring import metrics as names
from monitoring.dashboards import all_dashboards, queries
from monitoring.promql import metric_names
from streaming.topics import TopicsConfig

RULES_DIR = validate.ROOT / "monitoring" / "rules"
RULES = yaml.safe_load((RULES_DIR / "reaseq.rules.yml").read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: validate.load_yaml_docs(validate.kustomize_build(validate.K8S / "overlays" / o))
            for o in validate.OVERLAYS}


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
        workers = [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
        return [cluster["headGroupSpec"]["template"]["spec"], *workers]
    if doc["kind"] == "FlinkDeployment":
        return [spec["podTemplate"]["spec"]]
    if doc["kind"] == "Job":
        return [spec["template"]["spec"]]
    return []


def test_generated_files_are_up_to_date(ml100k):
    files = generate.outputs(known_items=lambda: [str(i) for i in ml100k.items.item_id])
    assert not generate.stale(files), "run `python -m deploy.generate`"


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_overlay_renders_and_every_object_matches_its_schema(overlay, rendered):
    docs = rendered[overlay]
    checked, problems = validate.kubeconform(yaml.safe_dump_all(docs))
    assert not problems, problems
    assert checked == len(docs) > 20


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_overlay_contents(overlay, rendered):
    docs = rendered[overlay]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"reaseq"}
    # Kafka in KRaft mode: a node pool with both roles, a topic for every topic the job uses
    pool = _one(docs, "KafkaNodePool")
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    expected = TopicsConfig().specs()
    assert set(topics) == {t.name for t in expected}
    for spec in expected:
        policy = topics[spec.name]["config"].get("cleanup.policy", "delete")
        assert policy == spec.configs.get("cleanup.policy", "delete")
    if overlay == "dev":
        assert {n: t["partitions"] for n, t in topics.items()} == {t.name: t.partitions for t in expected}
    # the Serve config in the RayService is the project's Serve YAML, made fit for the cluster
    serve = yaml.safe_load(_one(docs, "RayService", "reaseq-serve")["spec"]["serveConfigV2"])
    local = yaml.safe_load(generate.SERVE_CONFIG.read_text())
    assert [a["import_path"] for a in serve["applications"]] == [a["import_path"] for a in local["applications"]]
    gpus = {d["ray_actor_options"]["num_gpus"] for a in serve["applications"] for d in a["deployments"]}
    assert gpus == ({0} if overlay == "dev" else {1})
    assert {a["args"]["device"] for a in serve["applications"]} == ({"cpu"} if overlay == "dev" else {"cuda"})
    assert all("autoscaling_config" in d for a in serve["applications"] for d in a["deployments"])
    # the job: Python entry point, savepoint upgrades, autoscaler and Prometheus reporter on
    flink = _one(docs, "FlinkDeployment")
    assert flink["spec"]["job"]["upgradeMode"] == "savepoint"
    assert flink["spec"]["job"]["args"][:2] == ["-pym", "streaming.job"]
    conf = flink["spec"]["flinkConfiguration"]
    assert conf["job.autoscaler.enabled"] == "true"
    assert "PrometheusReporter" in conf["metrics.reporter.prom.factory.class"]
    # every workload container: requests and limits, non-root, no privilege escalation
    for doc in docs:
        for pod in _pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                if doc["kind"] == "RayService" or "resources" in container:
                    assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]
    kinds = {d["kind"] for d in docs}
    assert {"PodDisruptionBudget", "NetworkPolicy", "PodMonitor", "PrometheusRule"} <= kinds


def test_prod_kafka_is_tls_only_and_the_job_may_only_read_events_and_write_outputs(rendered):
    docs = rendered["prod"]
    listeners = _one(docs, "Kafka")["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "tls" for lst in listeners)
    assert _one(docs, "Kafka")["spec"]["kafka"]["authorization"]["type"] == "simple"
    acls = _one(docs, "KafkaUser", "reaseq-job")["spec"]["authorization"]["acls"]
    topics = TopicsConfig()
    by_topic = {a["resource"]["name"]: set(a["operations"]) for a in acls if a["resource"]["type"] == "topic"}
    assert by_topic == {topics.events: {"Read", "Describe"}, topics.user_state: {"Write", "Describe"},
                        topics.user_scores: {"Write", "Describe"}, topics.dead_letter: {"Write", "Describe"}}
    job = _one(docs, "FlinkDeployment")
    assert job["spec"]["job"]["args"][-1].startswith("/opt/reaseq/config-tls/")
    gpu = _one(docs, "RayService", "reaseq-serve")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _one(docs, "RayService", "reaseq-llm")


@pytest.mark.parametrize("breakage", ["misspelled field", "wrong type", "unknown kind", "missing required"])
def test_a_broken_manifest_fails_validation(breakage, rendered):
    docs = copy.deepcopy(rendered["dev"])
    if breakage == "misspelled field":
        flink = _one(docs, "FlinkDeployment")
        flink["spec"]["jobManger"] = flink["spec"].pop("jobManager")
    elif breakage == "wrong type":
        next(d for d in docs if d["kind"] == "KafkaTopic")["spec"]["partitions"] = "four"
    elif breakage == "unknown kind":
        docs.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    else:
        del _one(docs, "NetworkPolicy", "serve-from-job")["spec"]["podSelector"]
    _, problems = validate.kubeconform(yaml.safe_dump_all(docs))
    assert problems, f"{breakage} was not caught"


def test_a_broken_kustomization_fails(tmp_path):
    overlay = tmp_path / "overlays" / "broken"
    shutil.copytree(validate.K8S / "base", tmp_path / "base")
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text("resources: [../../base]\npatches: [{path: missing.yaml}]\n")
    with pytest.raises(ValueError, match="kustomize build"):
        validate.kustomize_build(overlay)


def test_rules_pass_promtool_check_and_unit_tests():
    check = validate.promtool("check", "rules", str(RULES_DIR / "reaseq.rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    test = validate.promtool("test", "rules", str(RULES_DIR / "reaseq.rules.test.yml"))
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for g in RULES["groups"] for r in g["rules"] if "alert" in r}
    tested = (RULES_DIR / "reaseq.rules.test.yml").read_text()
    assert all(f"alertname: {a}" in tested for a in alerts), "every alert has a unit test"


def test_a_broken_rule_fails(tmp_path):
    rules = copy.deepcopy(RULES)
    alert = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ReaseqDeadLetterRateHigh")
    alert["expr"] = "reaseq:dead_letter_ratio:rate5m > 0.5"  # a threshold the unit tests pin
    (tmp_path / "reaseq.rules.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(RULES_DIR / "reaseq.rules.test.yml", tmp_path)
    assert validate.promtool("test", "rules", str(tmp_path / "reaseq.rules.test.yml")).returncode != 0
    alert["expr"] = "sum(rate(reaseq_events_in[5m]) >"  # not PromQL
    (tmp_path / "reaseq.rules.yml").write_text(yaml.safe_dump(rules))
    assert validate.promtool("check", "rules", str(tmp_path / "reaseq.rules.yml")).returncode != 0


def test_rules_and_dashboards_read_only_exported_series():
    recorded = validate.recorded(RULES)
    assert validate.check_queries(validate.rule_exprs(RULES), recorded) == {}
    for uid, dash in all_dashboards().items():
        assert validate.check_queries(queries(dash), recorded) == {}, uid
        on_disk = json.loads((validate.ROOT / "monitoring" / "dashboards" / f"{uid}.json").read_text())
        assert validate.check_queries(queries(on_disk), recorded) == {}


def test_dashboard_structure():
    for dash in all_dashboards().values():
        panels = dash["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] != "row":
                assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        titles = {p["title"] for p in panels if p["type"] == "row"}
        assert {"Ingestion", "Latency", "Model serving", "GPU", "Dead letters"} <= titles


@pytest.mark.parametrize("expr", [
    "sum(rate(flink_taskmanager_job_task_operator_reaseq_event_in[5m]))",    # misspelled job metric
    "sum(rate(ray_reaseq_ranker_batches[5m]))",                               # a Ray counter without _total
    'sum({__name__=~"flink_taskmanager_job_task_operator_reaseq_dead_letter_.+"})',
    "reaseq:no_such_rule:rate5m",
])
def test_a_broken_dashboard_query_fails(expr):
    dash = copy.deepcopy(all_dashboards()["reaseq-pipeline"])
    next(p for p in dash["panels"] if p["type"] != "row")["targets"][0]["expr"] = expr
    assert validate.check_queries(queries(dash), validate.recorded(RULES))


def test_exported_names_follow_the_engines_conventions():
    assert exported.flink(names.EVENTS_IN) == "flink_taskmanager_job_task_operator_reaseq_events_in"
    assert exported.serve(names.RANKER_BATCHES) == ["ray_reaseq_ranker_batches_total"]
    assert "ray_reaseq_ranker_batch_seconds_bucket" in exported.serve(names.RANKER_BATCH_SECONDS)
    assert exported.known("flink_taskmanager_job_task_operator_reaseq_dead_letters_unknown_item")
    assert not exported.known("flink_taskmanager_job_task_operator_reaseq_dead_letters_")


def test_promql_metric_names():
    found = metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m]))) > on() group_left '
                         'b:c and absent(d offset 5m) or {__name__=~"e_.+"} / $__range')
    assert found.exact == {"a_bucket", "b:c", "d"} and found.patterns == {"e_.+"}
    with pytest.raises(ValueError):
        metric_names("sum(a{b=\"c\")")


def test_schema_building():
    crd = {"spec": {"group": "example.com", "names": {"kind": "Widget"}, "versions": [
        {"name": "v1", "storage": True, "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"size": {"x-kubernetes-int-or-string": True}}}}}}},
        {"name": "v1alpha1", "storage": False, "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    schemas = crd_schemas(crd)
    assert list(schemas) == ["example.com/widget_v1.json"]
    spec = schemas["example.com/widget_v1.json"]["properties"]["spec"]
    assert spec["additionalProperties"] is False and "oneOf" in spec["properties"]["size"]
    defs = {"A": {"properties": {"b": {"$ref": "#/$defs/B"}}}, "B": {"type": "string"}, "C": {}}
    out = bundle({"$id": "x", "properties": {"a": {"$ref": "/api/_definitions.json#/$defs/A"}}}, defs)
    assert set(out["$defs"]) == {"A", "B"} and out["properties"]["a"]["$ref"] == "#/$defs/A"


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_every_configmap_and_secret_a_pod_refers_to_exists(overlay, rendered):
    docs = rendered[overlay]
    assert validate.unresolved_references(docs, validate.external_secrets()) == []
    flink = _one(docs, "FlinkDeployment")
    mounted = {v["configMap"]["name"] for v in flink["spec"]["podTemplate"]["spec"]["volumes"] if "configMap" in v}
    assert any(name.startswith("reaseq-job-config-") for name in mounted)  # the hashed name kustomize generated
    broken = copy.deepcopy(docs)
    next(d for d in broken if d["kind"] == "ConfigMap" and d["metadata"]["name"] in mounted)["metadata"]["name"] = \
        "reaseq-job-config"  # what the pod mounted before the name reference was configured
    assert any("reaseq-job-config" in p for p in validate.unresolved_references(broken, validate.external_secrets()))
    assert validate.unresolved_references(docs)  # the object-storage Secret is the cluster owner's to create


def test_the_job_runs_with_the_clusters_flink_configuration(rendered):
    from streaming.config import StreamConfig
    from streaming.kafka_io import location_uri

    job = StreamConfig.from_json((validate.K8S / "base" / "flink" / "job-config.json").read_text())
    assert job.flink_cluster == "application" and job.extra_flink_config == {} and job.restore_from is None
    conf = _one(rendered["dev"], "FlinkDeployment")["spec"]["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"].startswith("s3://") and conf["restart-strategy.type"] != "fixed-delay"
    with pytest.raises(ValueError, match="checkpoint_dir"):
        StreamConfig(bootstrap_servers="k:9092", serve_url="http://s/rank", known_items=["1"],
                     flink_cluster="application", checkpoint_dir="s3://reaseq-state/checkpoints")
    assert location_uri("s3://reaseq-state/checkpoints") == "s3://reaseq-state/checkpoints"  # never a local folder
    assert location_uri("ckpt").startswith("file:///") and location_uri("ckpt").endswith("/ckpt")


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_disruption_budgets_count_pods_their_controllers_cannot_scale(overlay, rendered):
    """RayCluster workers and native-mode TaskManagers have no scale subresource of their own: only an integer
    minAvailable protects them."""
    for pdb in (d for d in rendered[overlay] if d["kind"] == "PodDisruptionBudget"):
        assert "maxUnavailable" not in pdb["spec"] and isinstance(pdb["spec"]["minAvailable"], int), pdb


def test_the_flink_configuration_opens_what_flink_needs_on_java_17(rendered):
    """The operator's configuration replaces the distribution's conf/config.yaml, whose Java 17 module flags
    the job needs at submission: the FlinkDeployment must carry every one of them."""
    import pyflink

    default = yaml.safe_load((validate.Path(pyflink.__file__).parent / "conf" / "config.yaml").read_text())
    needed = set(default["env"]["java"]["opts"]["all"].split())
    for overlay in validate.OVERLAYS:
        conf = _one(rendered[overlay], "FlinkDeployment")["spec"]["flinkConfiguration"]
        assert needed <= set(conf.get("env.java.opts.all", "").split()), overlay


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_prometheus_finds_the_rules_and_monitors_and_kuberay_fields_are_current(overlay, rendered):
    """kube-prometheus-stack selects by its release label; KubeRay's unhealthy-threshold fields are deprecated."""
    docs = rendered[overlay]
    for doc in docs:
        if doc["kind"] in ("PodMonitor", "PrometheusRule"):
            assert doc["metadata"]["labels"].get("release") == "kube-prometheus-stack", doc["metadata"]["name"]
        if doc["kind"] == "RayService":
            assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(doc["spec"])


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_network_policies_name_no_other_namespace(overlay, rendered):
    """Operators and Prometheus live where the cluster owner put them: policies select labelled namespaces
    (kube-system, where every cluster runs its DNS, is the one named)."""
    for policy in (d for d in rendered[overlay] if d["kind"] == "NetworkPolicy"):
        text = yaml.safe_dump(policy["spec"]).replace("kubernetes.io/metadata.name: kube-system", "")
        assert "kubernetes.io/metadata.name" not in text, policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", validate.OVERLAYS)
def test_every_container_runs_on_a_read_only_root_filesystem(overlay, rendered):
    """Our containers write only to volumes (the rehearsal runs them so); the rest of the image is read-only."""
    checked = 0
    for doc in rendered[overlay]:
        for pod in _pod_specs(doc):
            for container in pod.get("initContainers", []) + pod["containers"]:
                where = f"{doc['kind']}/{doc['metadata']['name']} {container['name']}"
                assert container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, where
                checked += 1
    assert checked >= (3 if overlay == "dev" else 8)
