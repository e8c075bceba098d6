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
    """Context manager: a local Ray instance with the Ranker app; `.url` is its HTTP route."""

    def __init__(self, artifact: str, num_cpus: int = 2, port: int | None = None,
                 config_path: Path = SERVE_CONFIG, overrides: dict[str, Any] | None = None) -> None:
        self.artifact = artifact
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
        app = copy.deepcopy(self.config["applications"][0])
        args = {**app.get("args", {}), "artifact": self.artifact, **self.overrides}
        options = dict(app["deployments"][0])
        options.pop("name", None)
        deployment = Ranker.options(**options)
        serve.run(deployment.bind(**args), name=app["name"], route_prefix=app["route_prefix"])
        self.url = f"http://127.0.0.1:{self.port}{app['route_prefix']}"
        from ranking.artifacts import resolve_artifact

        self.model_version = resolve_artifact(self.artifact).name
        log.info("Serve ranker ready at %s in %.1f s", self.url, time.monotonic() - started)

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
