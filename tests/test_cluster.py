"""The local cluster (streaming/local/): the checker's and the nemesis's pure parts always; the cluster
itself — three KRaft brokers, ZooKeeper, a Flink session cluster with JobManager HA and two TaskManagers, a
Ray cluster, the job submitted to it — with one TaskManager, one Kafka leader and the JobManager SIGKILLed
mid-stream, checked from outside."""

from __future__ import annotations

import random

import pytest

from streaming.local import checker, nemesis
from streaming.local.cluster import LocalCluster, kafka_properties, session_processes
from streaming.topics import TopicsConfig

TOPICS = TopicsConfig()


def _scores(user: str, version: int, covered: list[str], offset: int, emit_ts: int = 0) -> checker.Output:
    body = {"user_id": user, "version": version, "covered": [[e, 0] for e in covered], "emit_ts": emit_ts}
    return checker.Output(TOPICS.user_scores, 0, offset, emit_ts, body)


def test_the_checker_finds_lost_duplicated_and_unknown_events_and_version_regressions():
    sent = {"e1", "e2", "e3", "e4"}
    dead = checker.Output(TOPICS.dead_letter, 0, 0, 0, {"reason": "unscorable", "event_ids": ["e4"]})
    malformed = checker.Output(TOPICS.dead_letter, 0, 1, 0, {"reason": "unparseable", "event_ids": []})
    good = [_scores("u1", 1, ["e1"], 0), _scores("u1", 3, ["e2", "e3"], 1), dead, malformed]
    report = checker.check(sent, 1, good, TOPICS)
    assert report.passed and report.scored == 3 and report.dead_lettered == 1, report.summary()
    assert not checker.check(sent, 2, good, TOPICS).passed  # a malformed input without its dead letter
    lost = checker.check(sent, 1, [o for o in good if o.offset != 1 or o.topic != TOPICS.user_scores], TOPICS)
    assert lost.lost == ["e2", "e3"] and not lost.passed
    duplicated = checker.check(sent, 1, [*good, _scores("u1", 4, ["e3"], 2)], TOPICS)
    assert duplicated.duplicated == ["e3"] and not duplicated.passed
    unknown = checker.check(sent, 1, [*good, _scores("u2", 1, ["x9"], 3)], TOPICS)
    assert unknown.unknown == ["x9"]
    regressed = checker.check(sent, 1, [*good, _scores("u1", 2, [], 5)], TOPICS)
    assert regressed.version_regressions == 1 and not regressed.passed


def test_fault_effects_measure_recovery_from_the_kill_and_latency_around_it():
    kill = checker.Fault("taskmanager", ("taskmanager-1",), at=100.0, restarted_at=105.0)
    outputs = [_scores("u", 1, ["before"], 0, emit_ts=99_000), _scores("u", 2, ["after"], 1, emit_ts=112_500)]
    sent_ms = {"before": 98_900, "after": 100_500}
    [effect] = checker.fault_effects([kill], outputs, sent_ms, TOPICS)
    assert effect["recovery_s"] == 12.5 and effect["worst_latency_ms"] == 112_500 - 100_500


def test_fault_schedules_and_victims():
    assert nemesis.parse_faults("taskmanager, kafka-leader,taskmanager+ray-worker") == [
        "taskmanager", "kafka-leader", "taskmanager+ray-worker"]
    with pytest.raises(ValueError, match="unknown fault 'zookeeper'"):
        nemesis.parse_faults("taskmanager,zookeeper")
    assert nemesis.parse_faults("jobmanager+taskmanager") == ["jobmanager+taskmanager"]
    assert nemesis.leader_of_most({0: 2, 1: 3, 2: 2, 3: 1}) == 2
    assert nemesis.leader_of_most({0: 3, 1: 1}) == 1  # a tie goes to the lowest id


def test_the_jobmanager_is_a_victim_only_with_ha(tmp_path):
    from streaming.local.cluster import Layout

    with_ha = LocalCluster(tmp_path / "a", Layout())
    assert nemesis.victims(with_ha, "jobmanager", random.Random(1)) == ["jobmanager"]
    without = LocalCluster(tmp_path / "b", Layout(ha=False))
    with pytest.raises(ValueError, match="loses the job without JobManager HA"):
        nemesis.victims(without, "jobmanager", random.Random(1))


