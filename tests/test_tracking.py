"""Logged models load the ways users load them, wherever they are loaded."""

import logging

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.client import TrackingServiceClient

from experiments.tracking.models import log_module
from experiments.tracking.runs import DEFAULT_EXPERIMENT, start_step_run
from experiments.tracking.step_run import StepRun
from fmae_models import CAE, CAEConfig


def test_a_logged_encoder_loads_with_pyfunc_where_cuda_is_present(tracking, monkeypatch, caplog):
    """pt2 models are exported on the CPU; MLflow's pyfunc loader used to pick cuda wherever
    CUDA was present and refuse them ("exported on cpu, can't be loaded on cuda"), and every
    log_model printed that as "Got error". Here CUDA is made to look present."""
    config = CAEConfig(n_channels=4, encoded_space_dim=5)
    encoder = CAE(config).encoder
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.WARNING), mlflow.start_run():
        info = log_module(encoder, "encoder", "encoder", {"n_channels": 4, "encoded_space_dim": 5})
    assert "Got error" not in caplog.text and "Failed to validate" not in caplog.text
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = encoder.eval()(torch.from_numpy(x)).numpy()
    assert np.allclose(mlflow.pyfunc.load_model(info.model_uri).predict(x), expected, atol=1e-5)
    with torch.no_grad():
        graph_output = mlflow.pytorch.load_model(info.model_uri)(torch.from_numpy(x)).numpy()
    assert np.allclose(graph_output, expected, atol=1e-5)


def test_a_long_run_echoes_about_twenty_epochs_and_logs_all_of_them(tracking, capsys):
    with mlflow.start_run() as run:
        step_run = StepRun(run.info.run_id, epochs=100)
        for epoch in range(1, 101):
            step_run.log_epoch(epoch, {"train_nll": 1 / epoch})
    echoed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [int(line.split()[1]) for line in echoed] == [1, *range(5, 101, 5)]
    assert "one epoch in 5 echoed here" in echoed[0]
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_nll")) == 100


def test_a_step_that_loses_the_race_to_create_the_experiment_still_runs_in_it(tracking, monkeypatch):
    """Two searches started at once on a new store both create the fmae experiment. The loser's
    runs used to land in Default; on a store `mlflow ui` had created, Default's artifacts go
    only through a server, and the search crashed at its first artifact (seen in CI)."""
    lookup = TrackingServiceClient.get_experiment_by_name  # under MlflowClient and mlflow.set_experiment
    raced = []

    def other_process_creates_it_first(self, name):
        if not raced:  # this lookup misses it; the other process creates it just after
            raced.append(MlflowClient(tracking).create_experiment(name))
            return None
        return lookup(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", other_process_creates_it_first)
    with start_step_run("tune", {"seed": 0}) as run:
        mlflow.log_text("a figure", "figure.txt")
    assert raced and run.info.experiment_id == raced[0]
    assert MlflowClient().get_experiment(run.info.experiment_id).name == DEFAULT_EXPERIMENT
