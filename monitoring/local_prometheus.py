"""A real Prometheus on 127.0.0.1 (free port) that scrapes local targets and evaluates the project's rules."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).parent / "rules" / "reaseq.rules.yml"


def scrape_config(targets: dict[str, str], rule_files: list[str], interval: str = "1s") -> dict[str, Any]:
    """prometheus.yml: one job per {name: host:port}, scraped and evaluated every `interval`."""
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": name, "static_configs": [{"targets": [target]}]}
                               for name, target in targets.items()]}


class LocalPrometheus:
    """Context manager: Prometheus scraping `targets`; `.url`, `.query()`, `.get()`."""

    def __init__(self, binary: str, targets: dict[str, str], work_dir: Path, rule_files: tuple[Path, ...] = (RULES,),
                 interval: str = "1s") -> None:
        self.binary = binary
        self.work_dir = Path(work_dir)
        self.config = scrape_config(targets, [str(p) for p in rule_files], interval)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalPrometheus:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config))
        self._log = open(self.work_dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen([self.binary, f"--config.file={config}",
                                      f"--storage.tsdb.path={self.work_dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"Prometheus did not start:\n{(self.work_dir / 'prometheus.log').read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def get(self, path: str, **params: Any) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; a list of {metric, value}."""
        params = {"query": expr, **({"time": at} if at is not None else {})}
        return self.get("/api/v1/query", **params)["result"]
