"""An untrained module of any kind fmae logs, from its recorded kind and config: how a logged
model is rebuilt as a trainable module."""

import importlib
from typing import Any

from torch import nn

from fmae_models.cae import CAE, CAEConfig, Encoder
from fmae_models.classifier import Classifier
from fmae_models.vae import VAE, VAEConfig, VAEMeanEncoder

BUILDERS = {
    "cae": lambda config: CAE(CAEConfig(**config)),
    "encoder": lambda config: Encoder(CAEConfig(**config)),
    "classifier": lambda config: Classifier(Encoder(CAEConfig(**config)), config["encoded_space_dim"]),
    "vae": lambda config: VAE(VAEConfig(**config)),
    "vae_encoder": lambda config: VAEMeanEncoder(VAE(VAEConfig(**config))),
}


def build_module(kind: str, config: dict[str, Any], classes: tuple[str, str] = ("", "")) -> nn.Module:
    """One of BUILDERS; of any other kind, the fmae_models class recorded with it, built from its
    recorded config class: Model(ModelConfig(**config)). A new model needs no entry here."""
    if kind in BUILDERS:
        return BUILDERS[kind](config)
    if all(name.startswith("fmae_models.") for name in classes):  # only our own classes
        model_cls, config_cls = (
            getattr(importlib.import_module(module), attr) for module, attr in (name.rsplit(".", 1) for name in classes)
        )
        return model_cls(config_cls(**config))
    raise ValueError(f"unknown model kind {kind!r}")
