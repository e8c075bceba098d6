"""`reaseq deploy rehearse`: the job and Serve run from the rendered overlay inside the built images.

The pure parts (what the cluster's configuration becomes here, which locations count as S3, what fails a
rehearsal) always run; the rehearsals themselves need the images (`make images`, which `make test` runs
where buildah is installed) and skip with that reason otherwise."""

from __future__ import annotations

import shutil

import pytest

from deploy import images, rehearse


def _image_built(image: images.Image) -> bool:
    return shutil.which("buildah") is not None and images.image_exists(image.tag)


def test_the_cluster_configuration_is_the_flinkdeployments_with_only_kubernetes_replaced():
    flink, job_config = rehearse.rendered_flink("dev")
    conf = rehearse.cluster_configuration(flink, "http://127.0.0.1:9", {"rpc": 1, "rest": 2, "metrics": 3})
    spec = flink["spec"]
    for key, value in spec["flinkConfiguration"].items():
        if not key.startswith(("high-availability.type", "metrics.reporter.prom.port", "s3.endpoint")):
            assert conf[key] == str(value), key  # everything the FlinkDeployment says, unchanged
    assert conf["high-availability.type"] == "none" and conf["s3.endpoint"] == "http://127.0.0.1:9"
    taskmanager_mb = rehearse.memory_mb(spec["taskManager"]["resource"]["memory"])
    assert conf["taskmanager.memory.process.size"] == f"{taskmanager_mb}m"
    assert job_config["flink_cluster"] == "application" and "checkpoint_dir" not in job_config
    assert rehearse.memory_mb("1536m") == 1536 and rehearse.memory_mb("2Gi") == 2048


def test_a_checkpoint_location_that_is_not_s3_fails_the_rehearsal():
    assert rehearse.s3_location("s3://reaseq-state/checkpoints") == ("reaseq-state", "checkpoints")
    for local in ("file:///opt/flink/s3%3A/reaseq-state/checkpoints", "/tmp/checkpoints", "s3:/reaseq-state"):
        with pytest.raises(ValueError, match="not an s3:// location"):
            rehearse.s3_location(local)
    found = {"checkpoint_dir": "s3://reaseq-state/checkpoints", "s3_metadata": ["checkpoints/x/chk-1/_metadata"],
             "first_checkpoint": "s3://reaseq-state/checkpoints/x/chk-1",
             "restored_from": "file:/opt/flink/s3%3A/reaseq-state/checkpoints/x/chk-1",
             "checkpoint_after_restore": "s3://reaseq-state/checkpoints/x/chk-3"}
    assert rehearse.job_problems(found) == [
        "restored_from is 'file:/opt/flink/s3%3A/reaseq-state/checkpoints/x/chk-1', not under "
        "s3://reaseq-state/checkpoints"]


def test_serve_findings_fail_without_answers_or_with_a_network():
    answered = {"rank": [200, {"results": [{"items": ["1"]}]}], "behavior": [200, {"results": [{"items": ["2"]}]}],
                "outside_reachable": False, "interfaces": ["lo"]}
    assert rehearse.serve_problems(answered) == []
    assert rehearse.serve_problems({**answered, "behavior": [500, {}]})
    assert rehearse.serve_problems({**answered, "outside_reachable": True})
    assert rehearse.serve_problems({**answered, "interfaces": ["eth0", "lo"]})


@pytest.mark.slow
@pytest.mark.skipif(not _image_built(images.FLINK), reason="the Flink image is not built (make images)")
def test_the_job_checkpoints_to_s3_and_restores_after_a_taskmanager_kill(tmp_path):
    found = rehearse.rehearse_job("dev", work=tmp_path, events=100, timeout_s=240)
    assert rehearse.job_problems(found) == [], found
    assert found["restored_checkpoint_id"] >= found["checkpoint_id"]


