"""`finetune` end to end, as users run it: an encoder from a quick `train_cae`, then the three
modes through `mlflow run` on a small real subset, into one tracking store."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments.data import CLASS_NAMES
from experiments.finetune import Config, flipped_nll_loss, make_classifier_optimizer, random_flip
from experiments.tracking import load_module
from fmae_models import CAEConfig, Classifier, Encoder
from tests.helpers import assert_png, fmae, metric_history, mlflow_run, runs_of

SUBSET = {"train_subset": 2500}
EPOCHS = 3
REGISTER_AS = "clf-test"


@pytest.fixture(scope="module")
def store(module_store):
    """A tracking store holding a 2-epoch encoder and one finetune run per mode."""
    tmp = module_store
    # with BatchNorm, so frozen mode must also keep its running statistics (full: the seed's encoder, in test_pipeline)
    mlflow_run("train_cae", {**SUBSET, "epochs": 2, "encoded_space_dim": 8, "lr": "3e-3", "batch_norm": "true"}, tmp,
               experiment="cae")
    (cae_run,) = runs_of("cae")
    encoder_uri = f"runs:/{cae_run.info.run_id}/encoder"
    runs = {}
    for mode, lr, augment in (("frozen", "0.01", "none"), ("full", "0.003", "flip"), ("scratch", "0.003", "flip")):
        result = mlflow_run("finetune", {**SUBSET, "model_uri": encoder_uri, "mode": mode, "epochs": EPOCHS, "lr": lr,
                                         "encoder_lr_factor": "0.7", "augment": augment, "register_as": REGISTER_AS}, tmp)
        runs[mode] = (runs_of()[-1], result)
    return {"tmp": tmp, "encoder_uri": encoder_uri, "runs": runs}


@pytest.mark.parametrize("mode", ["frozen", "full", "scratch"])
def test_each_mode_logs_per_epoch_metrics_and_a_test_accuracy(store, mode):
    run, result = store["runs"][mode]
    assert run.info.status == "FINISHED"
    assert run.data.tags["fmae.mode"] == mode and run.data.params["mode"] == mode
    assert run.data.params["encoder_lr_factor"] == "0.7" and run.data.params["encoder_batch_norm"] == "True"
    for key in ("train_nll", "val_nll", "val_accuracy"):
        assert [step for step, _ in metric_history(run.info.run_id, key)] == list(range(1, EPOCHS + 1))
    assert "train_loss" not in run.data.metrics  # the CAE's name, in another unit
    losses = [v for _, v in metric_history(run.info.run_id, "train_nll")]
    assert losses[-1] < losses[0], f"{mode}: train_nll did not fall: {losses}"
    accuracy = run.data.metrics["test_accuracy"]
    assert 0.3 < accuracy <= 1, f"{mode}: test_accuracy {accuracy} is hardly above chance (0.1)"
    assert not [k for k in run.data.metrics if k.startswith("test_accuracy_")]  # one table, not ten charts
    path = MlflowClient().download_artifacts(run.info.run_id, "per_class_accuracy.json", str(store["tmp"]))
    table = pd.read_json(path, orient="split")
    assert list(table["class"]) == list(CLASS_NAMES) and table["accuracy"].between(0, 1).all()
    assert table["test_images"].sum() == 10_000
    assert np.mean(table["accuracy"]) == pytest.approx(accuracy, abs=0.05)  # the test set is balanced
    assert "epoch   3" in result.stdout and f"runs/{run.info.run_id}?workflowType=machine_learning" in result.stdout


def test_runs_carry_the_encoders_lineage(store):
    cae_run_id = store["encoder_uri"].split("/")[1]
    for mode, (run, _) in store["runs"].items():
        assert run.data.tags["fmae.source_run_id"] == cae_run_id
        assert run.data.tags["fmae.source_model_uri"] == store["encoder_uri"]
        assert run.data.tags["fmae.encoder_init"] == ("random" if mode == "scratch" else "pretrained")
    versions = MlflowClient().search_model_versions(f"name='{REGISTER_AS}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert {v.tags["fmae.mode"] for v in versions} == {"frozen", "full", "scratch"}
    assert all(v.tags["fmae.source_run_id"] == cae_run_id for v in versions)
    for v in versions:  # each version says where it came from, with a link to the encoder's run
        assert f"/runs/{cae_run_id}?workflowType=machine_learning)" in v.description
        assert f"Fine-tuning mode: {v.tags['fmae.mode']}." in v.description


def test_confusion_matrix_png(store, tmp_path):
    run, _ = store["runs"]["full"]
    assert_png(MlflowClient().download_artifacts(run.info.run_id, "confusion_matrix.png", str(tmp_path)))


def test_registered_champion_maps_images_to_log_probabilities(store):
    champion = MlflowClient().get_model_version_by_alias(REGISTER_AS, "champion")
    best = max(store["runs"].values(), key=lambda r: r[0].data.metrics["test_accuracy"])[0]
    assert champion.run_id == best.info.run_id  # the champion rule: highest test_accuracy
    model = mlflow.pytorch.load_model(f"models:/{REGISTER_AS}@champion")
    log_probs = model(torch.rand(7, 1, 28, 28))
    assert log_probs.shape == (7, 10)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(7), atol=1e-4)


def test_frozen_mode_leaves_the_encoder_bit_identical(store):
    source, _, _ = load_module(store["encoder_uri"], kinds=("encoder",))
    frozen_run, _ = store["runs"]["frozen"]
    classifier, kind, _ = load_module(f"runs:/{frozen_run.info.run_id}/classifier")
    assert kind == "classifier"
    before, after = source.state_dict(), classifier.encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    full_run, _ = store["runs"]["full"]
    tuned, _, _ = load_module(f"runs:/{full_run.info.run_id}/classifier")
    assert not all(torch.equal(before[k], tuned.encoder.state_dict()[k]) for k in before), "full mode never moved the encoder"


def test_a_model_uri_naming_nothing_exits_2_without_traceback_or_running_run(tmp_path, tracking):
    missing = "models:/no-such-encoder@champion"
    result = fmae(["finetune", "--model_uri", missing, "--train_subset", "100"], tmp_path)
    assert result.returncode == 2
    assert f"model_uri={missing!r} names no model" in result.stderr
    assert "Traceback" not in result.stderr
    # through `mlflow run`, which opens the run before the step starts: it must not stay RUNNING
    result = mlflow_run("finetune", {"model_uri": missing, "train_subset": 100}, tmp_path, check=False)
    assert result.returncode != 0 and f"model_uri={missing!r} names no model" in result.stderr
    (run,) = runs_of()
    assert run.info.status == "FAILED"


def test_a_model_uri_that_is_not_an_encoder_is_rejected(store, tmp_path):
    cae_uri = store["encoder_uri"].replace("/encoder", "/cae")
    result = fmae(["finetune", "--model_uri", cae_uri, "--train_subset", "100"], tmp_path,
                  MLFLOW_TRACKING_URI=f"sqlite:///{store['tmp'] / 'mlflow.db'}")
    assert result.returncode == 2 and "is a cae; this step needs an encoder" in result.stderr
    assert "Traceback" not in result.stderr
    classifier_uri = f"runs:/{store['runs']['frozen'][0].info.run_id}/classifier"
    result = fmae(["finetune", "--model_uri", classifier_uri, "--train_subset", "100"], tmp_path,
                  MLFLOW_TRACKING_URI=f"sqlite:///{store['tmp'] / 'mlflow.db'}")
    assert result.returncode == 2 and "is a classifier; this step needs an encoder" in result.stderr


@pytest.mark.parametrize("mode, epochs, lr, augment", [("frozen", 100, 0.01, "none"), ("full", 15, 0.01, "flip"),
                                                      ("scratch", 15, 0.01, "flip")])
def test_each_mode_defaults_to_what_measured_best_and_a_given_flag_wins(mode, epochs, lr, augment):
    config = Config(mode=mode)
    assert (config.epochs, config.lr, config.augment) == (epochs, lr, augment)  # what the run logs as params
    assert Config(mode=mode, epochs=3, lr=0.5).epochs == 3 and Config(mode=mode, epochs=3, lr=0.5).lr == 0.5


def test_bad_mode_is_rejected(tmp_path, tracking):
    result = fmae(["finetune", "--mode", "partial"], tmp_path)
    assert result.returncode == 2 and "mode='partial' is not one of frozen, full, scratch" in result.stderr


@pytest.mark.parametrize("mode, encoder_lr", [("frozen", None), ("full", 0.002), ("scratch", 0.01)])
def test_full_mode_moves_the_encoder_at_lr_times_encoder_lr_factor(mode, encoder_lr):
    model = Classifier(Encoder(CAEConfig(n_channels=4, encoded_space_dim=6)), 6)
    if mode == "frozen":
        model.freeze_encoder()
    optimizer = make_classifier_optimizer(model, Config(mode=mode, lr=0.01, encoder_lr_factor=0.2))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert all(rates[id(p)] == 0.01 for p in model.head.parameters())
    assert [rates.get(id(p)) for p in model.encoder.parameters()] == [encoder_lr] * len(list(model.encoder.parameters()))


def test_bad_encoder_lr_factor_is_rejected(tmp_path, tracking):
    result = fmae(["finetune", "--mode", "full", "--encoder_lr_factor", "0"], tmp_path)
    assert result.returncode == 2 and "encoder_lr_factor=0.0 must be more than 0" in result.stderr


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


def test_augment_with_frozen_mode_is_rejected(tmp_path, tracking):
    result = fmae(["finetune", "--mode", "frozen", "--augment", "flip"], tmp_path)
    assert result.returncode == 2 and "augment='flip' needs mode=full or scratch" in result.stderr
    result = fmae(["finetune", "--mode", "full", "--augment", "crop"], tmp_path)
    assert result.returncode == 2 and "augment='crop' is not one of none, flip" in result.stderr
