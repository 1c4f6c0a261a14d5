"""`vae`: the shared study's VAE run, as `main` (through `mlflow run`) left it."""

import math

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments.config import parse_config
from experiments.errors import UserError
from experiments.tracking.models import load_module
from experiments.train_vae import Config
from tests.helpers import assert_png, metric_history
from tests.study import STUDY

DIM = 14  # the VAE's default code size
EPOCHS = list(range(1, STUDY["epochs"] + 1))


@pytest.fixture(scope="module")
def trained(study):
    return study.vae, study.folder


def test_run_finished_with_losses_per_epoch_and_test_figures(trained):
    run, _ = trained
    assert run.info.status == "FINISHED"
    assert run.data.params["beta"] == "1.0" and run.data.params["encoded_space_dim"] == str(DIM)
    for key in ("train_elbo", "val_elbo", "val_recon_mse"):
        assert [step for step, _ in metric_history(run.info.run_id, key)] == EPOCHS
    assert "train_loss" not in run.data.metrics and "val_loss" not in run.data.metrics  # the CAE's, per pixel
    val = [v for _, v in metric_history(run.info.run_id, "val_elbo")]
    assert val[-1] < val[0], f"val_elbo did not fall: {val}"
    recon = [v for _, v in metric_history(run.info.run_id, "val_recon_mse")]
    assert 0 < recon[-1] < 0.2  # per pixel, the CAE's val_loss scale
    mse, kl = run.data.metrics["test_recon_mse"], run.data.metrics["test_kl"]
    assert math.isfinite(mse) and 0 < mse < 0.2
    assert math.isfinite(kl) and kl >= 0
    # val_elbo is summed per image (nats); the per-pixel MSE is what compares with the CAE.
    assert val[-1] > 784 * mse


def test_pngs(trained, tmp_path):
    run, _ = trained
    for name in ("reconstructions.png", "samples.png"):
        assert_png(MlflowClient().download_artifacts(run.info.run_id, name, str(tmp_path)))


def test_registered_champion_loads_as_mlflow_and_as_module(trained):
    run, _ = trained
    version = MlflowClient().get_model_version_by_alias("fmae-vae", "champion")
    assert version.tags["fmae.run_id"] == run.info.run_id
    x = torch.rand(5, 1, 28, 28)
    recon, mean, logvar = mlflow.pytorch.load_model("models:/fmae-vae@champion")(x)
    assert recon.shape == x.shape and mean.shape == logvar.shape == (5, DIM)
    assert 0 <= recon.min() and recon.max() <= 1
    module, kind, _ = load_module("models:/fmae-vae@champion")
    assert kind == "vae"
    assert torch.allclose(module.eval()(x)[0], recon, atol=1e-5)
    encoder = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/encoder")
    assert torch.allclose(encoder(x), mean, atol=1e-5)  # the encoder's code is the posterior mean


def test_bad_parameters_are_rejected_before_any_work():
    with pytest.raises(UserError, match="beta=-1.0 must be 0 or more"):
        parse_config(Config, ["--beta", "-1"])
    with pytest.raises(UserError, match="register_as"):
        parse_config(Config, ["--register_as", ""])
