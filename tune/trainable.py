"""The trainable: a thin adapter from one Ray Tune trial to train_cae.train_autoencoder, which
connects Ray's report and checkpoints to it.

Each trial writes to its own MLflow child run, created here (on whichever node runs the
trial) through the client API with the parent's id — never through `mlflow.start_run()`,
which would resume the parent inherited via MLFLOW_RUN_ID (ray#30649, mlflow#4781). The
run's final status is set by the driver (tune/tracking.py), which alone knows whether the
scheduler stopped the trial.
"""

import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
import torch
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from experiments import train_cae
from experiments.data import FashionMNIST, PackedFashionMNIST
from experiments.tracking import StepRun, TrackingUnavailable, monitor_system_metrics, tracking_reachable
from experiments.training import Diverged, seed_everything

CHECKPOINT_FILE = "trial.pt"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares, sent once through the object store with the data."""

    base: train_cae.Config  # non-searched settings: epochs (= max_epochs), seed, device, ...
    tracking_uri: str  # absolute, so trials in other folders or on other nodes write to it
    experiment_id: str
    parent_run_id: str
    tags: dict = dataclasses.field(default_factory=dict)  # the parent's user and source tags, which trial runs share


def stopped_early(result: dict | None, max_epochs: int) -> bool:
    """Whether a trial that ended without error was stopped by the scheduler: its last report
    (each trial reports `epoch`) came before max_epochs."""
    return bool(result) and result.get("epoch", max_epochs) < max_epochs


def trial_run_name(context, config: dict) -> str:
    """Short and distinct in MLflow's table: the trial's number and its architecture,
    e.g. t03-c32-d14-adam-bn (Ray's own names, train_trial_<id>, are cut to train_trial_...)."""
    number = re.search(r"_(\d+)_", Path(context.get_trial_dir()).name.removeprefix(context.get_trial_name()))
    prefix = f"t{int(number.group(1)):02d}" if number else context.get_trial_id()
    return (f"{prefix}-c{config['n_channels']}-d{config['encoded_space_dim']}-{config['optimizer']}"
            + ("-bn" if config.get("batch_norm") else ""))


def child_run_for_trial(client: MlflowClient, setup: TrialSetup, config: dict) -> str:
    """The trial's child run: the one an earlier attempt made (a retry, a resumed search), else a new one."""
    context = tune.get_context()
    earlier = client.search_runs(
        [setup.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{setup.parent_run_id}' "
                      f"and tags.`ray.trial_id` = '{context.get_trial_id()}'",
    )
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        client.set_tag(earlier[0].info.run_id, "ray.node_id", ray.get_runtime_context().get_node_id())
        return earlier[0].info.run_id
    name = trial_run_name(context, config)
    run = client.create_run(
        setup.experiment_id,
        run_name=name,
        tags={
            MLFLOW_PARENT_RUN_ID: setup.parent_run_id,
            MLFLOW_RUN_NAME: name,
            "ray.trial_name": context.get_trial_name(),
            "ray.trial_id": context.get_trial_id(),
            "ray.node_id": ray.get_runtime_context().get_node_id(),
            "fmae.step": "tune-trial",
            **setup.tags,
        },
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config.items()])
    # Every trial holds an artifact, stopped ones too: MLflow's Compare page fails on runs without any.
    client.log_dict(run.info.run_id, dict(config), "trial_config.json")
    return run.info.run_id


def save_checkpoint(folder: str, state: dict) -> tune.Checkpoint:
    torch.save(state, Path(folder) / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(folder)


def load_checkpoint(checkpoint: tune.Checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


# The unpacked data of the search this process last served. Ray reuses a trial's process for
# the next trial (reuse_actors), which then skips the unpacking and the copy to the device.
_unpacked: dict[tuple[str, str], FashionMNIST] = {}


def unpacked_data(packed: PackedFashionMNIST, setup: TrialSetup, device: torch.device) -> FashionMNIST:
    key = (setup.parent_run_id, str(device))
    if key not in _unpacked:
        _unpacked.clear()
        _unpacked[key] = packed.unpack(device)
    return _unpacked[key]


def ignore_exits_in_callbacks(unraisable) -> None:
    """sys.unraisablehook for trial processes. Ray stops its workers at the search's end with
    SIGTERM, which it turns into SystemExit; landing inside a weakref callback, that exit is
    "ignored" and Python prints a traceback onto the search's console. The exit is wanted."""
    if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
        sys.__unraisablehook__(unraisable)


def train_trial(config: dict, data: PackedFashionMNIST, setup: TrialSetup) -> None:
    """Train one CAE with the trial's hyperparameters, reporting and checkpointing every epoch.
    A tracking server gone for longer than MLflow's retries fails the trial with TrackingUnavailable."""
    try:
        run_trial(config, data, setup)
    except MlflowException as exc:
        if tracking_reachable(setup.tracking_uri):
            raise
        raise TrackingUnavailable(
            f"the MLflow tracking server at {setup.tracking_uri} stopped answering ({str(exc).splitlines()[0][:200]}); "
            "this trial stops at its last checkpoint, and resume=true continues it.") from None


def run_trial(config: dict, data: PackedFashionMNIST, setup: TrialSetup) -> None:
    entered_at = time.time()
    sys.unraisablehook = ignore_exits_in_callbacks
    cae_config = dataclasses.replace(setup.base, **config)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "checkpoint created" line per epoch
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    mlflow.set_tracking_uri(setup.tracking_uri)
    mlflow.set_experiment(experiment_id=setup.experiment_id)  # logged models live in the run's experiment
    data = unpacked_data(data, setup, cae_config.torch_device)
    seed_everything(cae_config.seed)
    training = train_cae.build_autoencoder(cae_config)
    checkpoint = tune.get_checkpoint()
    # A retry after a crash, or a resumed search, continues where it stopped.
    start_epoch = training.load_state_dict(load_checkpoint(checkpoint)) + 1 if checkpoint else 1
    run = StepRun(child_run_for_trial(MlflowClient(setup.tracking_uri), setup, config), echo=False)
    monitor = monitor_system_metrics(run.run_id, setup.tracking_uri)
    # An attempt that died between logging an epoch and checkpointing it logged that epoch
    # already; the retry recomputes it from the same state and logs each epoch only once.
    logged = run.logged_epochs("val_loss")
    # Where a trial's time goes, for the search's timeline (tune/timeline.py).
    timing = {"entered_at": entered_at, "setup_seconds": time.time() - entered_at,
              "mlflow_run_name": run.client.get_run(run.run_id).info.run_name}

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in logged:
            run.log_epoch(epoch, metrics)
        if epoch == cae_config.epochs:  # before the last report: the scheduler ends the trial there
            started = time.time()
            train_cae.log_autoencoder(run, training.model, data.test, cae_config.seed, whole=False)
            timing["artifacts_seconds"] = time.time() - started
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = save_checkpoint(folder, {**training.state_dict(epoch), "run_id": run.run_id})
            tune.report({**metrics, **timing, "epoch": epoch, "mlflow_run_id": run.run_id}, checkpoint=checkpoint)

    try:
        train_cae.train_autoencoder(cae_config, data, report, training, start_epoch)
    except Diverged as exc:
        # Retrying would diverge again: the trial ends here, and the driver marks its run
        # FAILED (child_runs.ChildRunStatus) and tells Optuna so (optuna_search).
        run.set_tags(train_cae.divergence_tags(exc))
        tune.report({"epoch": exc.epoch, "val_loss": float("inf"), "diverged": True, **timing,
                     "mlflow_run_id": run.run_id})
    finally:  # a trial the scheduler stops may not get here: its sampler stops once its run ends
        if monitor is not None:
            monitor.finish()
