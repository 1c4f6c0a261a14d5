"""Every step on a CUDA device, as users run it there (`gpu` marker; skipped without CUDA).
benchmarks/gpu.sh runs these on the GPU machine (see the README's Performance section)."""

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import mlflow_run, runs_of

DEVICE = "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# The whole study, small: 4 trials sharing the GPU (a quarter each), then every later step.
TINY = {
    "train_subset": 3000,
    "num_samples": 4,
    "max_epochs": 2,
    "grace_period": 1,
    "gpus_per_trial": 0.25,
    "cpus_per_trial": 1,
    "epochs": 2,
    "n_points": 300,
    "device": DEVICE,
}
STEPS = ("tune", "finetune", "vae", "analyze")


def assert_quiet(result) -> None:
    """Nothing that worked printed an error on the way."""
    output = result.stdout + result.stderr
    for text in ("Got error", "Traceback", "Failed to validate serving input"):
        assert text not in output, output[max(0, output.find(text) - 2000) :][:4000]


@pytest.fixture(scope="module")
def study(module_store):
    tmp = module_store
    result = mlflow_run("main", {**TINY, "storage_path": tmp / "ray"}, tmp)
    runs = runs_of()
    (parent,) = [r for r in runs if r.data.tags.get("fmae.step") == "main"]
    steps = {r.data.tags["fmae.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return {"tmp": tmp, "result": result, "parent": parent, "steps": steps, "runs": runs}


def test_main_runs_every_step_on_the_gpu_quietly(study):
    assert_quiet(study["result"])
    assert study["parent"].info.status == "FINISHED"
    assert set(study["steps"]) == set(STEPS)
    for step, run in study["steps"].items():
        assert run.info.status == "FINISHED", step
        assert run.data.params["device"] == DEVICE, step


def test_trials_share_the_gpu_four_at_once(study):
    tune_run = study["steps"]["tune"]
    assert tune_run.data.params["concurrent_trials"] == "4"
    assert tune_run.data.metrics["peak_concurrent_trials"] >= 2
    trials = [r for r in study["runs"] if r.data.tags.get("mlflow.parentRunId") == tune_run.info.run_id]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)


@pytest.mark.parametrize("name,out", [("fmae-cae-encoder", 14), ("fmae-classifier", 10)])
def test_models_logged_on_the_gpu_load_both_ways_on_cpu_and_gpu(study, name, out):
    uri = f"models:/{name}@champion"
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    pyfunc = mlflow.pyfunc.load_model(uri)  # CUDA is present here: this used to fail
    assert np.asarray(pyfunc.predict(x)).shape[0] == 3
    graph = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        on_cpu = graph(torch.from_numpy(x))
    assert on_cpu.shape[0] == 3
    if name == "fmae-classifier":
        assert on_cpu.shape == (3, out) and torch.allclose(on_cpu.exp().sum(1), torch.ones(3), atol=1e-4)


def test_train_cae_on_the_gpu(module_store):
    tmp = module_store
    result = mlflow_run(
        "train_cae", {"train_subset": 3000, "epochs": 2, "device": DEVICE}, tmp, experiment="gpu-train-cae"
    )
    assert_quiet(result)
    (run,) = runs_of("gpu-train-cae")
    assert run.info.status == "FINISHED" and run.data.metrics["test_loss"] < 0.2
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert "reconstructions.png" in names
