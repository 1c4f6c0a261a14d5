"""`main`: the whole study as one parent run, through `mlflow run . -e main`."""

import pytest
from mlflow.tracking import MlflowClient

from experiments.errors import UserError
from experiments.pipeline import Config
from experiments.tracking import get_run
from tests.helpers import fmae, mlflow_run, runs_of

TINY = {"train_subset": 2000, "num_samples": 2, "max_epochs": 2, "grace_period": 1, "epochs": 1, "n_points": 300,
        "top_encoders": 1}


def test_main_runs_the_steps_in_order_as_children(tmp_path, tracking):
    mlflow_run("main", {**TINY, "storage_path": tmp_path / "ray"}, tmp_path)
    runs = runs_of()
    (parent,) = [r for r in runs if r.data.tags.get("fmae.step") == "main"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "main"
    steps = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    steps.sort(key=lambda r: r.info.start_time)
    assert [r.data.tags["fmae.step"] for r in steps] == ["tune", "finetune", "finetune", "vae", "analyze"]
    by_step = {r.data.tags["fmae.step"]: r for r in reversed(steps)}  # finetune: its first run
    # top_encoders=1: the search's best trial that ran to the end is fine-tuned in full mode as well
    frozen, full = steps[1:3]
    assert frozen.data.params["mode"] == "frozen" and full.data.params["mode"] == "full"
    trial = get_run(full.data.tags["fmae.source_run_id"])
    assert trial.data.tags["mlflow.parentRunId"] == by_step["tune"].info.run_id and "fmae.pruned" not in trial.data.tags
    assert full.data.params["model_uri"] == f"runs:/{trial.info.run_id}/encoder"
    assert full.data.tags["fmae.source_trial"] == trial.info.run_name
    assert by_step["finetune"].data.params["model_uri"] == "models:/fmae-cae-encoder/1"  # this run's search
    assert by_step["finetune"].data.params["epochs"] == "1"  # a step parameter given to main reaches the steps
    client = MlflowClient()
    page = open(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))).read()
    for step, run in by_step.items():
        assert f"<h2>{step}</h2>" in page and run.info.run_id in page
    assert "data:image/png;base64," in page
    for run in runs:  # trials ASHA stopped early too: that is the search working
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
    # The study's results on the top run, and a description linking every step's run
    expected = {"best_test_loss": "tune", "test_accuracy": "finetune", "test_recon_mse": "vae",
                "cae_knn_accuracy": "analyze", "vae_knn_accuracy": "analyze"}
    by_step["finetune"] = max((frozen, full), key=lambda r: r.data.metrics["test_accuracy"])  # the best classifier
    for metric, step in expected.items():
        assert parent.data.metrics[metric] == pytest.approx(by_step[step].data.metrics[metric]), metric
    assert parent.data.metrics["frozen_test_accuracy"] == pytest.approx(frozen.data.metrics["test_accuracy"])
    note = parent.data.tags["mlflow.note.content"]
    for run in steps:
        assert f"[{run.data.tags['fmae.step']}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in note
    assert "http://" not in page  # no links that die inside MLflow's artifact viewer


def test_main_rejects_a_parameter_no_step_takes():
    with pytest.raises(UserError, match="no step has that parameter"):
        Config.from_argv(["--nonsense", "1"])
    with pytest.raises(UserError, match="not a valid int"):
        Config.from_argv(["--num_samples", "many"])


def test_main_bad_profile_exits_2(tmp_path, tracking):
    result = fmae(["main", "--profile", "huge"], tmp_path)
    assert result.returncode == 2 and "profile='huge'" in result.stderr
