"""Shared fixtures: real FashionMNIST in small slices, a tracking store under tmp_path, and a
way to run entry points exactly as users do (`mlflow run . -e NAME --env-manager local`)."""

import os

import mlflow
import mlflow.tracking.fluent
import pytest

from experiments.data import load_fashion_mnist
from tests.postgres import throwaway_postgres


@pytest.fixture(scope="session")
def small_data():
    """2,000 real training images, the usual 10,000 validation and test images."""
    return load_fashion_mnist(train_subset=2000, seed=0)


@pytest.fixture(autouse=True)
def no_leaked_mlflow_state():
    """Each test leaves os.environ and MLflow's active experiment as it found them:
    `mlflow.set_experiment` exports MLFLOW_EXPERIMENT_ID for subprocesses, and a stale id leaked
    into the next test's `mlflow run` (or its own store) fails it far from the cause."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh sqlite tracking store under tmp_path, for this process and its children."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory, request):
    """A fresh sqlite tracking store shared by one test module (its end-to-end runs are set
    up once); yields the module's scratch folder."""
    tmp = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        mp.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    yield tmp
    mp.undo()
    mlflow.set_tracking_uri(None)



@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 for one test module (tests/postgres.py); yields the
    URI of its empty database, postgresql://fmae:...@127.0.0.1:PORT/mlflow."""
    with throwaway_postgres() as uri:
        yield uri
