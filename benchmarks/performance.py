"""Side-by-side performance of fmae on this machine: one run, one table, ratios.

    python -m benchmarks.performance                        # training paths + a small search
    python -m benchmarks.performance --search small,default  # + the search with its defaults

Rows:
- seed-style training: torchvision FashionMNIST + ToTensor + DataLoader (batch 256, shuffled),
  the seed's CAE, Adam — the notebook's loop;
- fmae's training path: the same model and optimiser on fmae's in-memory tensors
  (experiments.training.train_epoch, what train_cae and every trial run);
- fmae's search, run as a user runs it (`python -m experiments tune ...`), once as fmae
  starts trials and once with Ray Tune's default of one pending trial
  (TUNE_MAX_PENDING_TRIALS_PG=1), which started trials one after another.

Timings are wall-clock and noisy: run it on a quiet machine and read the ratios.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from torch.nn import functional as F

from experiments.data import FILES, find_data_dir, load_fashion_mnist
from experiments.training import epoch_generator, train_epoch
from fmae_models import CAE, CAEConfig

ROOT = Path(__file__).resolve().parents[1]
SEARCHES = {  # name -> (tune flags, extra environment)
    "small": (["--num_samples", "8", "--max_epochs", "3", "--grace_period", "1", "--train_subset", "5000"], {}),
    "small-one-pending": (
        ["--num_samples", "8", "--max_epochs", "3", "--grace_period", "1", "--train_subset", "5000"],
        {"TUNE_MAX_PENDING_TRIALS_PG": "1"},
    ),
    "default": ([], {}),
}


def seed_model(device: torch.device):
    torch.manual_seed(0)
    model = CAE(CAEConfig(n_channels=8, encoded_space_dim=14)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seed_style_epoch(device: torch.device, n_images: int) -> dict:
    """The notebook's loop: a torchvision dataset decoded image by image through a DataLoader."""
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        raw = Path(root, "FashionMNIST", "raw")
        raw.mkdir(parents=True)
        source = find_data_dir()
        for name in FILES.values():  # torchvision reads the same four files, gunzipped as its downloader leaves them
            (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((source / name).read_bytes()))
        started = time.perf_counter()
        dataset = datasets.FashionMNIST(root, train=True, download=False, transform=transforms.ToTensor())
        dataset = torch.utils.data.Subset(dataset, range(n_images))
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True)
        model, optimizer = seed_model(device)
        model.train()
        sync(device)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for images, _ in loader:
            images = images.to(device)
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the notebook logs each batch's loss
        sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": n_images / seconds, "epoch_seconds": seconds, "load_seconds": load_seconds}


def fmae_epoch(device: torch.device, n_images: int) -> dict:
    """fmae's path: the data held as tensors on the device, batches sliced from them."""
    started = time.perf_counter()
    data = load_fashion_mnist(train_subset=n_images).to(device)
    model, optimizer = seed_model(device)
    sync(device)
    load_seconds = time.perf_counter() - started
    loss = lambda model, images, labels: F.mse_loss(model(images), images)  # noqa: E731
    train_epoch(model, loss, optimizer, data.train, 256, epoch_generator(0, 0))  # warm-up: allocator, cuDNN
    sync(device)
    started = time.perf_counter()
    train_epoch(model, loss, optimizer, data.train, 256, epoch_generator(0, 1))
    sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": len(data.train) / seconds, "epoch_seconds": seconds, "load_seconds": load_seconds}


def run_search(name: str, flags: list[str], env: dict, device: str, extra: list[str]) -> dict:
    """`python -m experiments tune` in a fresh folder and store, as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
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
        environment = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_EXPERIMENT_NAME": "bench",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        started = time.perf_counter()
        result = subprocess.run(cmd, cwd=tmp, env=environment, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("bench")
        (parent,) = [
            r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
        ]
        metrics = parent.data.metrics
    return {
        "search": name,
        "wall_seconds": wall,
        "search_seconds": metrics.get("search_seconds"),
        "seconds_to_first_epoch": metrics.get("seconds_to_first_epoch"),
        "trial_start_seconds": metrics.get("median_trial_start_seconds"),
        "peak_concurrent_trials": metrics.get("peak_concurrent_trials"),
        "concurrent_trials": parent.data.params.get("concurrent_trials"),
        "best_test_loss": metrics.get("best_test_loss"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--train_images", type=int, default=50_000, help="images per timed training epoch")
    parser.add_argument(
        "--search", default="small,small-one-pending", help=f"comma-separated, from: {', '.join(SEARCHES)}, none"
    )
    parser.add_argument("--tune_args", default="", help="extra flags for every search, e.g. '--cpus_per_trial 0.5'")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{os.cpu_count()} CPUs'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    seed = seed_style_epoch(device, args.train_images)
    ours = fmae_epoch(device, args.train_images)
    print("\ntraining, one epoch of the seed's CAE (c=8, d=14), Adam, batch 256")
    print(f"{'path':<34}{'images/s':>10}{'epoch s':>9}{'load s':>8}{'ratio':>8}")
    for label, row in (("seed-style DataLoader (torchvision)", seed), ("fmae (tensors on the device)", ours)):
        print(
            f"{label:<34}{row['images_per_s']:>10.0f}{row['epoch_seconds']:>9.2f}{row['load_seconds']:>8.2f}"
            f"{row['images_per_s'] / seed['images_per_s']:>7.1f}x"
        )

    searches = []
    for name in [s.strip() for s in args.search.split(",") if s.strip() not in ("", "none")]:
        flags, env = SEARCHES[name]
        print(
            f"\nsearch '{name}': fmae tune {' '.join(flags) or '(defaults)'} {args.tune_args}"
            + "".join(f" [{k}={v}]" for k, v in env.items()),
            flush=True,
        )
        searches.append(run_search(name, flags, env, str(device), args.tune_args.split()))
    if searches:
        print(
            f"\n{'search':<22}{'wall s':>8}{'search s':>10}{'to 1st epoch s':>16}{'trial start s':>15}"
            f"{'at once':>9}{'best_test_loss':>16}"
        )
        for row in searches:

            def cell(key, fmt, row=row):
                return format(row[key], fmt) if row[key] is not None else "-"

            print(
                f"{row['search']:<22}{row['wall_seconds']:>8.1f}{cell('search_seconds', '>10.1f')}"
                f"{cell('seconds_to_first_epoch', '>16.1f')}{cell('trial_start_seconds', '>15.1f')}"
                f"{cell('peak_concurrent_trials', '>9.0f')}{cell('best_test_loss', '>16.5f')}"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": str(device), "seed_style": seed, "fmae": ours, "searches": searches}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
