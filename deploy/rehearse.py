"""`reaseq deploy rehearse`: run what the pods would run, from the rendered overlay's own objects, inside the
built images (`make images`), on this machine.

- job: the FlinkDeployment's job as the operator starts it in application mode — `PythonDriver -pym
  streaming.job` with the rendered ConfigMap's job config — in a JobManager and a TaskManager run from the
  Flink image, with the rendered `flinkConfiguration` as the cluster's configuration. What only Kubernetes
  provides is replaced, and named: addresses on 127.0.0.1 (Kafka: a local broker; Serve: not running, the
  job keeps the events until it answers), high availability off (the operator's Kubernetes HA needs the
  API server), and the bucket served by a local S3 (moto). Checkpoints must land in that bucket under the
  configured path; then the TaskManager is killed (SIGKILL), a new one started, and the job must restore
  from the latest S3 checkpoint.
- serve: the RayService's rendered `serveConfigV2` started with `serve run` inside the Ray image, in a
  network namespace that has only loopback (`unshare -n`): both applications must become healthy from what
  the image holds, and a request to each is answered.
- llm (prod overlay): the LLM's models volume filled by the reaseq-llm-weights Job's container, the LLM
  workers' init container check passing on it with no network, and the model file the LLM's Serve config
  names answering a question.

Every container runs as its pod runs it: the pod's user, and a read-only root filesystem (remounted before
the process starts) with only its emptyDir volumes writable.

Each part prints what it checked and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy import images, validate
from streaming.local.cluster import wait_until

# Runs inside the Ray image (stdlib only): start Serve from the rendered config, wait until both routes
# answer, prove there is no route out, print one JSON line, stop Serve.
SERVE_PROBE = textwrap.dedent('''
    import json, os, signal, socket, subprocess, sys, time, urllib.request
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log = open("/tmp/serve.log", "w")
    serve = subprocess.Popen(["serve", "run", "/rehearsal/serve-config.yaml"], stdout=log, stderr=subprocess.STDOUT)

    def post(route, body):
        request = urllib.request.Request("http://127.0.0.1:8000" + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())

    users = {"users": [{"user_id": "rehearsal", "recent_items": ["50", "172", "181"]}]}
    result, deadline = {}, time.time() + float(sys.argv[1])
    while time.time() < deadline and serve.poll() is None:
        try:
            result["rank"] = post("/rank", users)
            result["behavior"] = post("/behavior", users)
            break
        except Exception as error:
            result["last_error"] = repr(error)[:300]
            time.sleep(3)
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        result["outside_reachable"] = True
    except OSError as error:
        result["outside_reachable"] = False
        result["outside_error"] = repr(error)[:200]
    result["interfaces"] = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
    result["serve_exited"] = serve.poll()
    serve.send_signal(signal.SIGINT)
    try:
        serve.wait(60)
    except subprocess.TimeoutExpired:
        serve.kill()
    log.close()
    result["serve_log_tail"] = open("/tmp/serve.log").read()[-3000:]
    print("REHEARSAL " + json.dumps(result))
''')


def rendered_rayservice(overlay: str) -> dict[str, Any]:
    """The overlay's RayService of the recommender's Serve apps."""
    docs = validate.load_yaml_docs(validate.kustomize_build(validate.K8S / "overlays" / overlay))
    return next(d for d in docs if d["kind"] == "RayService" and d["metadata"]["name"] == "reaseq-serve")


def rendered_serve_config(overlay: str) -> dict[str, Any]:
    """The RayService's serveConfigV2 as the overlay renders it."""
    return yaml.safe_load(rendered_rayservice(overlay)["spec"]["serveConfigV2"])