def test_ha_puts_leader_election_and_recovery_data_in_zookeeper(tmp_path):
    from streaming.local.cluster import Layout, flink_cluster_configuration, zookeeper_configuration

    ports = {"flink-rpc": 1, "flink-rest": 2, "zookeeper": 2181}
    conf = flink_cluster_configuration(Layout(), tmp_path, ports)
    assert conf["high-availability.type"] == "zookeeper"
    assert conf["high-availability.zookeeper.quorum"] == "127.0.0.1:2181"
    assert conf["high-availability.storageDir"] == (tmp_path / "flink" / "ha").as_uri()
    assert not [k for k in flink_cluster_configuration(Layout(ha=False), tmp_path, ports) if "high-availability" in k]
    zoo = zookeeper_configuration(tmp_path, 2181)
    assert "clientPort=2181" in zoo and "clientPortAddress=127.0.0.1" in zoo and "admin.enableServer=false" in zoo


def test_kafka_nodes_form_a_static_quorum_with_replicated_internal_topics(tmp_path):
    voters = "1@127.0.0.1:9001,2@127.0.0.1:9002,3@127.0.0.1:9003"
    props = kafka_properties(2, tmp_path, 9102, voters, 3)
    assert props["node.id"] == "2" and props["controller.quorum.voters"] == voters
    assert "CONTROLLER://127.0.0.1:9002" in props["listeners"] and "PLAINTEXT://127.0.0.1:9102" in props["listeners"]
    assert props["min.insync.replicas"] == "2" and props["unclean.leader.election.enable"] == "false"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert "controller.quorum.bootstrap.servers" not in props


@pytest.mark.slow
def test_the_job_on_the_cluster_survives_a_killed_taskmanager_kafka_leader_and_jobmanager(tmp_path, ml100k,
                                                                                         ml100k_sequences):
    from ranking.experiment import train_and_save
    from streaming.local.cluster import Layout
    from streaming.replay import interactions_to_events
    from tests.helpers import TINY_RANKER

    tiny = train_and_save(ml100k_sequences, TINY_RANKER, progress=False, root=tmp_path / "artifacts").artifact
    cluster = LocalCluster(tmp_path / "cluster", Layout(artifact=str(tiny.path)))
    try:
        cluster.up()
        events = interactions_to_events(ml100k.interactions, limit=3000)
        found = nemesis.run(cluster, events, rate=60.0, schedule=["taskmanager", "kafka-leader", "jobmanager"],
                            first_fault_s=12.0, fault_every_s=15.0, restart_after_s=5.0, settle_timeout_s=240.0,
                            seed=random.Random(7).randint(0, 10**6))
    finally:
        sessions = [m.pid for m in cluster.state.members.values() if m.pid]
        cluster.down()
    assert sessions and not [pid for session in sessions for pid in session_processes(session)]
    report = found.report
    assert report is not None and report.passed, report.summary()
    assert [f.name for f in found.faults] == ["taskmanager", "kafka-leader", "jobmanager"]
    assert found.undelivered == 0 and report.events_in == len(events)
    assert all(effect["recovery_s"] is not None for effect in found.effects), found.effects


def test_memory_growth_is_measured_after_the_warmup():
    from streaming.local.soak import growth

    times = [float(t) for t in range(0, 600, 10)]
    flat = [500.0 + (50.0 if t < 300 else 0.0) + (t % 20) / 10 for t in times]  # settles after the warm-up
    assert growth(times, flat, warmup_s=300)["relative_growth"] < 0.01
    leaking = [500.0 + t for t in times]  # 1 MiB a second
    found = growth(times, leaking, warmup_s=300)
    assert abs(found["slope_per_min"] - 60.0) < 1e-6 and found["relative_growth"] > 0.3
    assert growth(times[:2], leaking[:2], warmup_s=0) is None


def test_a_sessions_memory_is_its_processes(tmp_path):
    import os
    import subprocess
    import sys

    from streaming.local.soak import session_rss_mib

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(30)"],
                             start_new_session=True)
    try:
        import time

        time.sleep(1.5)
        assert session_rss_mib(child.pid) > 60
        assert session_rss_mib(os.getsid(0)) > 0
    finally:
        child.kill()
        child.wait()
    assert session_rss_mib(child.pid) == 0


def test_up_refuses_a_folder_whose_cluster_still_runs(tmp_path):
    import subprocess

    from streaming.local.cluster import ClusterError, ClusterState, Member

    # a member in a session of its own, as `start()` runs one (the test's own session id may read 0 in a container)
    member = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        running = ClusterState(str(tmp_path), {}, {"kafka-1": Member("kafka-1", "kafka", ["sleep", "60"], {}, "log",
                                                                     pid=member.pid)})
        (tmp_path / "cluster.json").write_text(running.to_json())
        with pytest.raises(ClusterError, match="already running"):
            LocalCluster(tmp_path).up(progress=lambda *_: None)
    finally:
        member.kill()
        member.wait()
    assert (tmp_path / "cluster.json").exists()  # nothing of it was removed


