"""Start Ray and the Serve apps on this machine (127.0.0.1, free port) from the Serve YAML, and stop them."""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

SERVE_CONFIG = Path(__file__).with_name("serve_config.yaml")
log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_serve_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


class LocalServe:
    """Context manager: a local Ray instance with the Ranker app (`.url`) and, given a behaviour
    artifact, the BehaviorReasoner app (`.behavior_url`)."""

    def __init__(self, artifact: str, num_cpus: int = 2, port: int | None = None,
                 config_path: Path = SERVE_CONFIG, overrides: dict[str, Any] | None = None,
                 behavior_artifact: str | None = None) -> None:
        self.artifact = artifact
        self.behavior_artifact = behavior_artifact
        self.behavior_url = ""
        self.behavior_version = ""
        self.num_cpus = num_cpus
        self.port = port or free_port()
        self.config = load_serve_config(config_path)
        self.overrides = overrides or {}
        self.url = ""
        self.model_version = ""

    def __enter__(self) -> LocalServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Ray, Serve and the apps; a start that fails leaves no Ray behind (the next start would refuse)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # Serve's proxy can take more than its default 5 s to become ready on 2 busy cores
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        from ray import serve

        from inference.serve.ranker_app import Ranker

        started = time.monotonic()
        ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        from ranking.artifacts import resolve_artifact

        self.url = self._run_app("ranker", Ranker, {"artifact": self.artifact, **self.overrides})
        self.model_version = resolve_artifact(self.artifact).name
        if self.behavior_artifact:
            from inference.behavior.serve_app import BehaviorReasonerDeployment

            self.behavior_url = self._run_app("behavior", BehaviorReasonerDeployment,
                                              {"artifact": self.behavior_artifact})
            self.behavior_version = resolve_artifact(self.behavior_artifact, kind="behavior").name
        log.info("Serve ready at %s in %.1f s", self.url, time.monotonic() - started)

    def _run_app(self, name: str, deployment_class: Any, args: dict[str, Any]) -> str:
        """Deploy one application of the Serve YAML with some args replaced; returns its URL."""
        from ray import serve

        apps = {app["name"]: app for app in self.config["applications"]}
        if name not in apps:
            raise ValueError(f"no application {name!r} in the Serve config (has {sorted(apps)})")
        app = copy.deepcopy(apps[name])
        options = dict(app["deployments"][0])
        options.pop("name", None)
        serve.run(deployment_class.options(**options).bind(**{**app.get("args", {}), **args}), name=app["name"],
                  route_prefix=app["route_prefix"])
        return f"http://127.0.0.1:{self.port}{app['route_prefix']}"

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
