"""Plain-PyTorch models of the study: the CAE, the VAE and the classifier head."""

from fmae_models.cae import CAE, CAEConfig, Decoder, Encoder
from fmae_models.classifier import Classifier
from fmae_models.vae import VAE, VAEConfig, kl_divergence, vae_loss

__all__ = [
    "CAE",
    "CAEConfig",
    "Classifier",
    "Decoder",
    "Encoder",
    "VAE",
    "VAEConfig",
    "kl_divergence",
    "vae_loss",
]