@pytest.mark.slow
@pytest.mark.skipif(not _image_built(images.RAY), reason="the Ray image is not built (make images)")
def test_serve_starts_from_the_rendered_config_with_no_network():
    found = rehearse.rehearse_serve("dev", timeout_s=420)
    assert rehearse.serve_problems(found) == [], found.get("serve_log_tail")


def test_a_mount_path_follows_the_images_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "opt/reaseq/venv/pyflink/log").mkdir(parents=True)
    (root / "opt/flink").symlink_to("/opt/reaseq/venv/pyflink")
    (root / "opt/reaseq/venv/pyflink/conf").symlink_to("../pyflink/log")
    assert rehearse.resolve_in_image(root, "/opt/flink/log") == "/opt/reaseq/venv/pyflink/log"
    assert rehearse.resolve_in_image(root, "/opt/flink/conf") == "/opt/reaseq/venv/pyflink/log"
    assert rehearse.resolve_in_image(root, "/tmp") == "/tmp"


def test_the_pod_filesystem_is_read_from_the_rendered_pod():
    flink, _ = rehearse.rendered_flink("dev")
    filesystem = rehearse.pod_filesystem(flink["spec"]["podTemplate"]["spec"], "flink-main-container")
    assert filesystem.read_only_root and (filesystem.uid, filesystem.gid) == (9999, 9999)
    assert set(filesystem.empty_dirs) == {"/tmp", "/opt/flink/log", "/opt/flink/artifacts"}
    worker = rehearse.rendered_rayservice("dev")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    ray = rehearse.pod_filesystem(worker["spec"], "ray-worker")
    assert ray.read_only_root and ray.uid == 1000 and set(ray.empty_dirs) == {"/tmp", "/home/ray"}


def test_llm_findings_fail_without_a_filled_volume_or_an_answer():
    filled = {"job_exit": 0, "check_exit": 0, "model_file_bytes": 1_117_320_768, "answer": "George Lucas",
              "model_source": "/models/knowledge-llm/x.gguf"}
    assert rehearse.llm_problems(filled) == []
    assert rehearse.llm_problems({**filled, "job_exit": 1})
    assert rehearse.llm_problems({**filled, "check_exit": 1})
    assert rehearse.llm_problems({**filled, "model_file_bytes": None})
    assert rehearse.llm_problems({**filled, "answer": ""})
    job, worker, source = rehearse.rendered_llm("prod")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["reaseq", "knowledge", "weights"]
    assert source.startswith("/models/knowledge-llm/") and worker["initContainers"][0]["command"][-1] == "--check"


@pytest.mark.slow
@pytest.mark.skipif(not _image_built(images.FLINK), reason="the Flink image is not built (make images)")
def test_a_pod_process_writes_only_to_its_volumes(tmp_path):
    """The rehearsal's read-only root is real: a write outside the pod's emptyDirs fails, inside succeeds —
    and the same write succeeds when the pod does not ask for a read-only root."""
    def run(read_only: bool) -> str:
        filesystem = rehearse.PodFilesystem(9999, 9999, read_only, {"/opt/flink/log": "log"})
        log = tmp_path / f"out-{read_only}.log"
        process = rehearse.PodProcess(images.FLINK, ["sh", "-c", "touch /opt/flink/log/ok && echo log-ok; "
                                                     "touch /tmp/outside && echo tmp-ok; id -u"],
                                      filesystem, {}, {}, log, tmp_path / f"volumes-{read_only}")
        process.process.wait(120)
        process.close()
        return log.read_text()

    read_only = run(True)
    assert "log-ok" in read_only and "tmp-ok" not in read_only and "Read-only file system" in read_only
    assert "9999" in read_only
    assert "tmp-ok" in run(False)


@pytest.mark.slow
@pytest.mark.skipif(not _image_built(images.RAY), reason="the Ray image is not built (make images)")
def test_the_llm_weights_job_fills_the_volume_the_workers_check_and_load(tmp_path):
    found = rehearse.rehearse_llm("prod", work=tmp_path, timeout_s=1500)
    assert rehearse.llm_problems(found) == [], found
    assert "lucas" in found["answer"].lower()
