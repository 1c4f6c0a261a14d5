"""Side-by-side performance of fmae on this machine: one run, tables with ratios.

    python -m benchmarks.performance                      # training paths, and the peer search
    python -m benchmarks.performance --search peer,default # + the search with every default
    python -m benchmarks.performance --train_images 0 --seeds 0,1,2  # the peer search over 3 seeds

1. Training throughput (benchmarks/training_paths.py): the seed's DataLoader loop, fmae's loop
   as it was and with channels-last weights and a fused optimiser in fp32 and bf16 (the one
   fmae trains with here marked), at n_channels 8 and 32.
2. The peer search: the search a user would write instead of fmae (benchmarks/seed_search.py:
   one process, plain Optuna with TPE and MedianPruner, a DataLoader) beside `fmae tune`, both as
   fresh processes on the same space, start points and budget (10 trials x 5 epochs on 10,000
   images); wall time, best val and test loss, and best val_loss against wall-clock seconds
   (--figure). On the CPU, also each fmae search's floor: its trials' training and validation
   alone, timed again on one thread each and shared among the cores (compute_floor). With
   --seeds, both searches run with each seed, and the best val_loss is compared over them: one
   seed's pair cannot say which search finds the better model.

Timings are wall-clock and noisy: run it on a quiet machine and read the ratios.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

from benchmarks import training_paths

ROOT = Path(__file__).resolve().parents[1]
PEER = "seed's way (one process, Optuna, DataLoader)"
PEER_BUDGET = {"trials": 10, "epochs": 5, "train_subset": 10_000}
SEARCHES = {  # name -> extra `fmae tune` flags
    "small": ["--num_samples", "8", "--max_epochs", "3", "--grace_period", "1", "--train_subset", "5000"],
    "default": [],
}


def environment(tmp: str) -> dict:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        "MLFLOW_EXPERIMENT_NAME": "bench",
        "PYTHONPATH": str(ROOT),
    }


def fmae_search(flags: list[str], device: str, extra: list[str]) -> dict:
    """`python -m experiments tune` in a fresh folder and store, as a user runs it; its best
    val_loss so far at each epoch any trial reported, in seconds since the command started."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "experiments",
            "tune",
            *flags,
            "--device",
            device,
            "--storage_path",
            f"{tmp}/ray",
            "--register_as",
            "bench-encoder",
            *extra,
        ]
        started = time.time()
        result = subprocess.run(cmd, cwd=tmp, env=environment(tmp), capture_output=True, text=True)
        wall = time.time() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id], max_results=1000)
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        epochs = sorted(
            (m.timestamp / 1000 - started, m.value)
            for r in runs
            if r is not parent
            for m in client.get_metric_history(r.info.run_id, "val_loss")
        )
        statuses = [r.data.tags.get("fmae.pruned") == "true" for r in runs if r is not parent]
        floor = compute_floor(client, [r for r in runs if r is not parent], tmp) if device == "cpu" else None
    curve, best = [], float("inf")
    for seconds, value in epochs:
        best = min(best, value)
        curve.append((seconds, best))
    m = parent.data.metrics
    return {
        "wall_seconds": wall,
        "search_seconds": m.get("search_seconds"),
        "best_val_loss": m.get("best_val_loss"),
        "best_test_loss": m.get("best_test_loss"),
        "finished": statuses.count(False),
        "pruned": statuses.count(True),
        "concurrent_trials": parent.data.params.get("concurrent_trials"),
        "curve": curve,
        "floor_seconds": floor,
    }


