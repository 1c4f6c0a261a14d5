"""Step `finetune`: the seed's classifier (section 1.4), a logged encoder plus a small head.

Three modes, comparable in one MLflow view (same metrics, tag `fmae.mode`):
frozen (the seed's fine-tuning: only the head learns), full (the encoder learns too, more
slowly) and scratch (the same encoder architecture from random weights: the supervised
baseline the seed compared against).
"""

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
from torch import nn

from experiments import plots
from experiments.classification import build_classifier, confusion_matrix, per_class_table, train
from experiments.config import CommonConfig, check_choice, check_named, check_positive
from experiments.errors import UserError
from experiments.step import open_step
from experiments.tracking.models import load_module, model_lineage
from experiments.tracking.runs import start_child_run
from experiments.tracking.step_run import StepRun
from experiments.training import seed_everything
from fmae_models import Classifier

STEP = "finetune"
ABOUT = (
    "fmae's FashionMNIST classifier: a logged encoder plus a small head, fine-tuned by `fmae finetune`. "
    "Input: float tensor (N, 1, 28, 28) in [0, 1]; output: (N, 10) log-probabilities."
)
MODES = ("frozen", "full", "scratch")
AUGMENTATIONS = ("none", "flip")


# What measured best from the search's champion, per mode (docs/finetune.md: frozen 0.864,
# full 0.913, scratch 0.911 on full data); a flag given by the user wins over these.
MODE_DEFAULTS = {
    "frozen": {"epochs": 100, "lr": 0.01, "augment": "none"},  # an epoch on codes is ~0.1 s; lr 0.001 stopped at 0.817
    "full": {"epochs": 15, "lr": 0.01, "augment": "flip"},
    "scratch": {"epochs": 15, "lr": 0.01, "augment": "flip"},
}


@dataclass(frozen=True)
class Config(CommonConfig):
    model_uri: str = "models:/fmae-cae-encoder@champion"  # the encoder to build on (any MLflow model URI)
    mode: str = "frozen"  # frozen: head only; full: encoder too; scratch: random encoder (baseline)
    epochs: int = 0  # passes over the training set; 0 = the mode's best measured (frozen 100, full and scratch 15)
    lr: float = 0.0  # Adam's peak rate (the head's; all weights' in scratch), cosine-annealed; 0 = the mode's (0.01)
    encoder_lr_factor: float = 1.0  # mode=full: the encoder learns at lr * this (measured best at lr 0.01: 1)
    augment: str = ""  # flip = mirror a random half of each batch (full, scratch); "" = the mode's
    batch_size: int = 256  # images (or, frozen, feature vectors) per optimiser step
    register_as: str = "fmae-classifier"  # registered model name; its alias champion = best test_accuracy
    repeats: int = 1  # seeds seed, seed+1, ...: test_accuracy is their mean, test_accuracy_std their spread

    def __post_init__(self):
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        for key, value in MODE_DEFAULTS[self.mode].items():  # the resolved values are what the run logs
            if not getattr(self, key):
                object.__setattr__(self, key, value)
        check_choice("augment", self.augment, AUGMENTATIONS)
        if self.augment != "none" and self.mode == "frozen":
            raise UserError(
                f"augment={self.augment!r} needs mode=full or scratch: mode=frozen trains the head "
                "on codes computed once, so there are no images to augment."
            )
        check_positive(self, "epochs", "lr", "batch_size", "encoder_lr_factor", "repeats")
        check_named(self, "register_as", "fmae-classifier")


@dataclass
class Trained:
    """One seed's classifier and its confusion matrix on the test set."""

    seed: int
    model: Classifier
    matrix: np.ndarray
    run_id: str = ""

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / self.matrix.sum())


def train_seed(config: Config, seed: int, encoder: nn.Module, encoder_config: dict, data, report) -> Trained:
    """A classifier on a copy of encoder, trained with this seed (its head's initialisation, the
    order of batches, the flips; scratch: the encoder's initialisation too)."""
    seed_everything(seed)
    model = build_classifier(copy.deepcopy(encoder), encoder_config, config.mode).to(data.test.inputs.device)
    train(model, dataclasses.replace(config, seed=seed), data.train, data.val, report)
    return Trained(seed, model, confusion_matrix(model, data.test))


