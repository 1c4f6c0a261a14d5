"""Shared fixtures: real FashionMNIST in small slices, tracking stores under tmp_path, and the
one small study (`main` through `mlflow run`, as users run it) that every module reading a
whole study's results shares, across pytest-xdist's workers."""

import contextlib
import json
import os
import shutil
from pathlib import Path

import mlflow
import mlflow.store.db.utils
import mlflow.tracking.fluent
import pytest
import sqlalchemy
from filelock import FileLock

from experiments.data import load_fashion_mnist
from tests.helpers import free_port, mlflow_run
from tests.postgres import throwaway_postgres
from tests.study import STUDY, Study, read_study


def pytest_configure(config):
    """One core's worth of PyTorch threads per xdist worker. Each worker would otherwise run two
    threads on the two cores while the other worker's searches fill them, and PyTorch's OpenMP
    threads spin at every barrier waiting for a descheduled peer: beside two busy processes, two
    epochs of a small CAE took 30 s on two threads and 4 s on one (docs/testing.md)."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session")
def small_data():
    """2,000 real training images, the usual 10,000 validation and test images."""
    return load_fashion_mnist(train_subset=2000, seed=0)


@contextlib.contextmanager
def restored_mlflow_state():
    """os.environ and MLflow's active experiment, as they were: `mlflow.set_experiment` exports
    MLFLOW_EXPERIMENT_ID for subprocesses, and a stale id leaked into a later test's `mlflow run`
    or search fails it far from the cause (a module fixture that ran a step in-process did)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture(autouse=True)
def no_leaked_mlflow_state():
    with restored_mlflow_state():
        yield


def use_store(mp: pytest.MonkeyPatch, uri: str) -> None:
    """uri for this process and its children, with no experiment or run inherited."""
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        mp.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An sqlite file holding MLflow's tables at their newest revision and nothing else, made once
    per worker by MLflow's own migrations. A copy of it is a fresh store without the 1.5-2 s the
    migrations take per store; MLflow adds its Default experiment on the first open, as it does
    to a new file."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    mlflow.store.db.utils._initialize_tables(engine)
    engine.dispose()
    return path


def fresh_store(empty_store: Path, folder: Path) -> str:
    """A fresh sqlite store in folder (a copy of empty_store); returns its URI."""
    shutil.copyfile(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def tracking(tmp_path, monkeypatch, empty_store):
    """A fresh sqlite tracking store under tmp_path, for this process and its children. Its tables
    are there before any process opens it: two processes making them at once (a test polling
    while its step starts) trip over each other's migrations."""
    uri = fresh_store(empty_store, tmp_path)
    use_store(monkeypatch, uri)
    mlflow.search_experiments()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory, request, empty_store):
    """A fresh sqlite tracking store shared by one test module; yields the module's scratch folder."""
    tmp = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with restored_mlflow_state():
        mp = pytest.MonkeyPatch()
        use_store(mp, fresh_store(empty_store, tmp))
        yield tmp
        mp.undo()
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 for one test module (tests/postgres.py); yields the
    URI of its empty database, postgresql://fmae:...@127.0.0.1:PORT/mlflow."""
    with throwaway_postgres() as uri:
        yield uri


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this test run sees (each has a basetemp of its own).
    FMAE_TEST_KEEP=DIR keeps them in DIR across runs instead: for a quick loop while developing."""
    if os.environ.get("FMAE_TEST_KEEP"):
        return Path(os.environ["FMAE_TEST_KEEP"]) / name
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    return base.parent / f"{name}-{run}" if run else base / name


@pytest.fixture(scope="session")
def study_folder(tmp_path_factory) -> Path:
    """The small study, made once per test run by whichever worker asks first (tests/study.py
    says what it holds); a failure is kept, so the other worker reports it instead of retrying."""
    folder = shared_folder(tmp_path_factory, "study")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if not folder.exists():
            folder.mkdir(parents=True)
            ui_port = free_port()  # report.html's links point where the ui tests will serve the study
            (folder / "meta.json").write_text(json.dumps({"ui_port": ui_port}))
            try:
                result = mlflow_run(
                    "main",
                    {**STUDY, "storage_path": folder / "ray"},
                    folder,
                    timeout=1200,
                    MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
                    FMAE_UI_URL=f"http://127.0.0.1:{ui_port}",
                    # a sample every second (MLflow's default, 10 s, outlasts these trials)
                    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
                )
                (folder / "console.txt").write_text(result.stdout + result.stderr)
            except Exception as exc:
                (folder / "failed.txt").write_text(str(exc))
        if (folder / "failed.txt").exists():
            pytest.fail(f"the shared study failed:\n{(folder / 'failed.txt').read_text()[-6000:]}")
    return folder


@pytest.fixture(scope="module")
def study(study_folder) -> Study:
    """The shared study's runs by role, its store this module's tracking store (read it only)."""
    with restored_mlflow_state():
        mp = pytest.MonkeyPatch()
        use_store(mp, f"sqlite:///{study_folder / 'mlflow.db'}")
        yield read_study(study_folder)
        mp.undo()
        mlflow.set_tracking_uri(None)
