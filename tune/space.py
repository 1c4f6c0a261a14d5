"""What the search explores. Keys are train_cae's parameter names: nothing is translated.

SPACE is the one list of searched hyperparameters (the parallel-coordinates plot, the parent
run's best_* params and the start points read their names from it), and `define_space` is
Optuna's define-by-run view of it: a hyperparameter with a condition exists only in trials that
meet it, so `momentum` is sampled, logged and scored only for the optimisers that read it.
"""

import dataclasses

from optuna.distributions import CategoricalDistribution, FloatDistribution

from experiments import train_cae
from experiments.training import OPTIMIZERS

SEARCHED_OPTIMIZERS = ("adam", "sgd", "rmsprop")
SPACE = {
    "encoded_space_dim": CategoricalDistribution([4, 6, 8, 10, 12, 14, 16]),  # small codes, as in the seed
    "n_channels": CategoricalDistribution([4, 8, 12, 16, 24, 32]),  # wider costs ~quadratically more compute
    "optimizer": CategoricalDistribution(SEARCHED_OPTIMIZERS),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-3, log=True),
    "momentum": FloatDistribution(0.5, 0.99),
    "batch_size": CategoricalDistribution([64, 128, 256, 512]),
    "batch_norm": CategoricalDistribution([False, True]),  # not the seed's; added to the contract's list
}
SEARCHED = tuple(SPACE)
# momentum only where the optimiser reads it (experiments.training.OPTIMIZERS says which do)
CONDITIONS = {"momentum": lambda params: OPTIMIZERS[params["optimizer"]][1]}


def applies(name: str, params: dict) -> bool:
    """Whether a trial with params (those decided before name, in SPACE's order) uses name."""
    return name not in CONDITIONS or CONDITIONS[name](params)


def define_space(trial) -> None:
    """Optuna's define-by-run space (also what Ray's OptunaSearch takes as `space`)."""
    params = {}
    for name, distribution in SPACE.items():
        if not applies(name, params):
            continue
        if isinstance(distribution, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            params[name] = trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)


def used_params(config: dict) -> dict:
    """The searched hyperparameters a trial with config really used."""
    return {k: config[k] for k in SEARCHED if k in config and applies(k, config)}


# The seed study's best configuration, which train_cae's defaults are, evaluated first so the
# search starts from it.
SEED_BEST = used_params({f.name: f.default for f in dataclasses.fields(train_cae.Config) if f.name in SPACE})

# Where the search starts: the seed's best, and the same optimiser with a wider, normalised
# encoder, which `train_cae` measured at test_loss 0.0117 (the seed family's best: 0.0124) and
# which fine-tunes into a 0.92 classifier. TPE alone rarely reaches that corner in 20 trials.
START_POINTS = [SEED_BEST, {**SEED_BEST, "n_channels": 32, "batch_norm": True}]


def check_start_points(points: list[dict]) -> None:
    """Every start point sets exactly the names that apply to it, each to a value the space holds."""
    for point in points:
        if point != used_params(point) or set(point) != {k for k in SPACE if applies(k, point)}:
            raise ValueError(f"start point {point} does not set exactly the searched names that apply to it")
        outside = {k: v for k, v in point.items() if not SPACE[k]._contains(SPACE[k].to_internal_repr(v))}
        if outside:
            raise ValueError(f"start point {point} lies outside the search space at {outside}")


check_start_points(START_POINTS)
