"""`analyze` end to end on small real subsets: a quick CAE and VAE, then the latent-space study
through `mlflow run`, reading both models by URI as users do."""

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from experiments.analyze import load_autoencoder
from experiments.errors import UserError
from tests.helpers import assert_png, fmae, mlflow_run, runs_of

# Small batches give the 2,000-image subset enough optimiser steps to learn a usable latent space.
TRAIN = {"train_subset": 2000, "epochs": 3, "batch_size": 64, "encoded_space_dim": 8, "lr": "3e-3"}
ANALYSIS_PNGS = [f"{m}_{kind}.png" for m in ("cae", "vae") for kind in ("pca", "tsne", "samples", "interpolation")]


@pytest.fixture(scope="module")
def store(module_store):
    """A tracking store holding a 2-epoch CAE, a 2-epoch VAE (registered) and their analysis."""
    tmp = module_store
    mlflow_run("train_cae", TRAIN, tmp)
    mlflow_run("vae", TRAIN, tmp)
    cae_run, vae_run = runs_of()
    result = mlflow_run("analyze", {"train_subset": 2000, "cae_model_uri": f"runs:/{cae_run.info.run_id}/encoder",
                                    "n_points": 300}, tmp)
    analysis = runs_of()[-1]
    return {"cae": cae_run, "vae": vae_run, "analysis": analysis, "tmp": tmp, "result": result}


def test_metrics_are_fractions_above_chance(store):
    run = store["analysis"]
    assert run.info.status == "FINISHED" and run.data.tags["fmae.step"] == "analyze"
    for name in ("cae", "vae"):
        accuracy, silhouette = run.data.metrics[f"{name}_knn_accuracy"], run.data.metrics[f"{name}_silhouette"]
        assert 0.4 < accuracy <= 1, f"{name} 5-NN accuracy {accuracy} is near chance (0.1)"
        assert math.isfinite(silhouette) and -1 <= silhouette <= 1


def test_figures_are_pngs(store, tmp_path):
    run = store["analysis"]
    for name in ANALYSIS_PNGS:
        assert_png(MlflowClient().download_artifacts(run.info.run_id, name, str(tmp_path)))


def test_lineage_names_both_models_and_the_decoders_used(store):
    tags, cae_id, vae_id = store["analysis"].data.tags, store["cae"].info.run_id, store["vae"].info.run_id
    assert tags["fmae.cae_source_run_id"] == cae_id and tags["fmae.cae_decoder"] == f"runs:/{cae_id}/cae"
    assert tags["fmae.vae_source_model"] == "fmae-vae/1" and tags["fmae.vae_source_run_id"] == vae_id
    assert tags["fmae.vae_decoder"] == "models:/fmae-vae@champion"


@pytest.mark.parametrize("name,logged", [("cae", "encoder"), ("vae", "encoder")])
def test_an_encoder_alone_finds_its_decoder_by_any_uri(store, name, logged):
    run_id = store[name].info.run_id
    (model,) = mlflow.search_logged_models(
        experiment_ids=[store[name].info.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{run_id}' AND name = '{logged}'")
    for uri in (f"runs:/{run_id}/{logged}", f"models:/{model.model_id}"):
        loaded = load_autoencoder(name, uri)
        assert loaded.decoder is not None and loaded.decoder_uri == f"runs:/{run_id}/{name}"


def test_a_model_uri_that_names_nothing_exits_2_and_leaves_no_run(store):
    tmp = store["tmp"]
    before = len(runs_of())
    cae_uri = f"runs:/{store['cae'].info.run_id}/encoder"
    result = fmae(["analyze", "--cae_model_uri", cae_uri, "--vae_model_uri", "models:/no-such-vae@champion"], tmp)
    assert result.returncode == 2
    assert "models:/no-such-vae@champion" in result.stderr and "Traceback" not in result.stderr
    assert len(runs_of()) == before


def test_a_model_of_the_wrong_kind_is_refused(store):
    with pytest.raises(UserError, match="is a vae; this step needs a cae or encoder"):
        load_autoencoder("cae", f"runs:/{store['vae'].info.run_id}/vae")


def test_no_run_is_left_running(store):
    assert all(run.info.status != "RUNNING" for run in runs_of())