def train_repeats(config: Config, step, encoder: nn.Module, encoder_config: dict) -> list[Trained]:
    """config.repeats classifiers, seeds seed, seed + 1, ...; with more than one, each in a run of
    its own nested in the step's (its epochs and test_accuracy), its epochs echoed for the first."""
    if config.repeats == 1:
        return [train_seed(config, config.seed, encoder, encoder_config, step.data, step.run.log_epoch)]
    trained = []
    for i, seed in enumerate(range(config.seed, config.seed + config.repeats)):
        about = (
            f"Seed {seed} of the {config.repeats} of the `finetune` run above (mode {config.mode}): its test_accuracy."
        )
        with start_child_run(f"finetune-seed{seed}", {"seed": seed, "mode": config.mode}, about) as child:
            run = StepRun(child.info.run_id, echo=i == 0, epochs=config.epochs)
            run.set_tags({"fmae.step": "finetune-seed"})
            result = train_seed(config, seed, encoder, encoder_config, step.data, run.log_epoch)
            run.log_metrics({"test_accuracy": result.accuracy})
        print(f"seed {seed}: test_accuracy {result.accuracy:.4f}", flush=True)
        trained.append(dataclasses.replace(result, run_id=child.info.run_id))
    return trained


def summarize_repeats(trained: list[Trained]) -> tuple[dict[str, float], Trained]:
    """The step's test_accuracy (the seeds' mean) and test_accuracy_std (their sample standard
    deviation), and the seed whose classifier is logged and registered: the median one, typical
    of the configuration rather than its luckiest draw."""
    accuracies = np.array([t.accuracy for t in trained])
    metrics = {"test_accuracy": float(accuracies.mean())}
    if len(trained) > 1:
        metrics["test_accuracy_std"] = float(accuracies.std(ddof=1))
    return metrics, sorted(trained, key=lambda t: t.accuracy)[(len(trained) - 1) // 2]


def describe(config: Config, lineage: dict, metrics: dict, chosen: Trained, trained: list[Trained]) -> str:
    source = lineage.get("fmae.source_trial") or lineage.get("fmae.source_model") or config.model_uri
    what = {
        "frozen": "its head trained on a frozen",
        "full": "fine-tuned with its",
        "scratch": "the architecture of an",
    }
    result = f"test_accuracy **{metrics['test_accuracy']:.4f}**"
    if len(trained) > 1:
        result += (
            f" ± {metrics['test_accuracy_std']:.4f} (mean ± std over {len(trained)} seeds: "
            + ", ".join(f"{t.accuracy:.4f}" for t in trained)
            + f"); the registered classifier is seed "
            f"{chosen.seed}'s, the median"
        )
    return (
        f"**Classifier, mode {config.mode}**: {what[config.mode]} encoder from `{source}`, {config.epochs} epochs "
        f"at lr {config.lr:g}. {result}. Per-class accuracy in per_class_accuracy.json, confusion_matrix.png."
    )


def run(config: Config) -> str:
    encoder, _, encoder_config = load_module(
        config.model_uri, kinds=("encoder",)
    )  # a bad model_uri fails before any run
    with open_step(STEP, config) as step:
        lineage = model_lineage(config.model_uri)
        tags = {
            **lineage,
            "fmae.mode": config.mode,
            "fmae.encoder_init": "random" if config.mode == "scratch" else "pretrained",
        }
        step.run.set_tags(tags)
        step.run.log_params({f"encoder_{k}": v for k, v in encoder_config.items()})
        print(f"finetune mode={config.mode} on {config.model_uri} ({lineage.get('fmae.source_model', 'unregistered')})")
        trained = train_repeats(config, step, encoder, encoder_config)
        metrics, chosen = summarize_repeats(trained)
        step.run.log_metrics(metrics)
        step.run.log_table(per_class_table(chosen.matrix), "per_class_accuracy.json")
        title = f"Confusion matrix (test set), mode={config.mode}, accuracy {chosen.accuracy:.3f}"
        step.run.log_figures({"confusion_matrix.png": plots.plot_confusion_matrix(chosen.matrix, title)})
        step.run.describe(describe(config, lineage, metrics, chosen, trained))
        info = step.run.log_model(chosen.model, "classifier", "classifier", encoder_config)
        score_tags = {
            "test_accuracy_std": metrics.get("test_accuracy_std", 0.0),
            "fmae.repeats": config.repeats,
            "fmae.model_seed": chosen.seed,
            "fmae.model_test_accuracy": chosen.accuracy,
        }
        step.run.register(
            info.model_uri,
            config.register_as,
            ("test_accuracy", metrics["test_accuracy"]),
            higher_is_better=True,
            tags={**tags, **score_tags},
            about=ABOUT,
        )
        return step.run_id
