"""Workarounds of MLflow 3.17's bugs and gaps, in one place. Each entry names what it works
around and where; tests/test_mlflow_compat.py holds a canary per entry that fails once MLflow
fixes it, so an upgrade shows which of these to delete."""

import contextlib
import importlib
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def create_experiment_once(name: str) -> None:
    """Make experiment `name` exist, whoever wins the race to create it.

    mlflow.set_experiment (tracking/fluent.py, the "race condition" branch of set_experiment)
    returns to the process that lost a creation race WITHOUT making the experiment active, so
    that process's runs land in Default. Created here first, set_experiment always finds it."""
    client = MlflowClient()
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process made it first
                raise


# `mlflow run` names its run at random (delightful-mule-836): projects/utils.py _create_run passes
# no run name. A run that still has such a name is renamed after its step.
GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,4}")


def is_generated_name(name: str | None) -> bool:
    return bool(GENERATED_NAME.fullmatch(name or ""))


def keep_killed_under_mlflow_run(run_id: str, timeout: float = 60) -> None:
    """An interrupted step under `mlflow run` ends its run KILLED, but the wrapper then marks it
    FAILED anyway: projects/__init__.py `run` calls _maybe_set_run_terminated(active_run,
    "FAILED") on Ctrl-C, and its RunStatus.is_terminated(cur_status) is given the status string
    ("KILLED"), which never equals a RunStatus number. A detached process waits for that and
    puts KILLED back once the wrapper has exited."""
    from experiments.tracking.server import tracking_uri

    subprocess.Popen(
        [sys.executable, "-m", "experiments.tracking.mlflow_compat", run_id, str(timeout)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()},
    )


def restore_killed(run_id: str, timeout: float) -> None:
    """Until the wrapper has marked the run (at most timeout s): FAILED back to KILLED."""
    client, deadline = MlflowClient(), time.time() + timeout
    while time.time() < deadline:
        if client.get_run(run_id).info.status == "FAILED":
            client.set_terminated(run_id, "KILLED")
            return
        time.sleep(0.5)


def save_cpu_pytorch_model(path: str, mlflow_model, **kwargs) -> None:
    """mlflow.pytorch.save_model, with the pyfunc flavour pinned to the CPU.

    A pt2 model keeps the device it was exported on and MLflow refuses to move it, but
    pytorch/__init__.py's pyfunc loader picks cuda wherever CUDA is present: on a GPU machine
    `mlflow.pyfunc.load_model` failed ("exported on cpu, can't be loaded on cuda"), and so did
    the serving check every log_model runs. fmae exports on the CPU, so the CPU it is
    (`model_config={"device": ...}` at load time still overrides it)."""
    after_save = kwargs.pop("after_save", None)
    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["config"] = {"device": "cpu"}
    if after_save is not None:
        after_save(path, mlflow_model)
    mlflow_model.save(os.path.join(path, "MLmodel"))


# models/model.py Model.log checks the requirements a model states against the installed packages
# (utils/environment.py _process_pip_requirements, and pyfunc.load_model in the serving check).
# The first check in a process reads every installed distribution's file list
# (requirements_utils._init_modules_to_packages_map): 1.2-2.7 CPU-seconds in each process that logs
# a model, a search's trials included. log_module states the running interpreter's own versions,
# which cannot mismatch, so while it logs the check is skipped.
REQUIREMENT_CHECKERS = ("mlflow.utils.environment", "mlflow.pyfunc")


@contextlib.contextmanager
def requirements_of_this_interpreter() -> Iterator[None]:
    """Within: MLflow does not check stated requirements against the installed packages."""
    modules = [importlib.import_module(name) for name in REQUIREMENT_CHECKERS]
    checks = [module.warn_dependency_requirement_mismatches for module in modules]
    for module in modules:
        module.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        for module, check in zip(modules, checks):
            module.warn_dependency_requirement_mismatches = check


# mlflow.pytorch for Model.log, saving through save_cpu_pytorch_model; its name is the flavour's.
CPU_PYTORCH_FLAVOR = types.SimpleNamespace(__name__=mlflow.pytorch.__name__, save_model=save_cpu_pytorch_model)

# store/model_registry/sqlalchemy_store.py set_registered_model_alias uses session.merge: a read,
# then an INSERT. Two processes setting one alias at the same instant both insert, and one fails
# with "IntegrityError: UNIQUE constraint failed: registered_model_aliases" (a server answers
# 400 with the same text). The caller retries: the alias exists by then.
ALIAS_CONFLICT = ("UNIQUE constraint failed", "IntegrityError", "duplicate key value")


def is_alias_conflict(exc: MlflowException) -> bool:
    return any(text in str(exc) for text in ALIAS_CONFLICT)


# models/model.py Model.log records its model at a step (0 by default) and then links every metric
# the run holds at that step to the model (log_model_metrics_for_step): the system-metrics
# sampler's first sample is at step 0, so CPU, memory and disk figures became the model's metrics
# and every system/* chart listed the model. Models are logged at a step no metric uses, and
# link_results_to_model links the run's own results.
UNLINKED_STEP = -1


def link_results_to_model(run_id: str, model_id: str) -> None:
    """The run's final results (its step-0 metrics but the system/* samples) as the model's metrics."""
    client = MlflowClient()
    results = [
        Metric(m.key, m.value, m.timestamp, m.step, run_id=run_id, model_id=model_id)
        for key in client.get_run(run_id).data.metrics
        if not key.startswith("system/")
        for m in client.get_metric_history(run_id, key)
        if m.step == 0 and m.model_id is None
    ]
    if results:
        client.log_batch(run_id, metrics=results)


# The MLflow UI's Compare page fails ("Something went wrong") on runs without any artifact; every
# trial holds at least its config.
TRIAL_CONFIG_FILE = "trial_config.json"


if __name__ == "__main__":  # keep_killed_under_mlflow_run's detached process
    restore_killed(sys.argv[1], float(sys.argv[2]))
