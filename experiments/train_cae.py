"""Step `train_cae`: train the seed's convolutional autoencoder once and log it to MLflow."""

from dataclasses import asdict, dataclass

import mlflow
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments.config import CommonConfig, check_choice, check_positive, config_params
from experiments.data import FashionMNIST, Split, load_fashion_mnist
from experiments.errors import UserError
from experiments.tracking import log_dataset, log_figures, log_module, start_step_run
from experiments.training import (LR_SCHEDULES, OPTIMIZERS, evaluate, fit, make_optimizer, make_scheduler,
                                  seed_everything)
from fmae_models import CAE, CAEConfig


@dataclass(frozen=True)
class Config(CommonConfig):
    n_channels: int = 8  # the seed's best width of the first conv layer
    encoded_space_dim: int = 14  # the seed's best latent size
    optimizer: str = "adam"  # adam, adamw, sgd or rmsprop
    lr: float = 0.001  # learning rate
    weight_decay: float = 1e-5  # L2 penalty, the seed's best
    momentum: float = 0.9  # used by sgd and rmsprop only
    batch_size: int = 256  # images per optimiser step
    epochs: int = 20  # passes over the training set
    lr_schedule: str = "constant"  # constant (the seed's), or cosine: anneal lr to 0 over the epochs
    batch_norm: bool = False  # BatchNorm after each encoder conv: not the seed's; its encoder fine-tunes better

    def __post_init__(self):
        super().__post_init__()
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_positive(self, "n_channels", "encoded_space_dim", "lr", "batch_size", "epochs")
        check_positive(self, "weight_decay", "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise UserError(f"momentum={self.momentum} must lie in [0, 1).")

    @property
    def model_config(self) -> CAEConfig:
        return CAEConfig(self.n_channels, self.encoded_space_dim, self.batch_norm)


def reconstruction_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, the seed's loss (labels unused)."""
    return F.mse_loss(model(images), images)


def build_autoencoder(config: Config):
    """A freshly initialised CAE on config's device, its optimiser and lr schedule."""
    seed_everything(config.seed)
    model = CAE(config.model_config).to(config.torch_device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay, config.momentum)
    return model, optimizer, make_scheduler(config.lr_schedule, optimizer, config.epochs)


def test_loss(model: CAE, data: FashionMNIST) -> float:
    return evaluate(model, reconstruction_loss, data.test)


@torch.no_grad()
def reconstructions_figure(model: CAE, test: Split, n: int = 10):
    """The first test image of each class above its reconstruction."""
    from experiments import plots  # matplotlib: only where figures are made (a pruned trial makes none)

    model.eval()
    labels = test.labels.cpu()
    idx = torch.stack([torch.nonzero(labels == k)[0, 0] for k in range(n)])
    images = test.images[idx.to(test.images.device)]
    return plots.plot_reconstructions(images, model(images))


@torch.no_grad()
def encode(encoder: nn.Module, split: Split, batch_size: int = 2048) -> np.ndarray:
    encoder.eval()
    return torch.cat([encoder(split.images[i : i + batch_size]).cpu() for i in range(0, len(split), batch_size)]).numpy()


@torch.no_grad()
def sample_from_fitted_gaussian(decoder: nn.Module, codes: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """A CAE has no prior: decode draws from a Gaussian fitted to its latent codes."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), size=n).astype(np.float32)
    device = next(decoder.parameters()).device
    decoder.eval()
    return decoder(torch.from_numpy(z).to(device))


def latent_figures(model: CAE, test: Split, seed: int, n_points: int = 2000) -> dict:
    """Cheap per-model views of the latent space: test codes by PCA, and generated samples."""
    from sklearn.decomposition import PCA  # ~1 s to import: a trial pays it only if it finishes

    from experiments import plots

    subset = Split(test.images[:n_points], test.labels[:n_points])
    codes = encode(model.encoder, subset)
    points = PCA(n_components=2, random_state=seed).fit_transform(codes)
    return {
        "latent_pca.png": plots.plot_latent_2d(points, subset.labels.cpu().numpy(), "CAE latent space (test set, PCA)"),
        "samples.png": plots.plot_image_grid(
            sample_from_fitted_gaussian(model.decoder, codes, 32, seed),
            "CAE samples: decoded draws from a Gaussian fitted to the codes"),
    }


def log_autoencoder(model: CAE, run_id: str | None = None):
    """Log the whole autoencoder as `cae` and its encoder as `encoder`; returns the encoder's ModelInfo."""
    config = asdict(model.config)
    log_module(model, "cae", "cae", config, run_id=run_id)
    return log_module(model.encoder, "encoder", "encoder", config, run_id=run_id)


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics, step=epoch)
    print(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


def run(config: Config) -> str:
    data = load_fashion_mnist(config.data_dir, train_subset=config.train_subset, seed=config.seed)
    data = data.to(config.torch_device)
    with start_step_run("train_cae", config_params(config)) as active:
        log_dataset(data)
        model, optimizer, scheduler = build_autoencoder(config)
        fit(model, reconstruction_loss, optimizer, data.train, data.val, config.epochs, config.batch_size,
            config.seed, report=log_epoch, scheduler=scheduler)
        loss = test_loss(model, data)
        mlflow.log_metric("test_loss", loss)
        print(f"test_loss {loss:.5f}")
        log_figures({"reconstructions.png": reconstructions_figure(model, data.test)})
        log_autoencoder(model)
        return active.info.run_id
