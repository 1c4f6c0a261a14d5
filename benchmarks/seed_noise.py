"""Does a search's pick survive other seeds? The top trials of a search, retrained over seeds.

A search ranks configurations on one seed each. This takes a finished search's best trials of
distinct architectures, trains each configuration again with N seeds (same data, same epochs, the
same `train_cae.train_autoencoder` the trials ran), and prints mean ± std of test_loss per
configuration, and whether the mean would have picked another one than the search did.

    python -m benchmarks.seed_noise --search_run RUN_ID --top 3 --seeds 3
"""

import argparse
import dataclasses
import statistics
import time

from experiments import train_cae
from experiments.data import load_fashion_mnist
from experiments.tracking.queries import best_trials, get_run
from tune.space import SEARCHED


def trial_config(trial, base: train_cae.Config) -> train_cae.Config:
    params = {k: v for k, v in trial.data.params.items() if k in SEARCHED}
    typed = {
        k: type(getattr(base, k))(v) if not isinstance(getattr(base, k), bool) else v == "True"
        for k, v in params.items()
    }
    return dataclasses.replace(base, **typed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search_run", required=True, help="the tune run (parent) whose trials to re-run")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    search = get_run(args.search_run)
    p = search.data.params
    base = train_cae.Config(train_subset=int(p["train_subset"]), epochs=int(p["max_epochs"]), seed=int(p["seed"]))
    data = load_fashion_mnist(train_subset=base.train_subset, seed=base.seed)  # the search's split
    rows = []
    for trial in best_trials(args.search_run, args.top):
        config, losses = trial_config(trial, base), []
        for seed in range(1, args.seeds + 1):  # seed 0 is the search's own run
            started = time.time()
            model = train_cae.train_autoencoder(dataclasses.replace(config, seed=seed), data, lambda e, m: None)
            losses.append(train_cae.test_loss(model, data.test))
            print(
                f"{trial.info.run_name} seed {seed}: test_loss {losses[-1]:.5f} ({time.time() - started:.0f} s)",
                flush=True,
            )
        losses.insert(0, trial.data.metrics["test_loss"])
        rows.append((trial.info.run_name, trial.data.metrics["val_loss"], losses))
    print(f"\n{'trial':<26}{'search val_loss':>16}{'test_loss, its seed':>21}{'mean ± std over seeds':>26}")
    for name, val, losses in rows:
        print(
            f"{name:<26}{val:>16.5f}{losses[0]:>21.5f}{statistics.mean(losses):>15.5f} ± {statistics.stdev(losses):.5f}"
        )
    by_search, by_mean = rows[0][0], min(rows, key=lambda r: statistics.mean(r[2]))[0]
    print(f"\nthe search picked {by_search}; the mean over {args.seeds + 1} seeds picks {by_mean}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
