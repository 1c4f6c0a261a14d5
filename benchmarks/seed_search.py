"""The search a user would write instead of fmae: the seed notebook's way, on fmae's search space.

One process; plain Optuna (TPE seeded, MedianPruner) over the same hyperparameters
(tune/space.py's define_space, momentum only for sgd and rmsprop) from the same start points;
the same CAE, trained with torch.optim's defaults on a torchvision DataLoader over the same
training subset and validation hold-out. benchmarks/performance.py runs it beside `fmae tune` on
the same budget; on its own:

    python -m benchmarks.seed_search --trials 10 --epochs 5 --train_subset 10000 --json out.json
"""

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import torch
from torch.nn import functional as F

from experiments.data import FILES, N_TRAIN, VAL_SIZE, find_data_dir
from fmae_models import CAE, CAEConfig
from tune.space import START_POINTS, define_space

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}


def seconds_since_start() -> float:
    """Since this process began: interpreter start and imports count, as they do for `fmae tune`."""
    return time.time() - psutil.Process().create_time()


def datasets(root: str, train_subset: int, seed: int):
    """torchvision's FashionMNIST over the four files, split as fmae splits it (experiments/data.py)."""
    from torchvision import datasets as tv
    from torchvision import transforms

    raw = Path(root, "FashionMNIST", "raw")
    raw.mkdir(parents=True)
    for name in FILES.values():  # torchvision reads the four files gunzipped, as its downloader leaves them
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((find_data_dir() / name).read_bytes()))
    train = tv.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    test = tv.FashionMNIST(root, train=False, transform=transforms.ToTensor())
    order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed)).tolist()
    subset = order[VAL_SIZE:][: train_subset or None]
    return torch.utils.data.Subset(train, subset), torch.utils.data.Subset(train, order[:VAL_SIZE]), test


@torch.no_grad()
def mean_loss(model, loader) -> float:
    model.eval()
    total, seen = 0.0, 0
    for images, _ in loader:
        total += F.mse_loss(model(images), images, reduction="sum").item() / 784
        seen += len(images)
    return total / seen


def search(trials: int, epochs: int, train_subset: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        train, val, test = datasets(root, train_subset, seed)
        val_loader = torch.utils.data.DataLoader(val, batch_size=1024)
        curve, best = [], {"val": float("inf"), "state": None, "config": None}

        def objective(trial):
            define_space(trial)
            p = trial.params
            torch.manual_seed(seed)
            model = CAE(
                CAEConfig(
                    n_channels=p["n_channels"], encoded_space_dim=p["encoded_space_dim"], batch_norm=p["batch_norm"]
                )
            )
            extra = {"momentum": p["momentum"]} if "momentum" in p else {}
            optimizer = OPTIMIZERS[p["optimizer"]](
                model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"], **extra
            )
            loader = torch.utils.data.DataLoader(train, batch_size=p["batch_size"], shuffle=True)
            for epoch in range(1, epochs + 1):
                model.train()
                for images, _ in loader:
                    loss = F.mse_loss(model(images), images)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                val_loss = mean_loss(model, val_loader)
                if val_loss < best["val"]:
                    best.update(
                        val=val_loss, state={k: v.clone() for k, v in model.state_dict().items()}, config=model.config
                    )
                curve.append((seconds_since_start(), best["val"]))
                trial.report(val_loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return val_loss

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner())
        for point in START_POINTS:
            study.enqueue_trial(point)
        study.optimize(objective, n_trials=trials)
        model = CAE(best["config"])
        model.load_state_dict(best["state"])
        test_loss = mean_loss(model, torch.utils.data.DataLoader(test, batch_size=1024))
    states = [t.state.name for t in study.trials]
    return {
        "wall_seconds": seconds_since_start(),
        "best_val_loss": best["val"],
        "best_test_loss": test_loss,
        "finished": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train_subset", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the result here")
    args = parser.parse_args(argv)
    result = search(args.trials, args.epochs, args.train_subset, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print({k: v for k, v in result.items() if k != "curve"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
