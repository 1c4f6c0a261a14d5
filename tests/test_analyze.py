"""`analyze`: the shared study's latent-space run, as `main` left it, reading both models by URI
as users do; and how an encoder alone finds its decoder."""

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from experiments import cli
from experiments.analyze import load_autoencoder
from experiments.errors import UserError
from tests.helpers import assert_png

ANALYSIS_PNGS = [f"{m}_{kind}.png" for m in ("cae", "vae") for kind in ("pca", "tsne", "samples", "interpolation")]


def test_metrics_are_fractions_above_chance(study):
    run = study.analyze
    assert run.info.status == "FINISHED" and run.data.tags["fmae.step"] == "analyze"
    for name in ("cae", "vae"):
        accuracy, silhouette = run.data.metrics[f"{name}_knn_accuracy"], run.data.metrics[f"{name}_silhouette"]
        assert 0.4 < accuracy <= 1, f"{name} 5-NN accuracy {accuracy} is near chance (0.1)"
        assert math.isfinite(silhouette) and -1 <= silhouette <= 1


def test_figures_are_pngs(study, tmp_path):
    for name in ANALYSIS_PNGS:
        assert_png(MlflowClient().download_artifacts(study.analyze.info.run_id, name, str(tmp_path)))


def test_lineage_names_both_models_and_the_decoders_used(study):
    tags, vae = study.analyze.data.tags, study.vae.info.run_id
    trial = next(t.info.run_id for t in study.trials if t.data.tags.get("fmae.best_trial") == "true")
    assert tags["fmae.cae_source_model"] == "fmae-cae-encoder/1" and tags["fmae.cae_source_run_id"] == trial
    assert tags["fmae.cae_decoder"] == f"runs:/{trial}/cae"  # the encoder alone: its run's whole autoencoder
    assert tags["fmae.vae_source_model"] == "fmae-vae/1" and tags["fmae.vae_source_run_id"] == vae
    assert tags["fmae.vae_decoder"] == "models:/fmae-vae/1"  # a whole VAE decodes itself


@pytest.mark.parametrize("name,step", [("cae", "finished"), ("vae", "vae")])
def test_an_encoder_alone_finds_its_decoder_by_any_uri(study, name, step):
    run = getattr(study, step)  # a trial that ran to the end logged both; so did the VAE
    (model,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'encoder'",
    )
    for uri in (f"runs:/{run.info.run_id}/encoder", f"models:/{model.model_id}"):
        loaded = load_autoencoder(name, uri)
        assert loaded.decoder is not None and loaded.decoder_uri == f"runs:/{run.info.run_id}/{name}"


def test_a_model_uri_that_names_nothing_exits_2_and_leaves_no_run(study, capsys):
    before = len(study.runs)
    argv = [
        "analyze",
        "--cae_model_uri",
        f"runs:/{study.finished.info.run_id}/encoder",
        "--vae_model_uri",
        "models:/no-such-vae@champion",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "models:/no-such-vae@champion" in err and "Traceback" not in err
    experiment = study.experiment_id
    assert len(MlflowClient().search_runs([experiment], max_results=1000)) == before


def test_a_model_of_the_wrong_kind_is_refused(study):
    with pytest.raises(UserError, match="is a vae; this step needs a cae or encoder"):
        load_autoencoder("cae", f"runs:/{study.vae.info.run_id}/vae")


def test_no_run_is_left_running(study):
    assert all(run.info.status != "RUNNING" for run in study.runs)