def rehearse_serve(overlay: str = "dev", timeout_s: float = 420) -> dict[str, Any]:
    """Serve from the rendered config inside the Ray image, as the worker pods run (their user, read-only root
    filesystem, emptyDirs), with loopback only; returns the probe's findings."""
    if not images.image_exists(images.RAY.tag):
        raise SystemExit(f"{images.RAY.tag} is not built: run `make images` first")
    service = rendered_rayservice(overlay)
    worker = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    filesystem = pod_filesystem(worker, worker["containers"][0]["name"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        given = folder / "rehearsal"
        given.mkdir()
        (given / "serve-config.yaml").write_text(yaml.safe_dump(yaml.safe_load(service["spec"]["serveConfigV2"])))
        (given / "probe.py").write_text(SERVE_PROBE)
        for path in (folder, given, *given.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        probe = PodProcess(images.RAY, ["python", "/rehearsal/probe.py", str(int(timeout_s - 60))], filesystem,
                           {given: "/rehearsal"}, {}, folder / "probe.log", folder / "volumes", network=False)
        try:
            probe.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            probe.close()
        output = (folder / "probe.log").read_text()
    line = next((ln for ln in output.splitlines() if ln.startswith("REHEARSAL ")), None)
    if line is None:
        raise RuntimeError(f"the Serve probe printed no result:\n{output[-3000:]}")
    found = json.loads(line.removeprefix("REHEARSAL "))
    found.update(read_only_root=filesystem.read_only_root, writable_volumes=sorted(filesystem.empty_dirs))
    return found


def serve_problems(found: dict[str, Any]) -> list[str]:
    """What the Serve rehearsal's findings fail on (empty: passed)."""
    problems = []
    for route in ("rank", "behavior"):
        status, body = found.get(route, (None, None))
        results = (body or {}).get("results") or []
        if status != 200 or not results or not results[0].get("items"):
            problems.append(f"/{route} did not answer with items: {found.get(route)} "
                            f"(last error: {found.get('last_error')})")
    if found.get("outside_reachable") is not False:
        problems.append("the network outside was reachable: the rehearsal did not run without network")
    if found.get("interfaces") != ["lo"]:
        problems.append(f"interfaces other than loopback: {found.get('interfaces')}")
    return problems


LOOPBACK = "127.0.0.1"


def rendered_flink(overlay: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The overlay's FlinkDeployment and the job config its pods mount (from the generated ConfigMap)."""
    docs = validate.load_yaml_docs(validate.kustomize_build(validate.K8S / "overlays" / overlay))
    flink = next(d for d in docs if d["kind"] == "FlinkDeployment")
    mounted = {v["configMap"]["name"] for v in flink["spec"]["podTemplate"]["spec"]["volumes"] if "configMap" in v}
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in mounted)
    return flink, json.loads(configmap["data"]["job-config.json"])


def memory_mb(text: str) -> int:
    """'1536m' → 1536, '2g' / '2Gi' → 2048 (the FlinkDeployment's resource.memory)."""
    number = "".join(c for c in text if c.isdigit() or c == ".")
    unit = text[len(number):].lower().rstrip("i").rstrip("b")
    return int(float(number) * {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[unit])


def cluster_configuration(flink: dict[str, Any], s3_endpoint: str, ports: dict[str, int]) -> dict[str, str]:
    """The FlinkDeployment's flinkConfiguration as this machine runs it: what the operator adds (memory from
    the resources), and what only Kubernetes provides replaced (addresses, HA, the S3 endpoint)."""
    spec = flink["spec"]
    conf = {str(k): str(v) for k, v in spec["flinkConfiguration"].items()}
    conf.update({
        "jobmanager.memory.process.size": f"{memory_mb(spec['jobManager']['resource']['memory'])}m",
        "taskmanager.memory.process.size": f"{memory_mb(spec['taskManager']['resource']['memory'])}m",
        "parallelism.default": str(spec["job"]["parallelism"]),
        "jobmanager.rpc.address": LOOPBACK, "jobmanager.bind-host": LOOPBACK, "jobmanager.rpc.port": str(ports["rpc"]),
        "rest.address": LOOPBACK, "rest.bind-address": LOOPBACK, "rest.port": str(ports["rest"]),
        "taskmanager.host": LOOPBACK, "taskmanager.bind-host": LOOPBACK,
        "metrics.reporter.prom.port": f"{ports['metrics']}-{ports['metrics'] + 1}",
        "high-availability.type": "none",
        # Kubernetes tells the JobManager at once when a TaskManager pod dies; standalone, only the heartbeat does
        "heartbeat.timeout": "10000", "heartbeat.interval": "2000",
        "s3.endpoint": s3_endpoint, "s3.path.style.access": "true",
        "s3.access-key": "rehearsal", "s3.secret-key": "rehearsal",
    })
    return conf


def flink_conf_dir() -> Path:
    """PyFlink's default conf/ (the same Flink version as the image's)."""
    import pyflink

    return Path(pyflink.__file__).parent / "conf"


def s3_location(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' → ('bucket', 'some/prefix'); anything else is refused (it would be local)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3:// location: checkpoints would stay on the pod's disk")
    return parsed.netloc, parsed.path.strip("/")


@contextlib.contextmanager
def local_s3(bucket: str) -> Iterator[tuple[str, Any]]:
    """A local S3 (moto's server) on 127.0.0.1 with `bucket`; yields (endpoint, boto3 client)."""
    import boto3

    from streaming.kafka_broker import free_port

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", LOOPBACK, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="rehearsal",
                              aws_secret_access_key="rehearsal", region_name="us-east-1")
        for _ in range(100):
            with contextlib.suppress(Exception):
                client.create_bucket(Bucket=bucket)
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"moto_server did not start on {endpoint}")
        yield endpoint, client
    finally:
        moto.terminate()
        moto.wait(10)


def rest(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def resolve_in_image(root: Path, path: str) -> str:
    """`path` inside the image whose root filesystem is at `root`, with the image's symlinks followed (as the
    container runtime does for a volume's mountPath: /opt/flink/log is under PyFlink's distribution here)."""
    resolved: list[str] = []
    pending = [part for part in path.split("/") if part]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"{path}: too many symlinks in the image")
            target = os.readlink(candidate)
            pending = [p for p in target.split("/") if p] + pending
            if target.startswith("/"):
                resolved = []
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


@dataclass(frozen=True)
class PodFilesystem:
    """What a pod's container sees of the filesystem: the user it runs as, whether its root filesystem is
    read-only, and its emptyDir volumes (mountPath → name)."""

    uid: int
    gid: int
    read_only_root: bool
    empty_dirs: dict[str, str]


def pod_filesystem(pod_spec: dict[str, Any], container: str) -> PodFilesystem:
    """The rendered pod spec's filesystem for `container` (its securityContext over the pod's)."""
    main = next(c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == container)
    pod_security, security = pod_spec.get("securityContext", {}), main.get("securityContext", {})
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup", pod_security.get("fsGroup", uid)))
    empty = {v["name"] for v in pod_spec.get("volumes", []) if "emptyDir" in v}
    return PodFilesystem(int(uid), int(gid), bool(security.get("readOnlyRootFilesystem")),
                         {m["mountPath"]: m["name"] for m in main.get("volumeMounts", []) if m["name"] in empty})


class PodProcess:
    """One process run inside a container of `image` as the pod would run it: as the pod's user, with a
    read-only root filesystem when the pod says so (remounted before the user's process starts), fresh
    directories for its emptyDir volumes, and `mounts` (host → path) for what Kubernetes would mount."""

    def __init__(self, image: images.Image, command: list[str], filesystem: PodFilesystem, mounts: dict[Path, str],
                 env: dict[str, str], log: Path, scratch: Path, network: bool = True):
        self.container = images.run(["buildah", *images.STORAGE, "from", "--pull=never", image.tag]).stdout.strip()
        root = Path(images.run(["buildah", *images.STORAGE, "mount", self.container]).stdout.strip())
        volumes = dict(mounts)
        for path, name in filesystem.empty_dirs.items():
            host = scratch / name
            host.mkdir(parents=True, exist_ok=True)
            host.chmod(0o777)
            volumes[host] = path
        # the host's network; hostname localhost, which Flink resolves for itself
        args = ["buildah", *images.STORAGE, "run", "--isolation", "chroot", "--hostname", "localhost",
                "--user", "0:0", "--cap-add", "CAP_SYS_ADMIN"]
        for host, inside in volumes.items():  # inside: a path, or "path:ro"
            path, _, mode = inside.partition(":")
            args += ["-v", f"{host}:{resolve_in_image(root, path)}" + (f":{mode}" if mode else "")]
        home = next((line.split(":")[5] for line in (root / "etc/passwd").read_text().splitlines()
                     if line.split(":")[2] == str(filesystem.uid)), "/")
        for key, value in {"HOME": home, **env}.items():
            args += ["-e", f"{key}={value}"]
        remount = "mount -o remount,bind,ro / && " if filesystem.read_only_root else ""
        drop = (f"exec setpriv --reuid {filesystem.uid} --regid {filesystem.gid} --clear-groups "
                "--inh-caps=-all --bounding-set=-all \"$@\"")
        args = [*args, self.container, "--", "sh", "-c", remount + drop, "sh", *command]
        if not network:  # a network namespace with loopback only
            args = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *args]
        self.out = log.open("w")
        self.process = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the whole process group (buildah run and everything inside)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        images.run(["buildah", *images.STORAGE, "rm", self.container], check=False)
        self.out.close()


def rehearse_job(overlay: str = "dev", work: Path | None = None, events: int = 200,
                 timeout_s: float = 300) -> dict[str, Any]:
    """The job in application mode in the Flink image, checkpointing to a local S3; kill the TaskManager and
    check the restore. Returns what was observed."""
    from kafka import KafkaProducer

    from streaming.events import Event
    from streaming.kafka_broker import EmbeddedKafka, free_port
    from streaming.topics import TopicsConfig, ensure_topics

    if not images.image_exists(images.FLINK.tag):
        raise SystemExit(f"{images.FLINK.tag} is not built: run `make images` first")
    flink, job_config = rendered_flink(overlay)
    checkpoints = flink["spec"]["flinkConfiguration"]["execution.checkpointing.dir"]
    bucket, prefix = s3_location(checkpoints)
    found: dict[str, Any] = {"checkpoint_dir": checkpoints, "job_args": flink["spec"]["job"]["args"]}
    with contextlib.ExitStack() as stack:
        folder = Path(work or stack.enter_context(tempfile.TemporaryDirectory(prefix="reaseq-rehearsal-")))
        endpoint, s3 = stack.enter_context(local_s3(bucket))
        kafka = stack.enter_context(EmbeddedKafka(folder / "kafka"))
        ensure_topics(kafka.bootstrap_servers, TopicsConfig())
        ports = {"rpc": free_port(), "rest": free_port(), "metrics": free_port()}
        conf_dir, config_dir = folder / "conf", folder / "config"
        conf_dir.mkdir(parents=True, exist_ok=True)
        config_dir.mkdir(parents=True, exist_ok=True)
        conf = cluster_configuration(flink, endpoint, ports)
        (conf_dir / "config.yaml").write_text(yaml.safe_dump(conf))
        for name in ("log4j-console.properties", "logback-console.xml"):  # the operator's conf holds them too
            shutil.copy2(flink_conf_dir() / name, conf_dir / name)
        job = {**job_config, "bootstrap_servers": kafka.bootstrap_servers,
               "serve_url": f"http://{LOOPBACK}:{free_port()}/rank", "behavior_url": None}
        (config_dir / "job-config.json").write_text(json.dumps(job))
        for path in (folder, conf_dir, config_dir, *conf_dir.iterdir(), *config_dir.iterdir()):
            path.chmod(0o777 if path.is_dir() else 0o666)
        env = {"FLINK_CONF_DIR": "/rehearsal/conf"}
        mounts = {conf_dir: "/rehearsal/conf", config_dir: "/opt/reaseq/config"}
        filesystem = pod_filesystem(flink["spec"]["podTemplate"]["spec"], "flink-main-container")
        found["read_only_root"], found["writable_volumes"] = filesystem.read_only_root, sorted(filesystem.empty_dirs)
        jar = flink["spec"]["job"]["jarURI"].removeprefix("local://")

        def start(role: str, command: list[str]) -> PodProcess:
            return PodProcess(images.FLINK, ["/docker-entrypoint.sh", *command], filesystem, mounts, env,
                              folder / f"{role}.log", folder / "volumes" / role)

        jobmanager = start("jobmanager", ["standalone-job.sh", "start-foreground", "--job-classname",
                                          flink["spec"]["job"]["entryClass"], "--jars", jar, "--",
                                          *flink["spec"]["job"]["args"]])
        stack.callback(jobmanager.close)
        taskmanager = start("taskmanager-1", ["taskmanager.sh", "start-foreground"])
        stack.callback(lambda: taskmanager.close())
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        items = job_config["known_items"]

        def send(start: int, count: int) -> None:
            for n in range(start, start + count):
                event = Event(f"rehearsal-{n}", f"u{n % 20}", items[n % len(items)], "rate", 1_700_000_000_000 + n)
                producer.send(TopicsConfig().events, key=event.user_id.encode(), value=event.to_json())
            producer.flush()

        send(0, events)
        job_id = wait_until("the job to run", lambda: next((j["jid"] for j in rest(ports["rest"], "/jobs/overview")
                                                          ["jobs"] if j["state"] == "RUNNING"), None), timeout_s)

        def completed() -> dict[str, Any] | None:
            latest = rest(ports["rest"], f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
            return latest if latest and latest.get("external_path", "").startswith("s3://") else None

        first = wait_until("a checkpoint in S3", completed, timeout_s)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        found.update(job_id=job_id, first_checkpoint=first["external_path"], checkpoint_id=first["id"],
                     s3_objects=len(keys), s3_metadata=[k for k in keys if k.endswith("_metadata")][:3])
        killed_at = time.monotonic()
        taskmanager.kill()  # SIGKILL: the JVM and everything in the container's process group
        taskmanager = start("taskmanager-2", ["taskmanager.sh", "start-foreground"])

        def restored() -> dict[str, Any] | None:
            info = rest(ports["rest"], f"/jobs/{job_id}/checkpoints")["latest"].get("restored")
            state = rest(ports["rest"], f"/jobs/{job_id}")["state"]
            return info if info and state == "RUNNING" else None

        back = wait_until("the job to restore from S3", restored, timeout_s)
        send(events, events)
        try:
            after = wait_until("a checkpoint after the restore",
                             lambda: (c := completed()) and c["id"] > back["id"] and c, timeout_s)
        except RuntimeError as error:  # say why: the job's state and its checkpoints' counts and last failure
            details = rest(ports["rest"], f"/jobs/{job_id}/checkpoints")
            state = rest(ports["rest"], f"/jobs/{job_id}")["state"]
            raise RuntimeError(f"{error}; job {state}, checkpoints {details.get('counts')}, last failed "
                               f"{(details.get('latest') or {}).get('failed')}") from error
        found.update(restored_from=back.get("external_path"), restored_checkpoint_id=back.get("id"),
                     recovery_seconds=round(time.monotonic() - killed_at, 1),
                     checkpoint_after_restore=after["external_path"],
                     vertex_states=rest(ports["rest"], f"/jobs/{job_id}").get("status-counts", {}))
        producer.close()
    return found


def job_problems(found: dict[str, Any]) -> list[str]:
    """What the job rehearsal's findings fail on (empty: passed)."""
    bucket, prefix = s3_location(found["checkpoint_dir"])
    problems = []
    for key in ("first_checkpoint", "restored_from", "checkpoint_after_restore"):
        location = found.get(key) or ""
        if not location.startswith(f"s3://{bucket}/{prefix}"):
            problems.append(f"{key} is {location!r}, not under {found['checkpoint_dir']}")
    if not found.get("s3_metadata"):
        problems.append("no checkpoint _metadata object in the bucket")
    return problems


def outcome(title: str, problems: list[str], details: list[str]) -> bool:
    """Print a part's verdict, what it observed and what failed; True when it passed."""
    print(f"{title}: " + ("passed" if not problems else "FAILED"))
    for line in [*details, *problems]:
        print(f"  {line}")
    return not problems


def job_part(overlay: str) -> bool:
    """Rehearse the job and print the outcome; True when it passed."""
    found = rehearse_job(overlay)
    return outcome(f"job ({overlay} overlay's FlinkDeployment, application mode, {' '.join(found['job_args'][:2])})",
                   job_problems(found), [
        f"checkpoint {found.get('checkpoint_id')} at {found.get('first_checkpoint')} "
        f"({found.get('s3_objects')} objects in the bucket)",
        f"read-only root filesystem: {found.get('read_only_root')}; writable: {found.get('writable_volumes')}",
        f"TaskManager killed → restored from {found.get('restored_from')} in {found.get('recovery_seconds')} s; "
        f"next checkpoint {found.get('checkpoint_after_restore')}"])


def serve_part(overlay: str) -> bool:
    """Rehearse Serve and print the outcome; True when it passed."""
    found = rehearse_serve(overlay)
    problems = serve_problems(found)
    ranked = found.get("rank", [None, {}])[1]
    details = [f"read-only root filesystem: {found.get('read_only_root')}; writable: {found.get('writable_volumes')}"]
    if ranked:
        details.append(f"/rank → model {ranked.get('model_version')}: {ranked['results'][0]['items'][:5]}")
    inferred = found.get("behavior", [None, {}])[1]
    if inferred and inferred.get("results"):
        details.append(f"/behavior → model {inferred.get('model_version')}: {inferred['results'][0]['items'][:5]}")
    if problems:
        details.append(found.get("serve_log_tail", ""))
    return outcome(f"serve ({overlay} overlay's serveConfigV2, no network, interfaces {found.get('interfaces')})",
                   problems, details)


def rendered_llm(overlay: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The overlay's LLM weights Job, the LLM worker pod spec, and the model file its Serve config loads."""
    docs = validate.load_yaml_docs(validate.kustomize_build(validate.K8S / "overlays" / overlay))
    job = next((d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "reaseq-llm-weights"), None)
    if job is None:
        raise SystemExit(f"the {overlay} overlay has no LLM component (components/llm): use --overlay prod")
    service = next(d for d in docs if d["kind"] == "RayService" and d["metadata"]["name"] == "reaseq-llm")
    worker = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    source = config["applications"][0]["args"]["llm_configs"][0]["model_loading_config"]["model_source"]
    return job, worker, source


def _claim_mount(pod_spec: dict[str, Any], container: dict[str, Any], claim: str) -> tuple[str, bool]:
    """Where `container` mounts the PersistentVolumeClaim `claim`, and whether read-only."""
    names = {v["name"] for v in pod_spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
    mount = next(m for m in container["volumeMounts"] if m["name"] in names)
    return mount["mountPath"], bool(mount.get("readOnly"))


def rehearse_llm(overlay: str = "prod", work: Path | None = None, timeout_s: float = 1200) -> dict[str, Any]:
    """The LLM's models volume filled by the step the manifests define — the weights Job's container, run in
    its image as its pod runs (read-only root, its emptyDirs, with network: it downloads) — then the LLM
    workers' init container check run with no network on the same volume mounted read-only, and the file the
    Serve config loads answering a question (llama.cpp here: vLLM needs the GPU node)."""
    job, worker, source = rendered_llm(overlay)
    pod = job["spec"]["template"]["spec"]
    fill = pod["containers"][0]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    image = next(i for i in images.ALL.values() if i.tag.endswith("/" + fill["image"]))
    if not images.image_exists(image.tag):
        raise SystemExit(f"{image.tag} is not built: run `make images` first")
    found: dict[str, Any] = {"job_command": fill["command"], "model_source": source}
    with contextlib.ExitStack() as stack:
        folder = Path(work or stack.enter_context(tempfile.TemporaryDirectory(prefix="reaseq-rehearsal-llm-")))
        volume = folder / "volume"
        volume.mkdir(parents=True, exist_ok=True)
        volume.chmod(0o777)  # the PVC, group-writable for the pod's fsGroup
        job_path, _ = _claim_mount(pod, fill, claim)
        env = {e["name"]: e["value"] for e in fill.get("env", [])}
        started = time.monotonic()
        filler = PodProcess(image, fill["command"], pod_filesystem(pod, fill["name"]), {volume: job_path}, env,
                            folder / "fill.log", folder / "fill-volumes")
        try:
            found["job_exit"] = filler.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            found["job_exit"] = None
        finally:
            filler.close()
        found["job_seconds"] = round(time.monotonic() - started, 1)
        found["job_log_tail"] = (folder / "fill.log").read_text()[-1500:]
        init = worker["initContainers"][0]
        init_path, read_only = _claim_mount(worker, init, claim)
        checker = PodProcess(image, init["command"], pod_filesystem(worker, init["name"]),
                             {volume: init_path + (":ro" if read_only else "")}, {}, folder / "check.log",
                             folder / "check-volumes", network=False)
        try:
            found["check_exit"] = checker.process.wait(300)
        finally:
            checker.close()
        found["check_log"] = (folder / "check.log").read_text()[-800:]
        worker_path, _ = _claim_mount(worker, worker["containers"][0], claim)
        model_file = volume / Path(source).relative_to(worker_path)
        found["model_file_bytes"] = model_file.stat().st_size if model_file.is_file() else None
        if found["model_file_bytes"]:
            found["answer"] = _ask(model_file, "Who directed the film Star Wars (1977)? Answer with the name only.")
    return found


def _ask(model_file: Path, question: str) -> str:
    """One greedy chat answer from the GGUF at `model_file`, served by llama.cpp on 127.0.0.1."""
    from inference.knowledge.llama_server import LlamaServer, ServerConfig

    with LlamaServer(model_path=model_file, config=ServerConfig(n_threads=2, nice=0)) as server:
        body = json.dumps({"model": server.model, "temperature": 0, "max_tokens": 24,
                           "messages": [{"role": "user", "content": question}]}).encode()
        request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())["choices"][0]["message"]["content"].strip()


def llm_problems(found: dict[str, Any]) -> list[str]:
    """What the LLM rehearsal's findings fail on (empty: passed)."""
    problems = []
    if found.get("job_exit") != 0:
        problems.append(f"the weights Job's container exited {found.get('job_exit')}: {found.get('job_log_tail')}")
    if found.get("check_exit") != 0:
        problems.append(f"the workers' init check exited {found.get('check_exit')}: {found.get('check_log')}")
    if not found.get("model_file_bytes"):
        problems.append(f"the Serve config's model_source {found.get('model_source')} is not on the filled volume")
    if not found.get("answer"):
        problems.append("the filled weights did not answer a question")
    return problems


def llm_part(overlay: str) -> bool:
    """Rehearse the LLM's weights volume and print the outcome; True when it passed."""
    overlay = "prod" if overlay == "dev" else overlay  # only prod carries the LLM component
    found = rehearse_llm(overlay)
    return outcome(f"llm ({overlay} overlay's reaseq-llm-weights Job and the LLM workers' init check)",
                   llm_problems(found), [
        f"{' '.join(found['job_command'])} → exit {found.get('job_exit')} in {found.get('job_seconds')} s; "
        f"{found.get('model_source')}: {found.get('model_file_bytes')} bytes",
        f"init check, no network, volume read-only → exit {found.get('check_exit')}: "
        f"{found.get('check_log', '').strip().splitlines()[-1:]}",
        f"asked who directed Star Wars (1977): {found.get('answer')!r}"])


PARTS = {"job": job_part, "serve": serve_part, "llm": llm_part}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS), action="append", help="which part (default: all)")
    parser.add_argument("--overlay", default="dev", choices=list(validate.OVERLAYS))
    args = parser.parse_args(argv)
    passed = [PARTS[part](args.overlay) for part in args.part or list(PARTS)]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
