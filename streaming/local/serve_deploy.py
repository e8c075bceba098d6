"""Deploy the Ranker on a running Ray cluster: one replica per node, Serve's HTTP proxy on the head only
(the nodes share the machine, so each node's proxy would want the same port). Serve's controller is a
detached actor: the application keeps running after this driver exits.

    python -m streaming.local.serve_deploy RAY_ADDRESS HTTP_PORT ARTIFACT REPLICAS
"""

from __future__ import annotations

import copy
import sys

from streaming.kafka_broker import HOST


def main(argv: list[str] | None = None) -> int:
    address, port, artifact, replicas = argv or sys.argv[1:]
    import ray
    from ray import serve

    from inference.serve.local import load_serve_config
    from inference.serve.ranker_app import Ranker

    ray.init(address=address, _node_ip_address=address.rsplit(":", 1)[0], log_to_driver=False,
             configure_logging=False)
    serve.start(http_options={"host": HOST, "port": int(port), "location": "HeadOnly"})
    app = copy.deepcopy(next(a for a in load_serve_config()["applications"] if a["name"] == "ranker"))
    options = dict(app["deployments"][0])
    options.pop("name", None)
    options.update(num_replicas=int(replicas), max_replicas_per_node=1)
    serve.run(Ranker.options(**options).bind(**{**app.get("args", {}), "artifact": artifact, "device": "cpu"}),
              name=app["name"], route_prefix=app["route_prefix"])
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
