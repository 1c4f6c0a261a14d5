"""Step `vae`: train the seed's variational autoencoder (section 1.2), log it and register it."""

from dataclasses import asdict, dataclass

import mlflow
import torch
from torch import nn
from torch.nn import functional as F

from experiments import plots
from experiments.config import CommonConfig, check_positive, config_params
from experiments.data import FashionMNIST, load_fashion_mnist
from experiments.errors import UserError
from experiments.tracking import log_dataset, log_figures, log_module, register_model, start_step_run
from experiments.train_cae import log_epoch, reconstructions_figure
from experiments.training import evaluate, fit, make_optimizer, seed_everything
from fmae_models import VAE, VAEConfig, kl_divergence, vae_loss
from fmae_models.vae import VAEMeanEncoder

N_SAMPLES = 32  # prior draws shown in samples.png


@dataclass(frozen=True)
class Config(CommonConfig):
    n_channels: int = 8  # width of the first conv, as the seed's CAE
    encoded_space_dim: int = 14  # latent size, the CAE's best, so the two compare like for like
    beta: float = 1.0  # weight of the KL term; 1 is the plain VAE's negative ELBO
    epochs: int = 30  # the seed trained its VAE for 30 epochs
    lr: float = 0.001  # Adam's learning rate
    batch_size: int = 256  # images per optimiser step
    register_as: str = "fmae-vae"  # registered model name; alias champion = lowest test_recon_mse

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "n_channels", "encoded_space_dim", "lr", "batch_size", "epochs")
        check_positive(self, "beta", allow_zero=True)
        if not self.register_as:
            raise UserError("register_as must name the registered model, e.g. register_as=fmae-vae.")

    @property
    def model_config(self) -> VAEConfig:
        return VAEConfig(self.n_channels, self.encoded_space_dim)


def elbo_loss(beta: float):
    """The training objective as the loop wants it: negative ELBO per image (labels unused),
    logged as train_elbo/val_elbo. In eval mode the VAE decodes the posterior mean, so val_elbo
    is that of z = mean."""
    def loss_fn(model: VAE, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        recon, mean, logvar = model(images)
        return vae_loss(recon, images, mean, logvar, beta)
    return loss_fn


def recon_mse(model: VAE, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel of the posterior mean's decoding: the CAE's test_loss scale."""
    return F.mse_loss(model(images)[0], images)


def mean_kl(model: VAE, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, in nats."""
    return kl_divergence(*model.encoder(images)).mean()


def test_metrics(model: VAE, data: FashionMNIST) -> dict[str, float]:
    return {"test_recon_mse": evaluate(model, recon_mse, data.test), "test_kl": evaluate(model, mean_kl, data.test)}


class Reconstructor(nn.Module):
    """The VAE as image -> reconstruction (posterior mean decoded), for the CAE's figure code."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae(x)[0]


def samples_figure(model: VAE, seed: int, n: int = N_SAMPLES):
    model.eval()
    images = model.sample(n, generator=torch.Generator().manual_seed(seed))
    return plots.plot_image_grid(images, "VAE samples: decoded draws from the prior N(0, I)")


def log_vae(model: VAE, run_id: str | None = None):
    """Log the whole VAE as `vae` (image -> (reconstruction, mean, log-variance)) and its mean
    encoder as `encoder` (image -> latent code); returns the VAE's ModelInfo."""
    config = asdict(model.config)
    info = log_module(model, "vae", "vae", config, run_id=run_id)
    log_module(VAEMeanEncoder(model), "encoder", "vae_encoder", config, run_id=run_id)
    return info


def run(config: Config) -> str:
    data = load_fashion_mnist(config.data_dir, train_subset=config.train_subset, seed=config.seed)
    data = data.to(config.torch_device)
    with start_step_run("vae", config_params(config)) as active:
        log_dataset(data)
        seed_everything(config.seed)
        model: nn.Module = VAE(config.model_config).to(config.torch_device)
        optimizer = make_optimizer("adam", model.parameters(), config.lr, weight_decay=0.0, momentum=0.0)
        fit(model, elbo_loss(config.beta), optimizer, data.train, data.val, config.epochs, config.batch_size,
            config.seed, report=log_epoch, loss_name="elbo",
            val_metrics=lambda m: {"val_recon_mse": evaluate(m, recon_mse, data.val)})
        metrics = test_metrics(model, data)
        mlflow.log_metrics(metrics)
        print("  ".join(f"{k} {v:.5f}" for k, v in metrics.items()), flush=True)
        log_figures({"reconstructions.png": reconstructions_figure(Reconstructor(model), data.test),
                     "samples.png": samples_figure(model, config.seed)})
        info = log_vae(model)
        register_model(info.model_uri, config.register_as, active.info.run_id,
                       ("test_recon_mse", metrics["test_recon_mse"]), higher_is_better=False)
        return active.info.run_id