def test_a_wait_gives_up_at_once_when_a_member_exits_and_shows_its_log(tmp_path):
    import time

    from streaming.local.cluster import ClusterError

    cluster = LocalCluster(tmp_path)
    (tmp_path / "logs").mkdir()
    cluster._add("jobmanager", "jobmanager", ["bash", "-c", "echo 'Address already in use'; exit 1"], {})
    cluster.start("jobmanager")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"(?s)jobmanager exited while waiting for the REST port.*"
                                           r"last lines of jobmanager.*Address already in use"):
        cluster.wait_for("the REST port", lambda: False, 60, ["jobmanager"])
    assert time.monotonic() - started < 10  # not the full 60 s

    cluster._add("taskmanager-1", "taskmanager", ["bash", "-c", "echo still starting; sleep 30"], {})
    cluster.start("taskmanager-1")
    try:
        with pytest.raises(ClusterError, match=r"(?s)timed out after 2 s waiting for 1 TaskManager.*still starting"):
            cluster.wait_for("1 TaskManager", lambda: False, 2, ["taskmanager-1"])
    finally:
        cluster.kill("taskmanager-1")


def test_members_that_exit_by_themselves_are_started_again_but_not_those_stopped_on_purpose(tmp_path):
    import time

    cluster = LocalCluster(tmp_path)
    (tmp_path / "logs").mkdir()
    cluster._add("taskmanager-1", "taskmanager", ["bash", "-c", "sleep 0.2; exit 1"], {})  # a fatal error
    cluster._add("taskmanager-2", "taskmanager", ["sleep", "30"], {})
    cluster._add("kafka-1", "kafka", ["sleep", "30"], {})
    try:
        for name in ("taskmanager-1", "taskmanager-2", "kafka-1"):
            cluster.start(name)
        cluster.kill("kafka-1")  # a fault injected on purpose: its own restart is due later
        first = cluster.state.members["taskmanager-1"].pid
        time.sleep(1.0)
        assert cluster.revive(exclude={"kafka-1"}) == ["taskmanager-1"]
        assert cluster.state.members["taskmanager-1"].pid != first and not cluster.alive("kafka-1")
        assert (tmp_path / "logs" / "taskmanager-1.log").read_text().count("--- start") == 2
        assert cluster.revive(exclude={"kafka-1", "taskmanager-1"}) == []  # the running one is left alone
    finally:
        for name in ("taskmanager-1", "taskmanager-2", "kafka-1"):
            cluster.kill(name)


def test_jvms_are_judged_by_their_live_heap_and_other_processes_by_rss():
    from streaming.local.soak import verdict

    times = list(range(0, 1200, 60))
    # a JVM whose resident memory climbs toward its heap limit while its live heap stays put
    samples = [{"t": t, "rss_mib": {"kafka-1": 300.0 + t / 10, "ray-head": 800.0}} for t in times]
    heaps = [{"t": t, "heap_mib": {"kafka-1": 90.0 + (t % 120) / 60}} for t in times]
    memory = verdict(samples, heaps, warmup_s=300, tolerance=0.10)
    assert memory["kafka-1"]["judged_by"] == "live_heap" and memory["kafka-1"]["rss"]["relative_growth"] > 0.2
    assert memory["ray-head"]["judged_by"] == "rss" and memory["flat"]
    leaking = [{"t": t, "heap_mib": {"kafka-1": 90.0 + t / 5}} for t in times]
    assert not verdict(samples, leaking, warmup_s=300, tolerance=0.10)["flat"]


def test_a_jvms_live_heap_is_read_after_a_full_collection(tmp_path):
    import subprocess

    from streaming.jvm_deps import require_java
    from streaming.kafka_broker import free_port
    from streaming.local.cluster import ZOOKEEPER_MAIN, flink_home, zookeeper_answers, zookeeper_configuration
    from streaming.local.soak import jvm_live_heap_mib, session_jvm

    port = free_port()
    (tmp_path / "zoo.cfg").write_text(zookeeper_configuration(tmp_path, port))
    jar = next((flink_home() / "lib").glob("flink-dist-*.jar"))
    jvm = subprocess.Popen([require_java(), "-Xmx64m", "-cp", str(jar), ZOOKEEPER_MAIN, str(tmp_path / "zoo.cfg")],
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 60
        while not zookeeper_answers(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert zookeeper_answers(port), "the ZooKeeper server flink-dist ships did not answer"
        assert session_jvm(jvm.pid) == jvm.pid
        heap = jvm_live_heap_mib(jvm.pid)
        assert heap is not None and 0 < heap < 64
    finally:
        jvm.kill()
        jvm.wait()
    assert jvm_live_heap_mib(jvm.pid) is None  # a JVM that is gone gives no number
