"""A step's MLflow run, from open to close: which experiment, which run (`mlflow run`'s, a
child of `main`'s, a new one, or an interrupted one resumed), its params and dataset inputs,
and how it ends (FINISHED, FAILED, KILLED)."""

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.entities import Param, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments import interrupts
from experiments.data import FashionMNIST, pack_split
from experiments.errors import UserError
from experiments.tracking import mlflow_compat
from experiments.tracking.links import print_run_link, ui_link
from experiments.tracking.server import check_tracking_server, tracking_reachable, tracking_uri

DEFAULT_EXPERIMENT = "fmae"
NOTE = "mlflow.note.content"  # a run's (or experiment's, or version's) description in the UI
EXPERIMENT_DESCRIPTION = """This study's runs are under "Model training" (top left of this page), not under GenAI.

**fmae**: a convolutional autoencoder (CAE) on FashionMNIST, tuned with Ray Tune and Optuna, its encoder
fine-tuned into a classifier, a VAE beside it, and both latent spaces compared.

- Runs named **main** hold a whole study: its headline metrics, a description linking each step, and report.html.
- **tune** runs are searches; each trial is a child run: expand the `main` and `tune` rows (in the chart view
  too) to see the trials and their `val_loss` curves. Trials named `tNN-stopped-…` (tag `fmae.pruned=true`)
  were stopped early by the scheduler: the search working, not a failure. The best one is tagged `fmae.best_trial`.
- Metric names mean one thing: `train_loss`/`val_loss` are the CAE's per-pixel MSE, `train_elbo`/`val_elbo` the
  VAE's nats per image, `train_nll`/`val_accuracy` the classifier's; `system/*` is CPU, memory and GPU use.
- Models: the Models tab holds fmae-cae-encoder, fmae-classifier and fmae-vae, the best of each under alias champion.
"""


def choose_experiment() -> None:
    """`mlflow run`'s experiment if it started us, else $MLFLOW_EXPERIMENT_NAME/_ID, else fmae."""
    if os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    mlflow_compat.create_experiment_once(name)
    mlflow.set_experiment(name)  # it exists now: made active (or refused, if deleted)


def describe_experiment(experiment_id: str) -> None:
    """The experiment's description (its page's About box), written once, never over a user's."""
    client = MlflowClient()
    if NOTE not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, NOTE, EXPERIMENT_DESCRIPTION)


def system_metrics_on() -> bool:
    """MLflow's system metrics (CPU, memory, disk, network; GPU through nvidia-ml-py) for every
    step and trial, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false says otherwise."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() not in ("false", "0")


def monitor_system_metrics(run_id: str, uri: str):
    """Sample system metrics into run_id (a trial's run, which fmae creates itself) until it ends:
    the sampler stops at the first sample after the run is no longer RUNNING. None when off."""
    if not system_metrics_on():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def open_run(step: str, resume_run_id: str | None, nested: bool):
    if resume_run_id:
        launched = os.environ.pop("MLFLOW_RUN_ID", None)
        if launched and launched != resume_run_id:  # `mlflow run` made a run we won't use
            client = MlflowClient()
            client.set_tag(launched, "fmae.resumed_run", resume_run_id)
            client.set_tag(launched, NOTE, f"Launched to resume run `{resume_run_id}`, which it continued.")
            client.set_terminated(launched, "FINISHED")
            print(f"This run continues the interrupted run {resume_run_id}: {ui_link(resume_run_id)}")
        return mlflow.start_run(run_id=resume_run_id, nested=nested, log_system_metrics=system_metrics_on())
    if not nested:
        choose_experiment()
    return mlflow.start_run(
        run_name=None if os.environ.get("MLFLOW_RUN_ID") else step,
        nested=nested,
        log_system_metrics=system_metrics_on(),
    )


@contextlib.contextmanager
def start_step_run(step: str, params: dict[str, Any], resume_run_id: str | None = None) -> Iterator[Run]:
    """The run a step writes to: the one `mlflow run` made, a child of an active run (the
    `main` pipeline), a new one, or (resume_run_id) an interrupted run to continue.
    Ends FAILED on any error, KILLED on Ctrl-C."""
    check_tracking_server()
    nested = mlflow.active_run() is not None
    active = open_run(step, resume_run_id, nested)
    with ending_active_run():
        if not nested:
            describe_experiment(active.info.experiment_id)
        mlflow.set_tag("fmae.step", step)
        if mlflow_compat.is_generated_name(mlflow.active_run().info.run_name):
            mlflow.set_tag("mlflow.runName", step)
        log_new_params(params)
        yield mlflow.get_run(active.info.run_id)
    print_run_link(active.info.run_id)


@contextlib.contextmanager
def ending_active_run() -> Iterator[None]:
    """The active run ends FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED on any other error."""
    try:
        yield
    except KeyboardInterrupt:
        with interrupts.deferred():
            end_run_if_reachable("KILLED")
        raise
    except BaseException:
        with interrupts.deferred():
            end_run_if_reachable("FAILED")
        raise
    mlflow.end_run("FINISHED")


def end_run_if_reachable(status: str) -> None:
    """End the active run, unless its tracking server is down (a step failing for that reason
    would otherwise wait minutes on retries, then fail again): that run stays RUNNING, and
    `resume=true` continues it."""
    if tracking_reachable():
        mlflow.end_run(status)
    else:
        print(
            f"The tracking server at {tracking_uri()} does not answer, so run "
            f"{mlflow.active_run().info.run_id} could not be marked {status}.",
            file=sys.stderr,
            flush=True,
        )


def describe_rejected_launch(message: str) -> None:
    """`mlflow run` creates its run before the step reads its parameters; when the step rejects
    them, that run (which MLflow then marks FAILED) says why in its description."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        check_tracking_server()
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":  # the step never opened it
            client.set_tag(run_id, NOTE, f"**fmae did not start**: {message}")
            client.set_terminated(run_id, "FAILED")
    except (UserError, MlflowException, OSError):  # the message on the console is what matters
        pass


def log_new_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log params the run lacks. `mlflow run` has already logged the entry point's
    parameters as the user spelled them (1e-3 vs 0.001); those stay as they are."""
    client = MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    present = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)) for k, v in params.items() if k not in present]
    if fresh:
        client.log_batch(run_id, params=fresh)


def log_dataset(data: FashionMNIST) -> None:
    """Where the data came from (param data_source), and its three splits as the run's dataset
    inputs, which the MLflow UI lists in its Datasets column and on each run's page."""
    mlflow.log_param("data_source", data.source)
    for context, split in (("training", data.train), ("validation", data.val), ("test", data.test)):
        packed = pack_split(split)
        with warnings.catch_warnings():  # a folder path "can be interpreted in multiple ways": any is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                packed.images, targets=packed.labels, source=data.source, name=f"fashion-mnist-{context}"
            )
        mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def start_child_run(name: str, params: dict[str, Any], description: str = "") -> Iterator[Run]:
    """A run nested in the active one (one seed of a repeated step), ended like a step's run."""
    run = mlflow.start_run(run_name=name, nested=True)
    with ending_active_run():
        mlflow.set_tag(NOTE, description or f"One run of {name}.")
        log_new_params(params)
        yield mlflow.get_run(run.info.run_id)
