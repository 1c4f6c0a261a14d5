"""`train_cae` on a small real subset (in-process: the study covers `mlflow run`, test_config the
command line), and what it leaves in MLflow."""

import contextlib
import io

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments import cli, train_cae
from experiments.tracking.models import load_module
from tests.helpers import assert_png, metric_history, runs_of


@pytest.fixture(scope="module")
def trained(module_store):
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        run_id = train_cae.run(train_cae.Config(train_subset=3000, epochs=3, encoded_space_dim=6, lr=3e-3))
    return MlflowClient().get_run(run_id), module_store, console.getvalue()


def test_run_finished_with_params_and_one_metric_per_epoch(trained):
    run, _, console = trained
    assert run.info.status == "FINISHED"
    assert run.data.params["encoded_space_dim"] == "6" and run.data.params["optimizer"] == "adam"
    amx = torch.cpu._is_amx_tile_supported() and not torch.cuda.is_available()
    assert run.data.params["precision"] == "auto" and run.data.tags["fmae.precision"] == ("bf16" if amx else "fp32")
    for key in ("train_loss", "val_loss"):
        assert [step for step, _ in metric_history(run.info.run_id, key)] == [1, 2, 3]
    val = [v for _, v in metric_history(run.info.run_id, "val_loss")]
    assert val[2] < val[0], f"val_loss did not fall: {val}"
    assert 0 < run.data.metrics["test_loss"] < 0.2
    assert f"runs/{run.info.run_id}?workflowType=machine_learning" in console
    assert run.data.tags["mlflow.note.content"].startswith("**CAE** c8-d6, adam at lr 0.003, 3 epochs")
    inputs = {
        {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
        for i in MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation", "test"}  # the UI's Datasets column
    assert (
        inputs["training"].name == "fashion-mnist-training" and run.data.params["data_source"] in inputs["test"].source
    )


def test_logged_models_load_and_map_shapes(trained):
    run, _, _ = trained
    x = torch.rand(5, 1, 28, 28)
    cae = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/cae")
    encoder = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/encoder")
    assert cae(x).shape == (5, 1, 28, 28)
    assert encoder(x).shape == (5, 6)
    module, kind, config = load_module(f"runs:/{run.info.run_id}/encoder")
    assert kind == "encoder" and config["encoded_space_dim"] == 6
    # a real, trainable module: in training mode, every weight learning
    assert module.training and all(p.requires_grad for p in module.parameters())
    assert torch.allclose(module.eval()(x), encoder(x), atol=1e-5)


def test_reconstructions_png(trained, tmp_path):
    run, _, _ = trained
    path = MlflowClient().download_artifacts(run.info.run_id, "reconstructions.png", str(tmp_path))
    assert_png(path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_epoch_on_the_gpu_keeps_data_there(small_data):
    from experiments.train_cae import Config, train_autoencoder

    data = small_data.to("cuda")
    seen = []
    model = train_autoencoder(Config(device="cuda", epochs=1), data, report=lambda epoch, metrics: seen.append(metrics))
    assert data.train.inputs.is_cuda and next(model.parameters()).is_cuda
    assert seen and seen[0]["val_loss"] < 0.2


def test_a_diverging_training_exits_2_naming_its_hyperparameters(tracking, capsys):
    assert cli.main(["train_cae", "--optimizer", "sgd", "--lr", "1e20", "--epochs", "3", "--train_subset", "1000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "diverged: train_loss became nan" in err and "optimizer=sgd lr=1e+20" in err
    (run,) = runs_of("fmae")
    assert run.info.status == "FAILED"
    assert run.data.tags["fmae.failure"] == "diverged" and run.data.tags["fmae.diverged_at_epoch"] == "1"
    assert "val_loss" not in run.data.metrics  # no NaN epoch in the charts


def test_principal_components_are_scikit_learns_pca():
    """A finished trial's latent_pca.png projects its codes as scikit-learn's PCA would, signs
    included, without importing scikit-learn (train_cae.principal_components)."""
    from sklearn.decomposition import PCA

    from experiments.train_cae import principal_components

    codes = torch.randn(500, 6, generator=torch.Generator().manual_seed(0)) @ torch.randn(
        6, 6, generator=torch.Generator().manual_seed(1)
    )
    expected = PCA(n_components=2).fit_transform(codes.numpy())
    assert np.allclose(principal_components(codes).numpy(), expected, atol=1e-4)


def test_image_figures_draw_each_image_in_its_place_on_one_picture():
    """Image grids are one picture (experiments.plots.show_tiled): image k of a 3-column grid
    lands at row k // 3, column k % 3, with white (NaN) between images and in the unfilled cells."""
    from experiments import plots

    images = torch.arange(7, dtype=torch.float32).div(10).reshape(7, 1, 1, 1).expand(7, 1, 28, 28)
    picture = plots.plot_image_grid(images, "grid", ncols=3).axes[0].images[0].get_array().filled(np.nan)
    step = 28 + plots.GAP
    assert picture.shape == (3 * step - plots.GAP, 3 * step - plots.GAP)
    for k in range(7):
        r, c = divmod(k, 3)
        assert np.allclose(picture[r * step : r * step + 28, c * step : c * step + 28], k / 10)
    assert np.isnan(picture[2 * step :, 1 * step :]).all()  # the two unfilled cells
    assert np.isnan(picture[28 : 28 + plots.GAP]).all()  # between rows
    labels = plots.plot_reconstructions(images[:2], images[2:4]).axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == ["original", "reconstructed"]
