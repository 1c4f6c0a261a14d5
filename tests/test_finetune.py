"""`finetune`: the shared study's frozen and full runs as users got them from `main`, and on their
own the supervised baseline (scratch), seed repeats, the modes' defaults and the rejections."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments import cli, finetune
from experiments.classification import flipped_nll_loss, make_classifier_optimizer, random_flip
from experiments.data import CLASS_NAMES
from experiments.errors import UserError
from experiments.finetune import Config
from experiments.tracking.models import load_module, log_module
from fmae_models import CAEConfig, Classifier, Encoder
from tests.helpers import assert_png, metric_history, runs_of
from tests.study import STUDY

EPOCHS = STUDY["epochs"]


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_each_mode_logs_per_epoch_metrics_and_a_test_accuracy(study, mode, tmp_path):
    run = getattr(study, mode)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fmae.mode"] == mode and run.data.params["mode"] == mode
    for key in ("train_nll", "val_nll", "val_accuracy"):
        assert [step for step, _ in metric_history(run.info.run_id, key)] == list(range(1, EPOCHS + 1))
    assert "train_loss" not in run.data.metrics  # the CAE's name, in another unit
    losses = [v for _, v in metric_history(run.info.run_id, "train_nll")]
    assert losses[-1] < losses[0], f"{mode}: train_nll did not fall: {losses}"
    accuracy = run.data.metrics["test_accuracy"]
    assert 0.3 < accuracy <= 1, f"{mode}: test_accuracy {accuracy} is hardly above chance (0.1)"
    assert not [k for k in run.data.metrics if k.startswith("test_accuracy_")]  # one table, not ten charts
    path = MlflowClient().download_artifacts(run.info.run_id, "per_class_accuracy.json", str(tmp_path))
    table = pd.read_json(path, orient="split")
    assert list(table["class"]) == list(CLASS_NAMES) and table["accuracy"].between(0, 1).all()
    assert table["test_images"].sum() == 10_000
    assert np.mean(table["accuracy"]) == pytest.approx(accuracy, abs=0.05)  # the test set is balanced
    assert_png(MlflowClient().download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path)))
    assert f"runs/{run.info.run_id}?workflowType=machine_learning" in study.console
    assert run.data.tags["mlflow.note.content"].startswith(f"**Classifier, mode {mode}**")


def test_runs_carry_the_encoders_lineage(study):
    search_version = MlflowClient().get_model_version("fmae-cae-encoder", "1")
    assert study.frozen.data.tags["fmae.source_model"] == "fmae-cae-encoder/1"
    assert study.frozen.data.tags["fmae.source_run_id"] == search_version.run_id
    trial_id = study.full.data.tags["fmae.source_run_id"]
    assert study.full.data.tags["fmae.source_model_uri"] == f"runs:/{trial_id}/encoder"
    assert all(r.data.tags["fmae.encoder_init"] == "pretrained" for r in (study.frozen, study.full))
    versions = {v.tags["fmae.mode"]: v for v in MlflowClient().search_model_versions("name='fmae-classifier'")}
    assert set(versions) == {"frozen", "full"}
    for mode, version in versions.items():  # each says where it came from, with a link to the encoder's run
        source = version.tags["fmae.source_run_id"]
        assert f"/runs/{source}?workflowType=machine_learning)" in version.description
        assert f"Fine-tuning mode: {mode}." in version.description
    assert "(a search trial)" in versions["full"].description


def test_registered_champion_maps_images_to_log_probabilities(study):
    champion = MlflowClient().get_model_version_by_alias("fmae-classifier", "champion")
    best = max((study.frozen, study.full), key=lambda r: r.data.metrics["test_accuracy"])
    assert champion.run_id == best.info.run_id  # the champion rule: highest test_accuracy
    log_probs = mlflow.pytorch.load_model("models:/fmae-classifier@champion")(torch.rand(7, 1, 28, 28))
    assert log_probs.shape == (7, 10)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(7), atol=1e-4)


def test_frozen_mode_leaves_the_encoder_bit_identical(study):
    source, _, _ = load_module("models:/fmae-cae-encoder/1", kinds=("encoder",))
    classifier, kind, _ = load_module(f"runs:/{study.frozen.info.run_id}/classifier")
    assert kind == "classifier"
    before, after = source.state_dict(), classifier.encoder.state_dict()  # BatchNorm's statistics included
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trial, _, _ = load_module(study.full.data.tags["fmae.source_model_uri"])
    tuned, _, _ = load_module(f"runs:/{study.full.info.run_id}/classifier")
    before = trial.state_dict()
    assert not all(torch.equal(before[k], tuned.encoder.state_dict()[k]) for k in before), "full mode never moved it"


@pytest.fixture
def encoder_uri(tracking, small_data):
    """A small encoder with BatchNorm logged to this test's store (untrained: the modes' plumbing is tested)."""
    config = {"n_channels": 4, "encoded_space_dim": 6, "batch_norm": True}
    torch.manual_seed(0)
    with mlflow.start_run() as run:
        log_module(Encoder(CAEConfig(**config)), "encoder", "encoder", config, run_id=run.info.run_id)
    return f"runs:/{run.info.run_id}/encoder"


def test_scratch_is_the_same_architecture_from_random_weights(encoder_uri):
    run_id = finetune.run(
        Config(model_uri=encoder_uri, mode="scratch", epochs=1, train_subset=2000, register_as="clf-test")
    )
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["fmae.encoder_init"] == "random" and run.data.params["encoder_batch_norm"] == "True"
    source, _, _ = load_module(encoder_uri)
    scratch, _, _ = load_module(f"runs:/{run_id}/classifier")
    assert scratch.encoder.state_dict().keys() == source.state_dict().keys()
    assert not torch.equal(scratch.encoder.conv[0].weight, source.conv[0].weight)
    assert 0.1 < run.data.metrics["test_accuracy"] <= 1


def test_repeats_train_one_nested_run_per_seed_and_the_champion_reads_their_mean(encoder_uri, capsys):
    """repeats=3: three seeds, each a run nested in the step's; the step's test_accuracy is their
    mean (what the champion rule compares), test_accuracy_std their spread; the version says so."""
    run_id = finetune.run(Config(model_uri=encoder_uri, epochs=3, repeats=3, train_subset=2000, register_as="clf-rep"))
    client = MlflowClient()
    seeds = [r for r in runs_of("fmae") if r.data.tags.get("mlflow.parentRunId") == run_id]
    assert sorted(r.data.params["seed"] for r in seeds) == ["0", "1", "2"]
    accuracies = [r.data.metrics["test_accuracy"] for r in seeds]
    for seed in seeds:
        assert [s for s, _ in metric_history(seed.info.run_id, "val_accuracy")] == [1, 2, 3]
        assert seed.info.status == "FINISHED" and seed.data.tags["mlflow.note.content"]
    assert len(set(accuracies)) > 1  # the seeds really differ
    step = client.get_run(run_id).data.metrics
    assert step["test_accuracy"] == pytest.approx(np.mean(accuracies))
    assert step["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    version = client.get_model_version_by_alias("clf-rep", "champion")
    assert float(version.tags["test_accuracy"]) == pytest.approx(np.mean(accuracies))
    assert float(version.tags["fmae.model_test_accuracy"]) == pytest.approx(sorted(accuracies)[1])  # the median seed's
    assert f"± {step['test_accuracy_std']:.4f} (mean ± std over 3 seeds)" in version.description
    assert "mean ± std over 3 seeds" in client.get_run(run_id).data.tags["mlflow.note.content"]
    out = capsys.readouterr().out
    assert out.count("epoch   1 ") == 1 and out.count(": test_accuracy ") == 3  # epochs echoed for the first seed


def test_a_model_uri_naming_nothing_exits_2_without_traceback_or_running_run(tracking, capsys):
    missing = "models:/no-such-encoder@champion"
    assert cli.main(["finetune", "--model_uri", missing, "--train_subset", "100"]) == 2
    err = capsys.readouterr().err
    assert f"model_uri={missing!r} names no model" in err and "Traceback" not in err
    assert mlflow.get_experiment_by_name("fmae") is None or not runs_of("fmae")  # no run was left behind


def test_a_model_uri_that_is_not_an_encoder_is_rejected(study, capsys):
    for uri, kind in (
        (f"runs:/{study.finished.info.run_id}/cae", "cae"),
        (f"runs:/{study.frozen.info.run_id}/classifier", "classifier"),
    ):
        assert cli.main(["finetune", "--model_uri", uri, "--train_subset", "100"]) == 2
        assert f"is a {kind}; this step needs an encoder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mode, epochs, lr, augment",
    [("frozen", 100, 0.01, "none"), ("full", 15, 0.01, "flip"), ("scratch", 15, 0.01, "flip")],
)
def test_each_mode_defaults_to_what_measured_best_and_a_given_flag_wins(mode, epochs, lr, augment):
    config = Config(mode=mode)
    assert (config.epochs, config.lr, config.augment) == (epochs, lr, augment)  # what the run logs as params
    assert Config(mode=mode, epochs=3, lr=0.5).epochs == 3 and Config(mode=mode, epochs=3, lr=0.5).lr == 0.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mode", "partial"], "mode='partial' is not one of frozen, full, scratch"),
        (["--mode", "full", "--encoder_lr_factor", "0"], "encoder_lr_factor=0.0 must be more than 0"),
        (["--mode", "frozen", "--augment", "flip"], "augment='flip' needs mode=full or scratch"),
        (["--mode", "full", "--augment", "crop"], "augment='crop' is not one of none, flip"),
        (["--repeats", "0"], "repeats=0 must be more than 0"),
    ],
)
def test_bad_parameters_are_rejected_before_any_work(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_argv(argv)


@pytest.mark.parametrize("mode, encoder_lr", [("frozen", None), ("full", 0.002), ("scratch", 0.01)])
def test_full_mode_moves_the_encoder_at_lr_times_encoder_lr_factor(mode, encoder_lr):
    model = Classifier(Encoder(CAEConfig(n_channels=4, encoded_space_dim=6)), 6)
    if mode == "frozen":
        model.freeze_encoder()
    optimizer = make_classifier_optimizer(model, Config(mode=mode, lr=0.01, encoder_lr_factor=0.2))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert all(rates[id(p)] == 0.01 for p in model.head.parameters())
    assert [rates.get(id(p)) for p in model.encoder.parameters()] == [encoder_lr] * len(
        list(model.encoder.parameters())
    )


def test_flip_mirrors_about_half_the_images_and_only_while_training():
    torch.manual_seed(0)
    x = torch.rand(400, 1, 28, 28)
    out = random_flip(x)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and 150 < int(mirrored.sum()) < 250
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.LogSoftmax(1))
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    labels = torch.zeros(400, dtype=torch.long)
    flipped_nll_loss(model.eval(), x, labels)
    assert torch.equal(seen[-1], x)
    flipped_nll_loss(model.train(), x, labels)
    assert not torch.equal(seen[-1], x)
