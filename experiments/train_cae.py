"""Step `train_cae`: train the seed's convolutional autoencoder once and log it to MLflow.

`train_autoencoder` is the one function that trains a CAE: this step calls it, and so does
each trial of the search (tune/trainable.py), which only connects Ray's report and
checkpoints to it.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from experiments.config import CommonConfig, check_choice, check_positive, sub_config
from experiments.data import FashionMNIST, Split
from experiments.errors import UserError
from experiments.step import open_step
from experiments.tracking.step_run import StepRun
from experiments.training import (
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    Diverged,
    Report,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    predict,
    training_precision,
)
from fmae_models import CAE, CAEConfig, sample_fitted_gaussian

STEP = "train_cae"


@dataclass(frozen=True)
class Config(CommonConfig, CAEConfig):  # the CAE's own fields (n_channels, ...) come from CAEConfig
    optimizer: str = "adam"  # adam, adamw, sgd or rmsprop
    lr: float = 0.001  # learning rate
    weight_decay: float = 1e-5  # L2 penalty, the seed's best
    momentum: float = 0.9  # used by sgd and rmsprop only
    batch_size: int = 256  # images per optimiser step
    epochs: int = 20  # passes over the training set
    lr_schedule: str = "constant"  # constant (the seed's), or cosine: anneal lr to 0 over the epochs
    precision: str = "auto"  # training arithmetic: auto (bf16 autocast on CPUs with AMX, else fp32), fp32 or bf16

    def __post_init__(self):
        super().__post_init__()
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive(self, "n_channels", "encoded_space_dim", "lr", "batch_size", "epochs")
        check_positive(self, "weight_decay", "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise UserError(f"momentum={self.momentum} must lie in [0, 1).")

    @property
    def model_config(self) -> CAEConfig:
        return sub_config(self, CAEConfig)


def reconstruction_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, the seed's loss (labels unused)."""
    return F.mse_loss(model(images), images)


@dataclass
class Training:
    """A CAE being trained: the model, its optimiser and lr schedule, as a checkpoint saves them."""

    model: CAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None

    def state_dict(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "model_config": dataclasses.asdict(self.model.config),
        }

    def load_state_dict(self, state: dict) -> int:
        """Continue from a checkpoint; returns the epoch it was taken after."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        return state["epoch"]


def build_autoencoder(config: Config) -> Training:
    """A freshly initialised CAE on config's device (seed first), its optimiser and lr schedule."""
    model = CAE(config.model_config).to(config.torch_device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay, config.momentum)
    return Training(model, optimizer, make_scheduler(config.lr_schedule, optimizer, config.epochs))


def train_autoencoder(
    config: Config,
    data: FashionMNIST,
    report: Report,
    training: Training | None = None,
    start_epoch: int = 1,
    every_second: Callable[[], None] | None = None,
) -> CAE:
    """Train a CAE (a new one, or `training` from start_epoch on) for config.epochs on data,
    calling report(epoch, metrics) with train_loss and val_loss after every epoch (and
    every_second between batches: training.fit)."""
    training = training or build_autoencoder(config)
    fit(
        training.model,
        reconstruction_loss,
        training.optimizer,
        data.train,
        data.val,
        config.epochs,
        config.batch_size,
        config.seed,
        report=report,
        start_epoch=start_epoch,
        scheduler=training.scheduler,
        every_second=every_second,
        precision=training_precision(config.precision, config.torch_device),
    )
    return training.model


def test_loss(model: CAE, test: Split) -> float:
    return evaluate(model, reconstruction_loss, test)


def principal_components(codes: torch.Tensor, k: int = 2) -> torch.Tensor:
    """codes (N, d) on their first k principal axes (N, k), as scikit-learn's PCA projects them,
    each axis signed so that its largest loading is positive. In PyTorch: a trial that finishes
    draws its latent_pca.png without importing scikit-learn (~1 s of a trial process's CPU)."""
    centred = codes.detach().double().cpu()
    centred = centred - centred.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:k]
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return (centred @ axes.T).float()


def latent_figures(model: CAE, test: Split, seed: int, n_points: int = 2000) -> dict:
    """Cheap views of one CAE's latent space: test codes by PCA, and generated samples."""
    from experiments import plots  # matplotlib: a trial pays its import only if it finishes

    subset = Split(test.inputs[:n_points], test.labels[:n_points])
    codes = predict(model.encoder, subset)
    points = principal_components(codes).numpy()
    samples = sample_fitted_gaussian(model.decoder, codes, plots.N_SAMPLES, torch.Generator().manual_seed(seed))
    return {
        "latent_pca.png": plots.plot_latent_2d(points, subset.labels.cpu().numpy(), "CAE latent space (test set, PCA)"),
        "samples.png": plots.plot_image_grid(samples, "CAE samples: decoded draws from a Gaussian fitted to the codes"),
    }


def log_autoencoder(run: StepRun, model: CAE, test: Split, seed: int):
    """Its figures (reconstructions, latent PCA, samples), the autoencoder as the logged model `cae`
    and its encoder as `encoder`; returns the encoder's ModelInfo."""
    from experiments import plots

    run.log_figures(
        {"reconstructions.png": plots.reconstructions_figure(model, test), **latent_figures(model, test, seed)}
    )
    config = dataclasses.asdict(model.config)
    run.log_model(model, "cae", "cae", config)
    return run.log_model(model.encoder, "encoder", "encoder", config)


def precision_tags(config: Config) -> dict[str, str]:
    """What the run trained in, where the precision param says "auto"."""
    return {"fmae.precision": training_precision(config.precision, config.torch_device)}


def divergence_tags(exc: Diverged) -> dict[str, str]:
    return {"fmae.failure": "diverged", "fmae.diverged_at_epoch": str(exc.epoch), "fmae.failure_cause": exc.cause}


def run(config: Config) -> str:
    with open_step(STEP, config) as step:
        step.run.set_tags(precision_tags(config))
        try:
            model = train_autoencoder(config, step.data, report=step.run.log_epoch)
        except Diverged as exc:
            step.run.set_tags(divergence_tags(exc))
            raise UserError(
                f"the training diverged: {exc} with optimizer={config.optimizer} lr={config.lr:g} "
                f"momentum={config.momentum:g} weight_decay={config.weight_decay:g} batch_size="
                f"{config.batch_size}. Lower lr (or momentum) and run it again."
            ) from None
        loss = test_loss(model, step.data.test)
        step.run.log_metrics({"test_loss": loss})
        log_autoencoder(step.run, model, step.data.test, config.seed)
        step.run.describe(
            f"**CAE** c{config.n_channels}-d{config.encoded_space_dim}"
            f"{'-bn' if config.batch_norm else ''}, {config.optimizer} at lr {config.lr:g}, {config.epochs} "
            f"epochs on {len(step.data.train):,} images: test_loss **{loss:.5f}** (MSE per pixel). "
            "Logged models `cae` (image to image) and `encoder` (image to code); reconstructions.png."
        )
        return step.run_id
