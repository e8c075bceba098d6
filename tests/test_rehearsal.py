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
        if not key.startswith(("high-availability.type", "metrics.reporter.prom.port")):
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
