"""Shapes, parameter counts and gradients of the plain-PyTorch models."""

import pytest
import torch

from fmae_models import CAE, VAE, CAEConfig, Classifier, Encoder, VAEConfig, kl_divergence, vae_loss
from tests.helpers import images


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_seed_cae_has_the_seed_parameter_counts():
    model = CAE(CAEConfig(n_channels=8, encoded_space_dim=14))
    assert n_params(model.encoder) == 25_294
    assert n_params(model) == 50_831


@pytest.mark.parametrize("c,d", [(4, 2), (8, 14), (16, 32), (12, 5)])
def test_cae_shapes(c, d):
    model = CAE(CAEConfig(c, d))
    x = images(3)
    assert model.encoder(x).shape == (3, d)
    out = model(x)
    assert out.shape == (3, 1, 28, 28)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output, like the pixels


def test_encoder_parameter_count_follows_the_layout():
    c, d = 6, 10
    expected = (
        (1 * 9 * c + c) + (c * 9 * 2 * c + 2 * c) + (2 * c * 9 * 4 * c + 4 * c) + (36 * c * 64 + 64) + (64 * d + d)
    )
    assert n_params(Encoder(CAEConfig(c, d))) == expected


@pytest.mark.parametrize("c,d", [(8, 14), (4, 3)])
def test_vae_returns_reconstruction_mean_logvar(c, d):
    vae = VAE(VAEConfig(c, d))
    x = images(4)
    recon, mean, logvar = vae(x)
    assert recon.shape == (4, 1, 28, 28)
    assert mean.shape == logvar.shape == (4, d)
    assert (kl_divergence(mean, logvar) >= 0).all()
    assert vae_loss(recon, x, mean, logvar).ndim == 0
    assert vae.sample(6).shape == (6, 1, 28, 28)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(2, 5)
    assert torch.allclose(kl_divergence(zeros, zeros), torch.zeros(2))
    assert (kl_divergence(torch.ones(2, 5), zeros) > 0).all()


def test_vae_is_deterministic_in_eval_mode():
    vae = VAE().eval()
    x = images(2)
    assert torch.equal(vae(x)[0], vae(x)[0])


def test_classifier_returns_log_probabilities():
    clf = Classifier(Encoder(CAEConfig(8, 14)), 14)
    logp = clf(images(5))
    assert logp.shape == (5, 10)
    assert torch.allclose(logp.exp().sum(1), torch.ones(5), atol=1e-5)


def test_frozen_encoder_receives_no_gradient():
    clf = Classifier(Encoder(CAEConfig(8, 14)), 14)
    clf.freeze_encoder()
    clf(images(4)).mean().backward()
    assert all(p.grad is None for p in clf.encoder.parameters())
    assert all(p.grad is not None for p in clf.head.parameters())


def test_batch_norm_encoder_adds_a_norm_per_conv_and_keeps_the_seeds_keys_without_it():
    c, d = 8, 14
    plain, normed = Encoder(CAEConfig(c, d)), Encoder(CAEConfig(c, d, batch_norm=True))
    assert [k for k in plain.state_dict() if k.startswith("conv.")] == [
        "conv.0.weight",
        "conv.0.bias",
        "conv.2.weight",
        "conv.2.bias",
        "conv.4.weight",
        "conv.4.bias",
    ]
    norms = [m for m in normed.conv if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.num_features for m in norms] == [c, 2 * c, 4 * c]
    assert n_params(normed) == n_params(plain) + 2 * (c + 2 * c + 4 * c)  # a scale and a shift per channel
    assert normed.eval()(images(3)).shape == (3, d)
    assert CAE(CAEConfig(c, d, batch_norm=True))(images(2)).shape == (2, 1, 28, 28)


def test_a_frozen_encoders_batch_norm_statistics_do_not_move_in_training_mode():
    clf = Classifier(Encoder(CAEConfig(4, 6, batch_norm=True)), 6)
    clf.freeze_encoder()
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    clf.train()
    assert clf.head.training and not clf.encoder.training
    clf(images(8) * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in clf.encoder.state_dict().items())
