"""Step `vae`: train the seed's variational autoencoder (section 1.2), log it and register it."""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from experiments import plots
from experiments.config import CommonConfig, check_named, check_positive, sub_config
from experiments.step import open_step
from experiments.tracking.step_run import StepRun
from experiments.training import evaluate, fit, make_optimizer
from fmae_models import VAE, VAEConfig, VAEMeanEncoder, kl_divergence, vae_loss

STEP = "vae"
ABOUT = (
    "fmae's variational autoencoder, trained by `fmae vae`. Input: float tensor (N, 1, 28, 28) in [0, 1]; "
    "output: (reconstruction, posterior mean, log-variance)."
)


@dataclass(frozen=True)
class Config(CommonConfig, VAEConfig):  # the VAE's own fields (n_channels, encoded_space_dim) come from VAEConfig
    beta: float = 1.0  # weight of the KL term; 1 is the plain VAE's negative ELBO
    epochs: int = 30  # the seed trained its VAE for 30 epochs
    lr: float = 0.001  # Adam's learning rate
    batch_size: int = 256  # images per optimiser step
    register_as: str = "fmae-vae"  # registered model name; alias champion = lowest test_recon_mse

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "n_channels", "encoded_space_dim", "lr", "batch_size", "epochs")
        check_positive(self, "beta", allow_zero=True)
        check_named(self, "register_as", "fmae-vae")


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


class Reconstructor(nn.Module):
    """The VAE as image -> reconstruction (posterior mean decoded), for the reconstructions figure."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae(x)[0]


def log_vae(run: StepRun, model: VAE, test, seed: int):
    """Its figures, the whole VAE as `vae` (image -> (reconstruction, mean, log-variance)) and
    its mean encoder as `encoder` (image -> latent code); returns the VAE's ModelInfo."""
    samples = model.sample(plots.N_SAMPLES, generator=torch.Generator().manual_seed(seed))
    run.log_figures(
        {
            "reconstructions.png": plots.reconstructions_figure(Reconstructor(model), test),
            "samples.png": plots.plot_image_grid(samples, "VAE samples: decoded draws from the prior N(0, I)"),
        }
    )
    config = dataclasses.asdict(model.config)
    info = run.log_model(model, "vae", "vae", config)
    run.log_model(VAEMeanEncoder(model), "encoder", "vae_encoder", config)
    return info


def run(config: Config) -> str:
    with open_step(STEP, config) as step:
        data = step.data
        model = VAE(sub_config(config, VAEConfig)).to(step.device)
        optimizer = make_optimizer("adam", model.parameters(), config.lr)
        fit(
            model,
            elbo_loss(config.beta),
            optimizer,
            data.train,
            data.val,
            config.epochs,
            config.batch_size,
            config.seed,
            report=step.run.log_epoch,
            loss_name="elbo",
            val_metrics=lambda m: {"val_recon_mse": evaluate(m, recon_mse, data.val)},
        )
        metrics = {
            "test_recon_mse": evaluate(model, recon_mse, data.test),
            "test_kl": evaluate(model, mean_kl, data.test),
        }
        step.run.log_metrics(metrics)
        info = log_vae(step.run, model, data.test, config.seed)
        step.run.describe(
            f"**VAE** c{config.n_channels}-d{config.encoded_space_dim}, beta {config.beta:g}, {config.epochs} "
            f"epochs on {len(data.train):,} images: test_recon_mse **{metrics['test_recon_mse']:.5f}** (per "
            f"pixel, the CAE's scale), test_kl {metrics['test_kl']:.1f} nats. Logged models `vae` and "
            "`encoder` (its posterior mean); reconstructions.png, samples.png (prior draws)."
        )
        step.run.register(
            info.model_uri,
            config.register_as,
            ("test_recon_mse", metrics["test_recon_mse"]),
            higher_is_better=False,
            about=ABOUT,
        )
        return step.run_id
