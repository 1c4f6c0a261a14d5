"""The seed's classifier (section 1.4) trained and scored: a loaded encoder plus a small head,
its loss, augmentation and optimiser, the standardisation of codes folded into the weights, and
the confusion matrix on the test set. The `finetune` step (finetune.py) runs it."""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments.data import CLASS_NAMES, Split
from experiments.training import accuracy, fit, make_optimizer, make_scheduler, predict
from fmae_models import Classifier, build_module


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


def make_classifier_optimizer(model: Classifier, config) -> torch.optim.Optimizer:
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


def train(model: Classifier, config, train_split: Split, val: Split, report) -> None:
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
    fit(
        learner,
        loss,
        optimizer,
        train_split,
        val,
        config.epochs,
        config.batch_size,
        config.seed,
        report,
        val_metrics=lambda m: {"val_accuracy": accuracy(m, val)},
        scheduler=scheduler,
        loss_name="nll",
    )
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
    return {
        "class": list(CLASS_NAMES),
        "accuracy": (np.diag(matrix) / np.maximum(support, 1)).round(4).tolist(),
        "test_images": support.tolist(),
    }
