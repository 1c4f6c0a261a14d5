"""Step `finetune`: the seed's classifier (section 1.4), a logged encoder plus a small head.

Three modes, comparable in one MLflow view (same metrics, tag `fmae.mode`):
frozen (the seed's fine-tuning: only the head learns), full (the encoder learns too, more
slowly) and scratch (the same encoder architecture from random weights: the supervised
baseline the seed compared against).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments import plots
from experiments.config import CommonConfig, check_choice, check_named, check_positive
from experiments.data import CLASS_NAMES, Split
from experiments.errors import UserError
from experiments.step import open_step
from experiments.tracking import build_module, load_module, model_lineage
from experiments.training import accuracy, fit, make_optimizer, make_scheduler, predict
from fmae_models import Classifier

STEP = "finetune"
ABOUT = ("fmae's FashionMNIST classifier: a logged encoder plus a small head, fine-tuned by `fmae finetune`. "
         "Input: float tensor (N, 1, 28, 28) in [0, 1]; output: (N, 10) log-probabilities.")
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
    lr: float = 0.0  # Adam's peak learning rate (the head's; all weights' in scratch), cosine-annealed to 0; 0 = the mode's (0.01)
    encoder_lr_factor: float = 1.0  # mode=full: the pretrained encoder learns at lr * this (measured best at lr 0.01: 1)
    augment: str = ""  # flip = mirror a random half of each batch left-right (full, scratch); "" = the mode's (flip; frozen: none)
    batch_size: int = 256  # images (or, frozen, feature vectors) per optimiser step
    register_as: str = "fmae-classifier"  # registered model name; its alias champion = best test_accuracy

    def __post_init__(self):
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        for key, value in MODE_DEFAULTS[self.mode].items():  # the resolved values are what the run logs
            if not getattr(self, key):
                object.__setattr__(self, key, value)
        check_choice("augment", self.augment, AUGMENTATIONS)
        if self.augment != "none" and self.mode == "frozen":
            raise UserError(f"augment={self.augment!r} needs mode=full or scratch: mode=frozen trains the head "
                            "on codes computed once, so there are no images to augment.")
        check_positive(self, "epochs", "lr", "batch_size", "encoder_lr_factor")
        check_named(self, "register_as", "fmae-classifier")


def nll_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of log-probabilities, the seed's loss."""
    return F.nll_loss(model(inputs), labels)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2: a mirrored garment is the same class."""
    flip = torch.rand(len(images), 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, images.flip(3), images)


def flipped_nll_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """nll_loss on randomly flipped images while training; evaluation sees them as they are."""
    return nll_loss(model, random_flip(inputs) if model.training else inputs, labels)


def build_classifier(encoder: nn.Module, encoder_config: dict, mode: str) -> Classifier:
    """The seed's classifier around encoder: its weights, or (scratch) its shape only. Seed first."""
    if mode == "scratch":
        encoder = build_module("encoder", encoder_config)
    model = Classifier(encoder, encoder_config["encoded_space_dim"])
    if mode == "frozen":
        model.freeze_encoder()
    return model


def make_classifier_optimizer(model: Classifier, config: Config) -> torch.optim.Optimizer:
    if config.mode == "frozen":
        return make_optimizer("adam", model.head.parameters(), config.lr)
    encoder_lr = config.lr * (config.encoder_lr_factor if config.mode == "full" else 1.0)
    groups = [{"params": model.encoder.parameters(), "lr": encoder_lr}, {"params": model.head.parameters()}]
    return make_optimizer("adam", groups, config.lr)


def encode_split(encoder: nn.Module, split: Split) -> Split:
    """The encoder's codes of split, computed once, on split's device."""
    return Split(predict(encoder, split), split.labels)


def standardize(split: Split, mean: torch.Tensor, std: torch.Tensor) -> Split:
    return Split((split.inputs - mean) / std, split.labels)
