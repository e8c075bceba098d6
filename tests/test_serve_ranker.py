"""Ranker scoring (pure) and the real Ray Serve deployment on 127.0.0.1: batching, versions, retries."""

from __future__ import annotations

import concurrent.futures as futures
import json

import pytest

from inference.serve.client import RankerClient, Rejected, RetryLater
from inference.serve.scoring import LoadedRanker, check_ranker, score_users
from tests.helpers import http_server


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, ml100k_sequences):
    import os

    from ranking.experiment import train_and_save
    from tests.helpers import TINY_RANKER

    root = tmp_path_factory.mktemp("artifacts")
    os.environ["REASEQ_ARTIFACTS_DIR"] = str(root)
    run = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=root)
    yield run.artifact
    os.environ.pop("REASEQ_ARTIFACTS_DIR", None)


def test_scores_exclude_seen_items_and_unknown_ids_are_skipped(tiny_artifact):
    ranker = LoadedRanker.load(str(tiny_artifact.path), "cpu")
    users = [{"user_id": "a", "recent_items": ["1", "2", "3"]},
             {"user_id": "b", "recent_items": ["1", "no-such-item"]},
             {"user_id": "c", "recent_items": []}]
    results = score_users(ranker, users, top_k=5)
    assert [r["user_id"] for r in results] == ["a", "b", "c"]
    assert not {"1", "2", "3"} & set(results[0]["items"])
    assert all(len(r["items"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True) for r in results)
    assert results[1]["items"] == score_users(ranker, [{"user_id": "b", "recent_items": ["1"]}], 5)[0]["items"]


def test_client_gives_up_with_a_clear_error_when_nothing_listens():
    from inference.serve.local import free_port

    client = RankerClient(f"http://127.0.0.1:{free_port()}/rank", timeout_s=0.2, retries=2, backoff_s=0.01)
    with pytest.raises(RetryLater, match="failed after 3 attempts"):
        client.score([{"user_id": "a", "recent_items": []}])


GOOD_REPLY = {"model_version": "v1", "results": [{"user_id": "a", "items": ["1"], "scores": [0.5]}]}


@pytest.mark.parametrize(("status", "body", "error"), [
    (503, b"overloaded", RetryLater),
    (500, b"model error", RetryLater),
    (429, b"slow down", RetryLater),
    (400, b'{"error": "users.0.user_id: Input should be a valid string"}', Rejected),
    (404, b"no route", Rejected),
    (200, b"<html>not json</html>", Rejected),
    (200, b'{"model_version": "v1"}', Rejected),
    (200, b'{"model_version": "v1", "results": []}', Rejected),
    (200, b'{"model_version": "v1", "results": [{"user_id": "a"}]}', Rejected),
    (200, b'{"error": "bad"}', Rejected),
    (200, json.dumps(GOOD_REPLY).encode(), None),
])
def test_client_tells_retry_later_from_rejected(status, body, error):
    with http_server(lambda _request: (status, body)) as url:
        client = RankerClient(url, timeout_s=2.0, retries=1, backoff_s=0.01)
        if error is None:
            assert client.score([{"user_id": "a", "recent_items": []}]) == GOOD_REPLY
            assert client.probe() is False  # an empty probe gets one result for no users: malformed
        else:
            with pytest.raises(error):
                client.score([{"user_id": "a", "recent_items": []}])


def test_client_times_out_as_retry_later():
    import time

    slow = http_server(lambda _request: (time.sleep(1.0), (200, b"{}"))[1])
    with slow as url, pytest.raises(RetryLater, match="timed out"):
        RankerClient(url, timeout_s=0.2, retries=0).score([{"user_id": "a", "recent_items": []}])


def test_health_check_runs_a_forward_pass_and_fails_on_a_broken_model(tiny_artifact):
    import torch

    ranker = LoadedRanker.load(str(tiny_artifact.path), "cpu")
    check_ranker(ranker)
    with torch.no_grad():
        for parameter in ranker.model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="no finite score"):
        check_ranker(ranker)


@pytest.mark.slow
def test_real_serve_batches_requests_and_survives_a_killed_replica(tiny_artifact):
    import ray

    from inference.serve.local import LocalServe

    with LocalServe(str(tiny_artifact.path)) as served:
        client = RankerClient(served.url, timeout_s=10.0, retries=6, backoff_s=0.5)
        users = [{"user_id": str(i), "recent_items": [str(j) for j in range(1, 1 + i % 30)]} for i in range(40)]
        response = client.score(users, top_k=3)
        assert response["model_version"] == tiny_artifact.version
        assert [r["user_id"] for r in response["results"]] == [u["user_id"] for u in users]
        direct = score_users(LoadedRanker.load(str(tiny_artifact.path), "cpu"), users, 3)
        assert [r["items"] for r in response["results"]] == [r["items"] for r in direct]
        # the same users one event later: the replica steps its cached states; a full pass agrees
        later = [{**u, "recent_items": u["recent_items"] + ["50"]} for u in users]
        stepped = client.score(later, top_k=3)["results"]
        full = score_users(LoadedRanker.load(str(tiny_artifact.path), "cpu", state_cache_users=0), later, 3)
        assert [r["items"] for r in stepped] == [r["items"] for r in full]
        assert [s for r in stepped for s in r["scores"]] == pytest.approx([s for r in full for s in r["scores"]],
                                                                         abs=1e-4)

        with futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: client.score(users[n:n + 5]), range(0, 40, 5)))
        assert [r["user_id"] for a in answers for r in a["results"]] == [u["user_id"] for u in users]

        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "Ranker" in a["name"]]
        assert replicas, "no Ranker replica actor found"
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        after = client.score(users[:4])  # retried with backoff until Serve has replaced the replica
        assert [r["user_id"] for r in after["results"]] == ["0", "1", "2", "3"]


def test_a_serve_start_that_fails_leaves_no_ray_behind(tmp_path):
    """A failed start must not leave Ray initialised: the next LocalServe (another test, a retry) would refuse."""
    import ray
    import yaml

    from inference.serve.local import SERVE_CONFIG, LocalServe, load_serve_config

    config = load_serve_config()
    config["applications"] = [app for app in config["applications"] if app["name"] != "ranker"]
    broken = tmp_path / "serve.yaml"
    broken.write_text(yaml.safe_dump(config))
    assert broken != SERVE_CONFIG
    with pytest.raises(ValueError, match="no application 'ranker'"):
        LocalServe("unused", num_cpus=1, config_path=broken).start()
    assert not ray.is_initialized()