def compute_floor(client: mlflow.MlflowClient, trials, tmp: str) -> float:
    """The search's own training and validation: each trial's epochs as it ran them, timed here
    one after another on one thread (what each of fmae's trials has), then shared among the
    cores. No implementation of the same schedule (the same trials, each as many epochs) could
    take less on this machine; what fmae's search spends above it is processes, imports,
    tracking, figures and models."""
    from experiments import train_cae
    from experiments.data import load_fashion_mnist
    from experiments.tracking.mlflow_compat import TRIAL_CONFIG_FILE

    data = load_fashion_mnist(train_subset=PEER_BUDGET["train_subset"], seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = train_cae.Config(epochs=1, train_subset=PEER_BUDGET["train_subset"], device="cpu")
        train_cae.train_autoencoder(base, data, report=lambda *_: None)  # first-use costs: not the schedule's
        seconds = 0.0
        for run in trials:
            epochs = len(client.get_metric_history(run.info.run_id, "val_loss"))
            config = json.loads(Path(client.download_artifacts(run.info.run_id, TRIAL_CONFIG_FILE, tmp)).read_text())
            started = time.perf_counter()
            train_cae.train_autoencoder(dataclasses.replace(base, **config), data, report=lambda *_: None)
            seconds += epochs * (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return seconds / (os.cpu_count() or 1)


def seed_search(seed: int) -> dict:
    """benchmarks/seed_search.py as a fresh process, on the peer budget."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "seed.json")
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.seed_search",
            "--json",
            str(out),
            *[f"--{k}={v}" for k, v in PEER_BUDGET.items()],
            f"--seed={seed}",
        ]
        started = time.time()
        subprocess.run(cmd, cwd=ROOT, env=environment(tmp), check=True, capture_output=True, text=True)
        result = json.loads(out.read_text())
        result["wall_seconds"] = time.time() - started
    return result


def plot_time_to_quality(rows: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, row in rows.items():
        seconds, best = zip(*row["curve"]) if row["curve"] else ((), ())
        ax.step(seconds, best, where="post", label=f"{name} (ends at {row['wall_seconds']:.0f} s)")
    ax.set_xlabel("wall-clock seconds since the command started")
    ax.set_ylabel("best val_loss so far (MSE per pixel)")
    ax.set_yscale("log")
    ax.set_title(
        f"Time to a good model: {PEER_BUDGET['trials']} trials x {PEER_BUDGET['epochs']} epochs, "
        f"{PEER_BUDGET['train_subset']:,} images"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize="small")  # below: curves start top left
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_training(rows: list[dict]) -> None:
    print(f"\ntraining, one Adam epoch of the CAE (d=14, batch 256), {torch.get_num_threads()} threads")
    print(f"{'c':>3}  {'path':<50}{'images/s':>10}{'vs before':>11}")
    for row in rows:
        print(f"{row['c']:>3}  {row['path']:<50}{row['images_per_s']:>10.0f}{row['ratio']:>10.2f}x")


def print_searches(rows: dict[str, dict]) -> None:
    """Each search's row; its speed-up against the peer search of its seed (the first one's for
    searches of another budget)."""
    print(f"\nsearch{'':<40}{'wall s':>8}{'best val':>10}{'best test':>11}{'finished/stopped':>18}{'speed-up':>10}")
    peers = [row for name, row in rows.items() if name.startswith(PEER)]
    for name, row in rows.items():
        peer = row if name.startswith(PEER) else row.get("peer") or (peers[0] if peers else None)
        ratio = f"{peer['wall_seconds'] / row['wall_seconds']:.2f}x" if peer else "-"
        print(
            f"{name:<46}{row['wall_seconds']:>8.1f}{row['best_val_loss']:>10.5f}{row['best_test_loss']:>11.5f}"
            f"{row['finished']:>10}/{row['pruned']:<7}{ratio:>10}"
        )
        if row.get("floor_seconds"):
            floor = row["floor_seconds"]
            ceiling = f"{peer['wall_seconds'] / floor:.2f}x" if peer else "-"
            print(
                f"  {'its trials training and validating alone':<44}{floor:>8.1f}{'':<39}{ceiling:>10}"
                f"   (the floor: above it, {row['wall_seconds'] - floor:.1f} s of overhead)"
            )


def across_seeds(pairs: list[tuple[dict, dict]]) -> dict:
    """The peer and fmae searches over several seeds: what one seed's pair cannot say."""
    ratios = sorted(peer["wall_seconds"] / fmae["wall_seconds"] for peer, fmae in pairs)
    summary = {"seeds": len(pairs), "speed_up_median": statistics.median(ratios), "speed_ups": ratios}
    for who, index in (("peer", 0), ("fmae", 1)):
        values = [pair[index]["best_val_loss"] for pair in pairs]
        summary[f"{who}_best_val_mean"] = statistics.mean(values)
        summary[f"{who}_best_val_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary["fmae_better"] = sum(fmae["best_val_loss"] <= peer["best_val_loss"] for peer, fmae in pairs)
    return summary


def print_across_seeds(summary: dict) -> None:
    n = summary["seeds"]
    print(
        f"\nover {n} seeds: best val_loss, the seed's way {summary['peer_best_val_mean']:.5f} ± "
        f"{summary['peer_best_val_std']:.5f}, fmae {summary['fmae_best_val_mean']:.5f} ± "
        f"{summary['fmae_best_val_std']:.5f} (fmae's as good or better in {summary['fmae_better']} of {n}); "
        f"speed-up median {summary['speed_up_median']:.2f}x "
        f"({', '.join(f'{r:.2f}x' for r in summary['speed_ups'])})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--train_images", type=int, default=20_000, help="images per timed training epoch")
    parser.add_argument("--search", default="peer", help=f"comma-separated, from: peer, {', '.join(SEARCHES)}, none")
    parser.add_argument(
        "--tune_args", default="", help="extra flags for every fmae search, e.g. '--gpus_per_trial 0.25'"
    )
    parser.add_argument(
        "--seeds", default="0", help="comma-separated: the peer search and fmae's, each with every seed (e.g. 0,1,2)"
    )
    parser.add_argument("--figure", default="time_to_quality.png", help="where the peer search's figure goes")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the floor reads each trial's config
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    print(
        f"device {device} ({torch.cuda.get_device_name() if cuda else f'{os.cpu_count()} CPUs'}), "
        f"torch {torch.__version__}",
        flush=True,
    )
    training = training_paths.measure(device, args.train_images) if args.train_images else []
    print_training(training)
    searches, pairs, wanted = {}, [], [s.strip() for s in args.search.split(",") if s.strip() not in ("", "none")]
    if "peer" in wanted:
        flags = [
            "--num_samples",
            str(PEER_BUDGET["trials"]),
            "--max_epochs",
            str(PEER_BUDGET["epochs"]),
            "--grace_period",
            "1",
            "--train_subset",
            str(PEER_BUDGET["train_subset"]),
        ]
        seeds = [int(seed) for seed in args.seeds.split(",")]
        for seed in seeds:
            suffix = f", seed {seed}" if len(seeds) > 1 else ""
            peer = seed_search(seed)
            fmae = fmae_search([*flags, "--seed", str(seed)], str(device), args.tune_args.split())
            searches[PEER + suffix] = peer
            searches["fmae tune " + " ".join(flags) + suffix] = {**fmae, "peer": peer}
            pairs.append((peer, fmae))
            if seed == seeds[0]:
                plot_time_to_quality({PEER: peer, "fmae tune " + " ".join(flags): fmae}, args.figure)
    for name in [w for w in wanted if w != "peer"]:
        searches[f"fmae tune ({name})"] = fmae_search(SEARCHES[name], str(device), args.tune_args.split())
    summary = across_seeds(pairs) if len(pairs) > 1 else None
    if searches:
        print_searches(searches)
    if summary:
        print_across_seeds(summary)
    if args.json:
        rows = {name: {k: v for k, v in row.items() if k != "peer"} for name, row in searches.items()}
        out = {"device": str(device), "training": training, "searches": rows, "across_seeds": summary}
        Path(args.json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
