"""`reaseq`: one command line for data, training, evaluation, benchmarks and the demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DESCRIPTION = """\
ReaSeq streaming recommender.

Events flow one way: Kafka (reaseq.events) -> PyFlink job (per-user state) -> Ray Serve
(behaviour reasoner, sequential ranker) -> Kafka (reaseq.user-state, reaseq.user-scores).
Offline jobs build item knowledge and train the models as versioned artifacts.

Start with `reaseq demo` (what `make demo` runs), or step by step:
  reaseq data fetch ml-100k          download and verify MovieLens-100K (ml-1m: MovieLens-1M)
  reaseq train ranker --dataset ml-100k
  reaseq evaluate --dataset ml-100k  test metrics of the latest ranker (+ popularity)
  reaseq bench quality --seeds 1 2 3 table beside published anchors, JSON in bench/results/
"""


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"],
                        help="dataset name (default: ml-100k)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the raw files (required for ml-1m unless REASEQ_DATA_DIR "
                             "is set or its download is reachable)")


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML with model/train sections "
                        "(default: ranking/configs/ranker-<dataset>.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget per training run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reaseq", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="download, verify and describe datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_cmds.add_parser("fetch", help="download and verify a dataset into the cache")
    fetch.add_argument("name", choices=["ml-100k", "ml-1m"])
    fetch.add_argument("--data-dir", default=None, help="local copy to verify instead of downloading")
    info = data_cmds.add_parser("info", help="counts and split sizes of a dataset")
    _add_data_args(info)
    export = data_cmds.add_parser("export", help="write a dataset's user sequences to one file, to train "
                                  "where the dataset cannot be downloaded (bench compare --sequences)")
    _add_data_args(export)
    export.add_argument("--out", required=True, help="file to write (.npz)")

    train = commands.add_parser("train", help="train a model and save it as a versioned artifact")
    train_cmds = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    ranker = train_cmds.add_parser("ranker", help="SASRec-style ranker with full-softmax cross-entropy")
    _add_data_args(ranker)
    _add_train_args(ranker)
    ranker.add_argument("--seed", type=int, default=None, help="random seed (default from config: 42)")
    ranker.add_argument("--knowledge", default=None, help="fuse a knowledge-embeddings version (LATEST or a version; "
                        "'none': IDs only); default: the config's train.knowledge")

    behavior = train_cmds.add_parser("behavior", help="masked-diffusion behaviour model (infers behaviours "
                                     "beyond the log); artifact under ./artifacts/behavior")
    _add_data_args(behavior)
    _add_behavior_args(behavior)
    behavior.add_argument("--rft", action="store_true",
                          help="tune an existing behaviour model by reinforcement fine-tuning with the ranking reward "
                          "(GRPO; --config is then a YAML with an rft: section, default "
                          "inference/behavior/configs/behavior-<dataset>-rft.yaml); saves a new version naming "
                          "its parent")
    behavior.add_argument("--parent", default=None, help="--rft: the behaviour artifact to tune (default: the "
                          "dataset's latest)")
    behavior.add_argument("--reward-ranker", default=None, help="--rft: a ranker artifact reading K inferred items "
                          "(default: train one from rft.reward_ranker on the parent's inferences)")
    behavior.add_argument("--plot", default=None, help="--rft: write the reward and KL curves as a PNG here")

    infer = commands.add_parser("infer", help="run a trained model on given users")
    infer_cmds = infer.add_subparsers(dest="model", required=True, metavar="MODEL")
    infer_behavior = infer_cmds.add_parser(
        "behavior", help="a user's history and the behaviours the diffusion model infers beyond it, with titles")
    _add_data_args(infer_behavior)
    infer_behavior.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    infer_behavior.add_argument("--artifact", default=None, help="behaviour artifact (default: latest of the dataset)")
    infer_behavior.add_argument("--slots", type=int, default=None, help="K behaviours to infer (default: config)")
    infer_behavior.add_argument("--steps", type=int, default=None, help="S denoising steps (default: config)")
    infer_behavior.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: config)")
    infer_behavior.add_argument("--seed", type=int, default=None, help="sampling seed (default: config)")
    infer_behavior.add_argument("--device", default="auto")

    evaluate = commands.add_parser("evaluate", help="evaluate a ranker artifact under the protocol")
    _add_data_args(evaluate)
    evaluate.add_argument("--artifact", default=None,
                          help="artifact directory, or <dataset>[/<version>] under ./artifacts/ranker "
                               "(default: the dataset's latest)")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"])
    evaluate.add_argument("--device", default="auto")

    bench = commands.add_parser("bench", help="benchmarks (quality tables; more as parts land)")
    bench_cmds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    quality = bench_cmds.add_parser("quality", help="ranker vs popularity, median of seeds, "
                                    "beside published anchors; JSON to bench/results/")
    _add_data_args(quality)
    _add_train_args(quality)
    quality.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    quality.add_argument("--out", default="bench/results", help="folder for the JSON result")

    compare = bench_cmds.add_parser("compare", help="rankers from several configs on the same seeds: medians, "
                                    "paired bootstrap CIs per slice (resumable, --jobs in parallel); JSON to "
                                    "bench/results/")
    from bench.compare import add_arguments as add_compare_arguments

    add_compare_arguments(compare)
    ranker_pass = bench_cmds.add_parser("ranker-pass", help="the Ranker's model pass per user: full pass vs the "
                                        "incremental state cache; JSON to bench/results/")
    from bench.ranker_pass import add_arguments as add_ranker_pass_arguments

    add_ranker_pass_arguments(ranker_pass)
    claims = bench_cmds.add_parser("claims", help="the knowledge LLM's sequel and director claims checked against the "
                                   "Freebase KG (accuracy, vetoes); JSON to bench/results/")
    from bench.claims import add_arguments as add_claims_arguments

    add_claims_arguments(claims)
    llama = bench_cmds.add_parser("llama", help="the knowledge build's cost per item with the portable and the "
                                  "AVX-512 llama-cpp, alternating rounds (s/item, prompt tokens/s, same records?); "
                                  "JSON to bench/results/")
    from bench.llama import add_arguments as add_llama_arguments

    add_llama_arguments(llama)

    bench_behavior = bench_cmds.add_parser(
        "behavior", help="implicit path: ranker with vs without inferred behaviours (median of seeds, overall and "
                         "sparse users), the beyond-log recovery test, sampler speed; JSON to bench/results/")
    _add_data_args(bench_behavior)
    _add_train_args(bench_behavior)
    bench_behavior.add_argument("--part", nargs="+", default=["ablation", "beyond-log", "speed"],
                                choices=["ablation", "beyond-log", "speed"])
    bench_behavior.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    bench_behavior.add_argument("--behavior-config", default=None, help="behaviour YAML (default: "
                                "inference/behavior/configs/behavior-<dataset>.yaml)")
    bench_behavior.add_argument("--knowledge-init", action="store_true",
                                help="ablation: start item tokens from the knowledge embeddings")
    bench_behavior.add_argument("--test-share", type=float, default=0.5,
                                help="beyond-log: share of the eligible users whose personal slice is half hidden "
                                "(bench/beyond_log.py)")
    bench_behavior.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128, 1024])
    bench_behavior.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    bench_behavior.add_argument("--speed-dim", type=int, default=None, help="speed: model width (default: config)")
    bench_behavior.add_argument("--repeats", type=int, default=5)
    bench_behavior.add_argument("--out", default="bench/results", help="folder for the JSON results")

    stream = commands.add_parser("stream", help="the streaming pipeline: Kafka → PyFlink → Ray Serve → Kafka")
    stream_cmds = stream.add_subparsers(dest="stream_command", required=True, metavar="PART")
    run = stream_cmds.add_parser("run", help="everything together: Kafka, Serve, the Flink job, a replay, "
                                 "live progress, a few users' recommendations")
    _add_stream_args(run)
    run.add_argument("--rate", type=float, default=500.0, help="replay rate in events/s (default 500)")
    run.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    kafka = stream_cmds.add_parser("kafka", help="start the embedded Kafka with the topics; Ctrl-C stops it")
    kafka.add_argument("--partitions", type=int, default=4)
    serve_cmd = stream_cmds.add_parser("serve", help="start Ray Serve with the Ranker app; Ctrl-C stops it")
    serve_cmd.add_argument("--artifact", default="ml-100k", help="ranker artifact (default: latest ml-100k)")
    serve_cmd.add_argument("--port", type=int, default=8000)
    job = stream_cmds.add_parser("job", help="run the Flink job against a running Kafka and Serve")
    _add_stream_args(job)
    job.add_argument("--serve-url", required=True, help="the Ranker route, e.g. http://127.0.0.1:8000/rank")
    replay_cmd = stream_cmds.add_parser("replay", help="replay ML-100K ratings as events into Kafka")
    replay_cmd.add_argument("--bootstrap-servers", required=True)
    replay_cmd.add_argument("--rate", type=float, default=1000.0, help="events/s (0 = as fast as possible)")
    replay_cmd.add_argument("--speedup", type=float, default=None, help="follow the data's clock, N× faster "
                            "(instead of --rate)")
    replay_cmd.add_argument("--limit", type=int, default=None)

    bench_knowledge = bench_cmds.add_parser(
        "knowledge", help="the ReaSeq ablation: IDs only, + knowledge, + inferred behaviours, + both, on the same "
                          "seeds and epoch budget (medians, paired bootstrap CIs; all users, sparse users, tail and "
                          "cold items; the goals judged), and the online intent composition's cost per user; JSON "
                          "to bench/results/")
    from bench.knowledge import add_arguments as add_knowledge_bench_arguments

    add_knowledge_bench_arguments(bench_knowledge)
    gpu_kit = bench_cmds.add_parser(
        "gpu-kit", help="fill a folder (default .gpu) that runs the knowledge ablation on a bare GPU machine: the "
                        "exported sequences, the knowledge embeddings, the wheels its image lacks and a run.sh that "
                        "trains within a time budget and packs the finished runs to resume from")
    from bench.gpu_kit import add_arguments as add_gpu_kit_arguments

    add_gpu_kit_arguments(gpu_kit)
    bench_stream = bench_cmds.add_parser(
        "stream", help="Kafka passthrough ceiling vs the pipeline's sustained events/s and event→score latency "
                       "at fixed rates, both output modes; median of runs; JSON to bench/results/stream.json")
    from bench.stream import add_arguments as add_stream_bench_arguments

    add_stream_bench_arguments(bench_stream)

    knowledge = commands.add_parser("knowledge", help="offline LLM agents: item knowledge, embeddings, intents")
    from inference.knowledge.commands import add_arguments as add_knowledge_arguments

    add_knowledge_arguments(knowledge)

    cluster = commands.add_parser("cluster", help="a real cluster on this machine: 3 Kafka brokers, a Flink "
                                  "session cluster, a Ray cluster, the job submitted to it (up, status, down)")
    from streaming.local.commands import add_arguments as add_cluster_arguments
    from streaming.local.commands import add_nemesis_arguments, add_soak_arguments

    add_cluster_arguments(cluster)
    nemesis = bench_cmds.add_parser("nemesis", help="faults under load on the local cluster: SIGKILLed "
                                    "TaskManagers, Kafka leaders and Ray workers during a steady replay, the "
                                    "outputs checked against the inputs (lost, duplicated, recovery times)")
    add_nemesis_arguments(nemesis)
    soak = bench_cmds.add_parser("soak", help="the local cluster under a steady replay for a long while: memory "
                                 "of every process, consumer lag, event→score p99 and checkpoint sizes over time, "
                                 "a plot, and a loss check")
    add_soak_arguments(soak)

    deploy = commands.add_parser("deploy", help="build the container images and rehearse the deployment here")
    deploy_cmds = deploy.add_subparsers(dest="deploy_command", required=True)
    for name, text in (("images", "build the Flink and Ray images with buildah and smoke-test them (make images)"),
                       ("rehearse", "run the job and Serve from the rendered manifests inside the images")):
        sub = deploy_cmds.add_parser(name, help=text, add_help=False)  # --help goes to the module's own parser
        sub.add_argument("rest", nargs=argparse.REMAINDER)

    from reaseq import demo as demo_module

    demo = commands.add_parser("demo", help=demo_module.HELP, description=demo_module.HELP)
    demo_module.add_arguments(demo, _add_train_args)
    return parser


def _add_behavior_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML with model/train/sampling sections "
                        "(default: inference/behavior/configs/behavior-<dataset>.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget of the training run")
    parser.add_argument("--knowledge-init", action=argparse.BooleanOptionalAction, default=None,
                        help="start item tokens from the latest knowledge embeddings (default: config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_stream_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", default=None,
                        help="your Kafka (host:port,…); default: start an embedded one on 127.0.0.1")
    parser.add_argument("--artifact", default="ml-100k", help="ranker artifact (default: latest ml-100k)")
    parser.add_argument("--mode", default="low-latency", choices=["low-latency", "transactional"],
                        help="low-latency: at-least-once, outputs visible at once, consumers drop replays "
                             "by per-user version; transactional: exactly-once, visible at each checkpoint")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=2000)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "deploy":  # its options (and --help) belong to deploy/images.py, rehearse.py
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka.coordinator.consumer").setLevel(logging.ERROR)  # "group_id is None" every poll
    for noisy in ("kafka", "ray", "py4j"):  # their INFO lines would drown the progress line
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from ranking.config import ConfigError
    from ranking.data import DatasetError

    handlers = {"data": _data, "train": _train, "infer": _infer, "evaluate": _evaluate, "bench": _bench, "demo": _demo,
                "stream": _stream, "knowledge": _knowledge, "deploy": _deploy, "cluster": _cluster}
    try:
        return handlers[args.command](args)
    except (DatasetError, ConfigError, FileNotFoundError, ValueError) as error:
        print(f"reaseq: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reaseq: interrupted", file=sys.stderr)
        return 130


def _data(args: argparse.Namespace) -> int:
    from ranking.data import fetch_ml100k, load_dataset
    from ranking.splits import build_sequences

    if args.data_command == "fetch":
        if args.name == "ml-100k" and not args.data_dir:
            print(f"MovieLens-100K verified in {fetch_ml100k()}")
        else:
            dataset = load_dataset(args.name, args.data_dir)
            print(f"{args.name} verified: {len(dataset.interactions):,} interactions")
        return 0
    dataset = load_dataset(args.dataset, args.data_dir)
    data = build_sequences(dataset)
    if args.data_command == "export":
        from ranking.splits import save_sequences

        path = save_sequences(data, Path(args.out))
        print(f"{len(data.user_ids)} users' sequences of {dataset.name} written to {path}")
        return 0
    lengths = sorted(len(s) for s in data.sequences)
    print(json.dumps({
        "dataset": dataset.name, "fingerprint": dataset.fingerprint,
        "interactions": len(dataset.interactions), "users": len(data.user_ids), "items": data.num_items,
        "items_with_freebase_link": int(dataset.items.freebase_id.notna().sum()),
        "kg_triples": 0 if dataset.kg is None else len(dataset.kg),
        "sequence_length": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
        "split": {"train_items": sum(lengths) - 2 * len(lengths), "valid": len(lengths), "test": len(lengths)},
    }, indent=2))
    return 0


def _train_config(args: argparse.Namespace, dataset: str):
    from ranking.config import load_train_config

    return load_train_config(args.config, dataset, epochs=args.epochs, device=args.device,
                             max_seconds=args.max_seconds, seed=getattr(args, "seed", None))


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ranking.experiment import load_sequences, train_and_save

    if args.model == "behavior":
        return _train_behavior(args)
    from inference.knowledge.embeddings import knowledge_training_inputs

    cfg = _train_config(args, args.dataset)
    if args.knowledge:
        cfg = replace(cfg, knowledge=None if args.knowledge == "none" else args.knowledge)
    data = load_sequences(args.dataset, args.data_dir)
    run = train_and_save(data, cfg, progress=not args.quiet,
                         **knowledge_training_inputs(data.dataset, data.item_ids, cfg.knowledge))
    print(f"saved {run.artifact.path} (best epoch {run.artifact.metrics['best_epoch']}, knowledge "
          f"{run.artifact.config.get('embeddings_version') or 'off'})")
    print(_metrics_line("valid", run.valid))
    print(_metrics_line("test", run.test))
    return 0


def _train_behavior(args: argparse.Namespace) -> int:
    if args.rft:
        return _tune_behavior(args)
    from bench.behavior import knowledge_matrix
    from inference.behavior.train import load_behavior_config, save_behavior, train_behavior
    from ranking.experiment import dataset_record, load_sequences

    cfg = load_behavior_config(args.config, args.dataset, epochs=args.epochs, seed=args.seed, device=args.device,
                               max_seconds=args.max_seconds, knowledge_init=args.knowledge_init)
    data = load_sequences(args.dataset, args.data_dir)
    knowledge, version = knowledge_matrix(data) if cfg.knowledge_init else (None, None)
    result = train_behavior(data, cfg, knowledge, progress=not args.quiet)
    artifact = save_behavior(result, cfg, dataset_record(data), version)
    print(f"saved {artifact.path} (best epoch {result.best_epoch}, held-out recall@{result.model_config.slots} "
          f"{result.valid_recall:.4f}, knowledge {version or 'off'})")
    return 0


def _tune_behavior(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bench.behavior import plot_rft_curve
    from inference.behavior.rft import load_rft_config
    from inference.behavior.train import behavior_config_of, fine_tune, load_behavior_model, save_tuned_behavior
    from ranking.artifacts import load_artifact, resolve_artifact
    from ranking.experiment import load_ranker, load_sequences

    rft = load_rft_config(args.config, args.dataset)
    rft = replace(rft, **{k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None})
    parent = load_artifact(resolve_artifact(args.parent or args.dataset, kind="behavior"))
    data = load_sequences(args.dataset, args.data_dir)
    if parent.dataset.get("fingerprint") not in (None, data.fingerprint):
        raise ValueError(f"behaviour artifact {parent.version} was trained on other data than {args.dataset}")
    cfg = replace(behavior_config_of(parent), rft=rft)
    ranker, ranker_name = None, f"trained from {rft.reward_ranker}"
    if args.reward_ranker:
        ranker_artifact = load_artifact(resolve_artifact(args.reward_ranker))
        ranker, ranker_name = load_ranker(ranker_artifact, rft.device), ranker_artifact.version
    tuned = fine_tune(data, load_behavior_model(parent, rft.device), cfg, ranker, progress=not args.quiet)
    artifact = save_tuned_behavior(tuned, parent, rft, ranker_name)
    print(f"saved {artifact.path} (tuned from {parent.version}; greedy reward on fixed cuts "
          f"{tuned.eval_before:+.5f} -> {tuned.eval_after:+.5f}, {len(tuned.curve)} steps, {tuned.seconds:.0f} s)")
    if args.plot:
        print(f"wrote {plot_rft_curve(tuned.curve, args.plot, f'RFT of {parent.version}')}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    from inference.behavior.reasoner import BehaviorReasoner
    from ranking.data import load_dataset

    dataset = load_dataset(args.dataset, args.data_dir)
    reasoner = BehaviorReasoner.load(args.artifact or args.dataset, args.device)
    titles = dataset.title_of()
    histories = dataset.interactions.sort_values("timestamp", kind="stable").groupby("user_id").item_id.agg(list)
    missing = [u for u in args.user if u not in histories.index]
    if missing:
        raise ValueError(f"unknown user id(s) {missing} in {args.dataset} (ids look like {histories.index[0]!r})")
    sampling = reasoner.sampling_with(slots=args.slots, steps=args.steps, temperature=args.temperature,
                                      seed=args.seed)
    results = reasoner.infer([{"user_id": u, "recent_items": histories[u]} for u in args.user], sampling)
    print(f"behaviour model {reasoner.version}: K={sampling.slots}, S={sampling.steps}, "
          f"temperature {sampling.temperature}, seed {sampling.seed}")
    for user, result in zip(args.user, results, strict=True):
        history = histories[user]
        print(f"\nuser {user}: {len(history)} items in the log; latest:")
        for item in history[-8:]:
            print(f"   {titles.get(item, item)}")
        print("inferred beyond the log (confidence):")
        for item, confidence in zip(result["items"], result["confidence"], strict=True):
            print(f"   {titles.get(item, item)}  ({confidence:.3f})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ranking.artifacts import resolve_artifact
    from ranking.experiment import evaluate_artifact, evaluate_popularity, load_sequences

    data = load_sequences(args.dataset, args.data_dir)
    path = resolve_artifact(args.artifact or args.dataset)
    print(f"artifact {path}")
    print(_metrics_line("ranker", evaluate_artifact(path, data, args.split, args.device)))
    print(_metrics_line("popularity", evaluate_popularity(data, args.split)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "knowledge":
        from bench.knowledge import main_from_args as knowledge_bench

        return knowledge_bench(args)
    if args.bench == "behavior":
        return _bench_behavior(args)
    if args.bench == "gpu-kit":
        from bench.gpu_kit import main_from_args as gpu_kit

        return gpu_kit(args)
    if args.bench == "claims":
        from bench.claims import main_from_args as claims

        return claims(args)
    if args.bench == "llama":
        from bench.llama import main_from_args as llama

        return llama(args)
    if args.bench == "ranker-pass":
        from bench.ranker_pass import main_from_args as ranker_pass

        return ranker_pass(args)
    if args.bench == "compare":
        from bench.compare import main_from_args as compare

        return compare(args)
    if args.bench == "stream":
        from bench.stream import main_from_args

        return main_from_args(args)
    if args.bench == "nemesis":
        from streaming.local.commands import nemesis_main

        return nemesis_main(args)
    if args.bench == "soak":
        from streaming.local.commands import soak_main

        return soak_main(args)
    from bench.quality import markdown_table, run_quality, write_result
    from ranking.experiment import load_sequences

    cfg = _train_config(args, args.dataset)
    data = load_sequences(args.dataset, args.data_dir)
    result = run_quality(data, cfg, args.seeds, progress=not args.quiet)
    result["command"] = "reaseq " + " ".join(sys.argv[1:])
    print(markdown_table(result))
    print(f"\nmachine: {result['machine']}; wall time {result['wall_seconds']:.0f} s; "
          f"JSON: {write_result(result, Path(args.out))}")
    return 0


def _bench_behavior(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bench import behavior as bench
    from inference.behavior.model import BehaviorConfig
    from inference.behavior.train import load_behavior_config
    from ranking.data import load_dataset
    from ranking.experiment import dataset_record
    from ranking.splits import build_sequences

    command = "reaseq " + " ".join(sys.argv[1:])
    ranker_cfg = _train_config(args, args.dataset)
    behavior_cfg = load_behavior_config(args.behavior_config, args.dataset, device=args.device,
                                        knowledge_init=args.knowledge_init or None)
    dataset = load_dataset(args.dataset, args.data_dir)
    data = build_sequences(dataset)
    record = {"dataset": dataset_record(data), "command": command}
    if "ablation" in args.part:
        result = bench.run_ablation(data, ranker_cfg, behavior_cfg, args.seeds, progress=not args.quiet)
        path = bench.write_result({**record, **result}, args.out, f"behavior-ablation-{args.dataset}.json")
        print(bench.ablation_table(result) + f"\n({result['sparse_users']} sparse users; JSON: {path})\n")
    if "beyond-log" in args.part:
        from bench.beyond_log import beyond_log_table, run_beyond_log
        from inference.behavior.rft import load_rft_config

        genres_of = dict(zip(dataset.items.item_id, dataset.items.genres, strict=True))
        item_genres = [set()] + [set(genres_of.get(item, ())) for item in data.item_ids]
        if behavior_cfg.rft is None:
            behavior_cfg = replace(behavior_cfg, rft=load_rft_config(None, args.dataset))
        knowledge = bench.knowledge_matrix(data)[0]  # the knowledge-initialised variant runs when there is one
        result = run_beyond_log(data, item_genres, ranker_cfg, behavior_cfg, knowledge, args.test_share,
                                progress=not args.quiet)
        path = bench.write_result({**record, **result}, args.out, f"behavior-beyond-log-{args.dataset}.json")
        print(beyond_log_table(result) + f"\n({result['test_users']} test users, median "
              f"{result['hidden_per_user_median']:.0f} hidden items each; JSON: {path})\n")
    if "speed" in args.part:
        model_cfg = BehaviorConfig(num_items=data.num_items, **behavior_cfg.model)
        if args.speed_dim:
            model_cfg = replace(model_cfg, dim=args.speed_dim)
        device = bench.default_device() if behavior_cfg.device == "auto" else behavior_cfg.device
        result = bench.run_speed(model_cfg, args.batches, args.steps, model_cfg.max_history, args.repeats, device)
        path = bench.write_result({**record, **result}, args.out, f"behavior-speed-{device.split(':')[0]}.json")
        print(bench.speed_table(result) + f"\n(JSON: {path})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from reaseq.demo import run

    return run(args, _train_config)


def _stream(args: argparse.Namespace) -> int:
    if args.stream_command == "run":
        from streaming.runner import PipelineOptions, report_incomplete, run_pipeline

        summary = run_pipeline(PipelineOptions(artifact=args.artifact, rate=args.rate, limit=args.limit,
                                               mode=args.mode, bootstrap_servers=args.bootstrap_servers,
                                               checkpoint_interval_ms=args.checkpoint_interval_ms))
        return 1 if report_incomplete(summary) else 0
    if args.stream_command == "kafka":
        from streaming.kafka_broker import EmbeddedKafka
        from streaming.topics import TopicsConfig, ensure_topics

        with EmbeddedKafka() as kafka:
            ensure_topics(kafka.bootstrap_servers, TopicsConfig(partitions=args.partitions))
            print(f"Kafka ready: --bootstrap-servers {kafka.bootstrap_servers} (Ctrl-C stops it)", flush=True)
            _wait_forever()
        return 0
    if args.stream_command == "serve":
        from inference.serve.local import LocalServe

        with LocalServe(args.artifact, port=args.port) as served:
            print(f"Ranker {served.model_version} ready: --serve-url {served.url} (Ctrl-C stops it)", flush=True)
            _wait_forever()
        return 0
    if args.stream_command == "job":
        from ranking.artifacts import load_artifact, resolve_artifact
        from ranking.data import load_dataset
        from streaming.job import StreamConfig, run_job

        if not args.bootstrap_servers:
            raise ValueError("reaseq stream job needs --bootstrap-servers (start one with `reaseq stream kafka`)")
        dataset = load_dataset(load_artifact(resolve_artifact(args.artifact)).dataset["name"])
        run_job(StreamConfig(bootstrap_servers=args.bootstrap_servers, serve_url=args.serve_url,
                             known_items=list(dataset.items.item_id), mode=args.mode,
                             checkpoint_interval_ms=args.checkpoint_interval_ms))
        return 0
    from ranking.data import load_dataset
    from streaming.replay import ReplayConfig, interactions_to_events, replay

    events = interactions_to_events(load_dataset("ml-100k").interactions, args.limit)
    cfg = ReplayConfig(rate=None if args.speedup else (args.rate or None), speedup=args.speedup)
    sent = replay(events, args.bootstrap_servers, "reaseq.events", cfg,
                  lambda n: print(f"\rsent {n:,}/{len(events):,}", end="", flush=True))
    print(f"\nreplayed {sent:,} events")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    if args.deploy_command == "images":
        from deploy.images import main as images_main

        return images_main(args.rest)
    from deploy.rehearse import main as rehearse_main

    return rehearse_main(args.rest)


def _cluster(args: argparse.Namespace) -> int:
    from streaming.local.commands import main_from_args

    return main_from_args(args)


def _knowledge(args: argparse.Namespace) -> int:
    from inference.knowledge.commands import main_from_args

    return main_from_args(args)


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


def _metrics_line(label: str, metrics: dict[str, float]) -> str:
    return f"{label:>10}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


if __name__ == "__main__":
    raise SystemExit(main())