@torch.no_grad()
def fold_standardization(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make linear(f) equal the trained linear((f - mean) / std): the logged head takes raw codes."""
    linear.bias -= linear.weight @ (mean / std)
    linear.weight /= std  # (64, d) / (d,): column j scaled by 1 / std_j


@torch.no_grad()
def standardize_output(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rescale linear so that outputs with this mean and std come out with mean 0 and std 1."""
    linear.bias.sub_(mean).div_(std)
    linear.weight.div_(std[:, None])  # (d, 64) / (d, 1): row j scaled by 1 / std_j


def train(model: Classifier, config: Config, train_split: Split, val: Split, report) -> None:
    """Fit the classifier, with the head seeing standardised codes (a CAE's spread ~20 each,
    far from what a freshly initialised head expects; small runs otherwise stall at chance).

    frozen: only the head learns, on codes encoded once up front; the standardisation is then
    folded into the head, so the encoder stays bit-identical. full: the standardisation is
    folded into the encoder's last layer before training, which then moves on at lr * encoder_lr_factor.
    """
    learner = model
    if config.mode in ("frozen", "full"):
        codes = encode_split(model.encoder, train_split)
        mean, std = codes.inputs.mean(0), codes.inputs.std(0).clamp_min(1e-6)
    if config.mode == "frozen":
        train_split = standardize(codes, mean, std)
        val = standardize(encode_split(model.encoder, val), mean, std)
        learner = model.head
    elif config.mode == "full":
        standardize_output(model.encoder.fc[-1], mean, std)
    optimizer = make_classifier_optimizer(model, config)
    scheduler = make_scheduler("cosine", optimizer, config.epochs)
    loss = flipped_nll_loss if config.augment == "flip" else nll_loss
    fit(learner, loss, optimizer, train_split, val, config.epochs, config.batch_size, config.seed, report,
        val_metrics=lambda m: {"val_accuracy": accuracy(m, val)}, scheduler=scheduler, loss_name="nll")
    if config.mode == "frozen":
        fold_standardization(model.head[0], mean, std)


def confusion_matrix(model: nn.Module, split: Split) -> np.ndarray:
    """Counts (10, 10): true class as row, predicted as column."""
    predicted = predict(model, split).argmax(1)
    pairs = split.labels.cpu() * len(CLASS_NAMES) + predicted.cpu()
    return np.bincount(pairs.numpy(), minlength=len(CLASS_NAMES) ** 2).reshape(len(CLASS_NAMES), -1)


def per_class_table(matrix: np.ndarray) -> dict[str, list]:
    """Each class's accuracy (its recall) on the test set: one table, not ten metric charts."""
    support = matrix.sum(1)
    return {"class": list(CLASS_NAMES), "accuracy": (np.diag(matrix) / np.maximum(support, 1)).round(4).tolist(),
            "test_images": support.tolist()}


def run(config: Config) -> str:
    encoder, _, encoder_config = load_module(config.model_uri, kinds=("encoder",))  # a bad model_uri fails before any run
    with open_step(STEP, config) as step:
        lineage = model_lineage(config.model_uri)
        tags = {**lineage, "fmae.mode": config.mode,
                "fmae.encoder_init": "random" if config.mode == "scratch" else "pretrained"}
        step.run.set_tags(tags)
        step.run.log_params({f"encoder_{k}": v for k, v in encoder_config.items()})
        print(f"finetune mode={config.mode} on {config.model_uri} ({lineage.get('fmae.source_model', 'unregistered')})")
        model = build_classifier(encoder, encoder_config, config.mode).to(step.device)
        train(model, config, step.data.train, step.data.val, report=step.run.log_epoch)
        matrix = confusion_matrix(model, step.data.test)
        test_accuracy = float(np.trace(matrix) / matrix.sum())
        step.run.log_metrics({"test_accuracy": test_accuracy})
        step.run.log_table(per_class_table(matrix), "per_class_accuracy.json")
        title = f"Confusion matrix (test set), mode={config.mode}, accuracy {test_accuracy:.3f}"
        step.run.log_figures({"confusion_matrix.png": plots.plot_confusion_matrix(matrix, title)})
        info = step.run.log_model(model, "classifier", "classifier", encoder_config)
        step.run.register(info.model_uri, config.register_as, ("test_accuracy", test_accuracy),
                          higher_is_better=True, tags=tags, about=ABOUT)
        return step.run_id
