"""`reaseq cluster up|status|down` and `reaseq bench nemesis`: the local cluster and faults under load."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_WORK = "/tmp/reaseq-cluster"


def add_arguments(cluster: argparse.ArgumentParser) -> None:
    """Register `reaseq cluster` actions."""
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start 3 Kafka KRaft nodes, a Flink session cluster (JobManager + 2 "
                            "TaskManagers), a Ray cluster (head + worker) with the Ranker on Serve, and submit the "
                            "job; returns when everything answers (about 2 minutes)")
    up.add_argument("--brokers", type=int, default=3)
    up.add_argument("--taskmanagers", type=int, default=2)
    up.add_argument("--ray-workers", type=int, default=1)
    up.add_argument("--ha", action=argparse.BooleanOptionalAction, default=True,
                    help="JobManager high availability through ZooKeeper (default on)")
    up.add_argument("--artifact", default="ml-100k", help="ranker artifact Serve loads (default: latest ml-100k)")
    for action in (up, actions.add_parser("status", help="each process alive or not, brokers, TaskManagers and "
                                          "the job's state"),
                   actions.add_parser("down", help="stop every process of the cluster (none is left behind)")):
        action.add_argument("--work", default=DEFAULT_WORK, help=f"the cluster's folder (default {DEFAULT_WORK})")


def main_from_args(args: argparse.Namespace) -> int:
    from streaming.local.cluster import ClusterError, Layout, LocalCluster

    work = Path(args.work)
    try:
        if args.cluster_command == "up":
            cluster = LocalCluster(work, Layout(brokers=args.brokers, taskmanagers=args.taskmanagers,
                                                ray_workers=args.ray_workers, artifact=args.artifact,
                                                ha=args.ha))
            cluster.up()
            print(f"\nKafka: {cluster.bootstrap_servers}\nFlink: {cluster.rest_url}\nServe: {cluster.serve_url}\n"
                  f"replay into it: reaseq stream replay --bootstrap-servers {cluster.bootstrap_servers}\n"
                  f"stop it:        reaseq cluster down --work {work}")
            return 0
        cluster = LocalCluster.load(work)
        if args.cluster_command == "status":
            print(json.dumps(cluster.status(), indent=2))
            return 0
        return 1 if cluster.down() else 0
    except ClusterError as error:
        print(f"reaseq cluster: {error}", file=sys.stderr)
        return 1


def add_nemesis_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `reaseq bench nemesis`."""
    parser.add_argument("--work", default=DEFAULT_WORK, help="a running cluster's folder (reaseq cluster up); "
                        "with --start, where to start one (and stop it after)")
    parser.add_argument("--start", action="store_true", help="start the cluster first and stop it at the end")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (steady)")
    parser.add_argument("--events", type=int, default=20_000, help="ML-100K ratings to replay")
    parser.add_argument("--faults", default="taskmanager,kafka-leader,ray-worker,taskmanager+kafka-leader",
                        help="comma-separated schedule; combine with + (taskmanager, kafka-leader, ray-worker, "
                        "jobmanager)")
    parser.add_argument("--first-fault-s", type=float, default=20.0)
    parser.add_argument("--fault-every-s", type=float, default=60.0, help="one fault per this many seconds")
    parser.add_argument("--restart-after-s", type=float, default=5.0)
    parser.add_argument("--settle-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/nemesis-<time>.json)")


def nemesis_main(args: argparse.Namespace) -> int:
    import time

    from bench.results import write_result
    from ranking.data import load_dataset
    from streaming.local import nemesis
    from streaming.local.cluster import LocalCluster
    from streaming.replay import interactions_to_events

    schedule = nemesis.parse_faults(args.faults)
    # the client's event loop warns whenever a busy machine delays it: thousands of lines under load
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    cluster = LocalCluster(Path(args.work)) if args.start else LocalCluster.load(Path(args.work))
    if args.start:
        cluster.up()
    try:
        events = interactions_to_events(load_dataset("ml-100k").interactions, limit=args.events)
        found = nemesis.run(cluster, events, args.rate, schedule, args.first_fault_s, args.fault_every_s,
                            args.restart_after_s, args.settle_timeout_s)
    finally:
        if args.start:
            cluster.down()
    report = found.report
    assert report is not None
    recoveries = sorted(e["recovery_s"] for e in found.effects if e["recovery_s"] is not None)
    table = {"faults": len(found.faults), "events_in": report.events_in, "outputs_checked": report.scored
             + report.dead_lettered + report.malformed_dead_lettered, "lost": len(report.lost),
             "duplicated": len(report.duplicated), "undelivered": found.undelivered,
             "recovery_p50_s": recoveries[len(recoveries) // 2] if recoveries else None,
             "recovery_max_s": recoveries[-1] if recoveries else None}
    name = args.out or f"nemesis-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path = write_result({"layout": cluster.state.layout, "rate": args.rate, "schedule": schedule, "table": table,
                         "check": report.summary(), "faults": found.effects, "settle_s": found.settle_s,
                         "log": found.log}, Path(name).name, Path(name).parent if args.out else "bench/results")
    print("\n| faults | events in | outputs checked | lost | duplicated | recovery p50 | recovery max |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {table['faults']} | {table['events_in']:,} | {table['outputs_checked']:,} | {table['lost']} | "
          f"{table['duplicated']} | {table['recovery_p50_s']} s | {table['recovery_max_s']} s |")
    for effect in found.effects:
        print(f"  {effect['fault']}: killed {', '.join(effect['killed'])}, first output after "
              f"{effect['recovery_s']} s, worst event→score {effect['worst_latency_ms']} ms")
    print(f"JSON: {path}")
    return 0 if report.passed else 1


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `reaseq bench soak`."""
    parser.add_argument("--work", default=DEFAULT_WORK, help="a running cluster's folder (reaseq cluster up); "
                        "with --start, where to start one (and stop it after)")
    parser.add_argument("--start", action="store_true", help="start the cluster first and stop it at the end")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second (steady)")
    parser.add_argument("--every-s", type=float, default=10.0, help="sampling period")
    parser.add_argument("--warmup-s", type=float, default=300.0, help="left out of the memory trend")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/soak-<time>.json)")
    parser.add_argument("--plot", default="docs/soak.png", help="where the plot goes")


def soak_main(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    from bench.results import write_result
    from ranking.data import load_dataset
    from streaming.local import soak
    from streaming.local.cluster import LocalCluster
    from streaming.replay import interactions_to_events

    cluster = LocalCluster(Path(args.work)) if args.start else LocalCluster.load(Path(args.work))
    if args.start:
        cluster.up()
    try:
        events = interactions_to_events(load_dataset("ml-100k").interactions)
        result = soak.run(cluster, events, args.rate, args.minutes, args.every_s, args.warmup_s)
    finally:
        if args.start:
            cluster.down()
    name = args.out or f"soak-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path = write_result({"layout": cluster.state.layout, **asdict(result)}, Path(name).name,
                        Path(name).parent if args.out else "bench/results")
    print(f"JSON: {path}")
    print(f"plot: {soak.plot(result, Path(args.plot))}")
    return 0 if result.lost == 0 else 1
