"""The trainable: one Ray Tune trial is `train_cae.train_autoencoder` with the trial's
hyperparameters, reporting each epoch to Ray (with a checkpoint) and to the trial's MLflow run.

Each trial writes to its own child run (tune/child_runs.py opens it on whichever node runs the
trial); its final status is set by the driver, which alone knows whether the scheduler stopped
the trial.
"""

import dataclasses
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from ray import tune

from experiments import train_cae
from experiments.data import FashionMNIST, PackedFashionMNIST
from experiments.tracking.runs import monitor_system_metrics
from experiments.tracking.server import TrackingUnavailable, lost_tracking, use_store
from experiments.tracking.step_run import StepRun
from experiments.training import Diverged, seed_everything
from tune.child_runs import open_trial_run
from tune.cluster import cpus_to_use

CHECKPOINT_FILE = "trial.pt"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares, sent once through the object store with the data."""

    base: train_cae.Config  # non-searched settings: epochs (= max_epochs), seed, device, ...
    tracking_uri: str  # absolute, so trials in other folders or on other nodes write to it
    experiment_id: str
    parent_run_id: str
    tags: dict = dataclasses.field(default_factory=dict)  # the parent's user and source tags, which trial runs share
    cpus_per_trial: float = 1.0  # what Ray reserves for each trial: its threads, unless cores lie idle


def save_checkpoint(folder: str, state: dict) -> tune.Checkpoint:
    torch.save(state, Path(folder) / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(folder)


def load_checkpoint(checkpoint: tune.Checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def process_started_at() -> float:
    """When this process began, by the wall clock, to the clock tick (10 ms). psutil's
    create_time adds the process's start to the boot time, which Linux gives in whole seconds:
    up to a second early, enough to hide whether a trial's process was there before its search."""
    try:
        after_paren = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:  # not Linux
        return psutil.Process().create_time()
    started_after_boot = int(after_paren[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    return time.time() - (uptime - started_after_boot)


def ignore_exits_in_callbacks(unraisable) -> None:
    """sys.unraisablehook for trial processes. Ray stops its workers at the search's end with
    SIGTERM, which it turns into SystemExit; landing inside a weakref callback, that exit is
    "ignored" and Python prints a traceback onto the search's console. The exit is wanted."""
    if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
        sys.__unraisablehook__(unraisable)


# What this process set up and unpacked for the search it serves. Ray reuses a trial's process
# for the next trial (reuse_actors), which then skips all of it.
_prepared: dict[tuple, FashionMNIST] = {}


def prepare_process(data: PackedFashionMNIST, setup: TrialSetup, device: torch.device) -> FashionMNIST:
    """Once per process and search: quiet loggers, the tracking store, the data on the device."""
    key = (setup.parent_run_id, setup.tracking_uri, str(device))
    if key not in _prepared:
        sys.unraisablehook = ignore_exits_in_callbacks
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "checkpoint created" line per epoch
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
        use_store(setup.tracking_uri, setup.experiment_id)  # logged models live in the run's experiment
        _prepared.clear()
        _prepared[key] = data.unpack(device)
    return _prepared[key]


def train_trial(config: dict, data: PackedFashionMNIST, setup: TrialSetup) -> None:
    """Train one CAE with the trial's hyperparameters, reporting and checkpointing every epoch.
    A tracking server gone for longer than MLflow's retries fails the trial with TrackingUnavailable."""
    try:
        run_trial(config, data, setup)
    except Exception as exc:
        if lost_tracking(exc, setup.tracking_uri):
            raise TrackingUnavailable(
                f"the MLflow tracking server at {setup.tracking_uri} stopped answering "
                f"({str(exc).splitlines()[0][:200]}); this trial stops at its last checkpoint, and resume=true "
                "continues it."
            ) from None
        raise


def idle_cores_taker(setup: TrialSetup):
    """What a CPU trial runs between batches: it takes the cores no trial holds (the search's last
    trials, once the others have ended) from the next batch on. A process Ray reuses for the
    next trial keeps its CPUs meanwhile, so cores show up free only once no trial needs them."""

    def take_idle_cores() -> None:
        threads = cpus_to_use(setup.cpus_per_trial)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    return take_idle_cores


def run_trial(config: dict, data: PackedFashionMNIST, setup: TrialSetup) -> None:
    entered_at = time.time()
    cae_config = dataclasses.replace(setup.base, **config)
    data = prepare_process(data, setup, cae_config.torch_device)
    torch.set_num_threads(cpus_to_use(setup.cpus_per_trial))
    seed_everything(cae_config.seed)
    training = train_cae.build_autoencoder(cae_config)
    checkpoint = tune.get_checkpoint()
    # A retry after a crash, or a resumed search, continues where it stopped.
    start_epoch = training.load_state_dict(load_checkpoint(checkpoint)) + 1 if checkpoint else 1
    run = StepRun(open_trial_run(setup, config), echo=False)
    monitor = monitor_system_metrics(run.run_id, setup.tracking_uri)
    # An attempt that died between logging an epoch and checkpointing it logged that epoch
    # already; the retry recomputes it from the same state and logs each epoch only once.
    logged = run.logged_epochs("val_loss")
    # Where a trial's time goes, for the search's timeline (tune/timeline.py).
    timing = {"entered_at": entered_at, "setup_seconds": time.time() - entered_at, "mlflow_run_name": run.name}
    timing["process_started_at"] = process_started_at()

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in logged:
            run.log_epoch(epoch, metrics)
        if epoch == cae_config.epochs:  # before the last report: the scheduler ends the trial there
            started = time.time()
            metrics = {**metrics, "test_loss": train_cae.test_loss(training.model, data.test)}
            run.log_metrics({"test_loss": metrics["test_loss"]})
            train_cae.log_autoencoder(run, training.model, data.test, cae_config.seed)
            timing["artifacts_seconds"] = time.time() - started
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = save_checkpoint(folder, {**training.state_dict(epoch), "run_id": run.run_id})
            tune.report({**metrics, **timing, "epoch": epoch, "mlflow_run_id": run.run_id}, checkpoint=checkpoint)

    on_cpu = cae_config.torch_device.type == "cpu"
    try:
        train_cae.train_autoencoder(
            cae_config, data, report, training, start_epoch, every_second=idle_cores_taker(setup) if on_cpu else None
        )
    except Diverged as exc:
        # Retrying would diverge again: the trial ends here, and the driver marks its run
        # FAILED (child_runs.ChildRunStatus) and tells Optuna so (ray_compat).
        run.set_tags(train_cae.divergence_tags(exc))
        tune.report(
            {"epoch": exc.epoch, "val_loss": float("inf"), "diverged": True, **timing, "mlflow_run_id": run.run_id}
        )
    finally:  # a trial the scheduler stops may not get here: its sampler stops once its run ends
        if monitor is not None:
            monitor.finish()
