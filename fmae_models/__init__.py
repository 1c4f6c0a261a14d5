"""Plain-PyTorch models of the study: the CAE, the VAE and the classifier head."""

from fmae_models.build import build_module
from fmae_models.cae import CAE, CAEConfig, Decoder, Encoder, sample_fitted_gaussian
from fmae_models.classifier import Classifier
from fmae_models.vae import VAE, VAEConfig, VAEMeanEncoder, kl_divergence, sample_prior, vae_loss

__all__ = [
    "CAE",
    "CAEConfig",
    "Classifier",
    "Decoder",
    "Encoder",
    "VAE",
    "VAEConfig",
    "VAEMeanEncoder",
    "build_module",
    "kl_divergence",
    "sample_fitted_gaussian",
    "sample_prior",
    "vae_loss",
]
