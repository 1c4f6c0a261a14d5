"""Canaries for experiments/tracking/mlflow_compat.py: each test shows MLflow 3.17's behaviour
that a workaround there exists for, and FAILS once MLflow fixes it. When one fails after an
upgrade, delete the workaround it names (and the canary)."""

import inspect
import logging

import mlflow
import numpy as np
import pytest
import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.client import TrackingServiceClient

from experiments.tracking import mlflow_compat
from fmae_models import CAEConfig, Encoder


def test_set_experiment_leaves_the_loser_of_a_creation_race_in_default(tracking, monkeypatch):
    """-> mlflow_compat.create_experiment_once."""
    lookup, raced = TrackingServiceClient.get_experiment_by_name, []

    def created_meanwhile(self, name):  # this process's lookup misses it; another process creates it just after
        if not raced:
            raced.append(MlflowClient(tracking).create_experiment(name))
            return None
        return lookup(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", created_meanwhile)
    experiment = mlflow.set_experiment("raced")
    with mlflow.start_run() as run:
        pass
    assert experiment.experiment_id == raced[0] and run.info.experiment_id != raced[0]  # fixed: delete the workaround


def test_mlflow_run_marks_a_killed_run_failed(tracking):
    """-> mlflow_compat.keep_killed_under_mlflow_run."""
    from mlflow.projects import _maybe_set_run_terminated

    client = MlflowClient()
    run = client.create_run(client.create_experiment("killed"))
    client.set_terminated(run.info.run_id, "KILLED")
    _maybe_set_run_terminated(run, "FAILED")  # what `mlflow run` does when its step was interrupted
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_pt2_pyfunc_is_refused_where_cuda_is_present_unless_pinned_to_the_cpu(tracking, monkeypatch):
    """-> mlflow_compat.save_cpu_pytorch_model / CPU_PYTORCH_FLAVOR."""
    encoder = Encoder(CAEConfig(n_channels=4, encoded_space_dim=4)).eval()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            encoder, name="plain", input_example=x, serialization_format="pt2", pip_requirements=["torch"]
        )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(MlflowException, match="can't be loaded on"):
        mlflow.pyfunc.load_model(info.model_uri)


def test_mlflow_run_names_its_runs_at_random():
    """-> mlflow_compat.is_generated_name (a run so named is renamed after its step)."""
    from mlflow.projects.utils import _create_run

    assert "run_name" not in inspect.getsource(_create_run)
    assert mlflow_compat.is_generated_name("delightful-mule-836")


def test_model_log_links_the_system_metrics_at_its_step_to_the_model(tracking):
    """-> mlflow_compat.UNLINKED_STEP / link_results_to_model."""
    encoder = Encoder(CAEConfig(n_channels=4, encoded_space_dim=4)).eval()
    with mlflow.start_run() as run:
        MlflowClient().log_batch(run.info.run_id, metrics=[Metric("system/cpu_utilization_percentage", 5.0, 0, 0)])
        x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
        info = mlflow.pytorch.log_model(encoder, name="linked", input_example=x, pip_requirements=["torch"])
    model = mlflow.get_logged_model(info.model_id)
    assert "system/cpu_utilization_percentage" in {m.key for m in model.metrics}


def test_setting_an_alias_is_a_read_then_an_insert():
    """-> mlflow_compat.is_alias_conflict (two registrars setting it at once: one gets an IntegrityError)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    assert "session.merge(" in inspect.getsource(SqlAlchemyStore.set_registered_model_alias)


def test_stating_requirements_scans_every_installed_distribution(monkeypatch):
    """-> mlflow_compat.requirements_of_this_interpreter."""
    from mlflow.utils import environment, requirements_utils

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # as in a new process
    environment._process_pip_requirements([], [f"mlflow=={mlflow.__version__}"])
    assert requirements_utils._MODULES_TO_PACKAGES is not None  # the scan ran


def test_the_workarounds_keep_what_they_promise(tracking, caplog, monkeypatch):
    """And fmae's side: a run renamed, a model logged without system metrics, pyfunc on the CPU,
    no scan of the installed packages (and the check is back once the model is logged)."""
    from mlflow.utils import environment, requirements_utils

    from experiments.tracking.models import log_module

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    check = environment.warn_dependency_requirement_mismatches

    encoder = Encoder(CAEConfig(n_channels=4, encoded_space_dim=4))
    with caplog.at_level(logging.WARNING), mlflow.start_run() as run:
        MlflowClient().log_batch(
            run.info.run_id,
            metrics=[Metric("system/cpu_utilization_percentage", 5.0, 0, 0), Metric("test_loss", 0.02, 0, 0)],
        )
        info = log_module(encoder, "encoder", "encoder", {"n_channels": 4, "encoded_space_dim": 4}, run.info.run_id)
    assert {m.key for m in mlflow.get_logged_model(info.model_id).metrics} == {"test_loss"}
    assert mlflow.models.get_model_info(info.model_uri).flavors["python_function"]["config"] == {"device": "cpu"}
    assert "Got error" not in caplog.text
    assert requirements_utils._MODULES_TO_PACKAGES is None
    assert environment.warn_dependency_requirement_mismatches is check
