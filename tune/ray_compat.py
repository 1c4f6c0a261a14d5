"""Workarounds of Ray Tune 2.60's (and its OptunaSearch's) behaviour, in one place. Each entry
names what it works around and where; tests/test_ray_compat.py holds a canary per entry that
fails once Ray fixes it, so an upgrade shows which of these to delete."""

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch


class PruningAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, honest about stopped trials and about resumed searches.

    1. It reports a trial ASHA stopped as COMPLETE with its half-trained last value
       (search/optuna/optuna_search.py on_trial_complete), which misleads TPE into treating
       early, high losses as finished results. Here such trials are PRUNED, as an Optuna pruner
       would have made them; their per-epoch values stay as intermediate values. A trial whose
       loss diverged is a FAIL, not a value.
    2. _setup_study enqueues points_to_evaluate every time it runs, and it runs again when a
       search is resumed; with a persistent study the start points then wait in it a second
       time and are proposed again. Here a point is enqueued only if the study lacks it.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        self.max_epochs = max_epochs
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        points, self._points_to_evaluate = self._points_to_evaluate, []
        super()._setup_study(mode)
        self._points_to_evaluate = points
        for point in points:
            self._ot_study.enqueue_trial(point, skip_if_exists=True)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or error or not result:
            return super().on_trial_complete(trial_id, result, error)
        if result.get("diverged"):
            state = optuna.trial.TrialState.FAIL
        elif result.get("epoch", self.max_epochs) < self.max_epochs:
            state = optuna.trial.TrialState.PRUNED
        else:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


def optuna_storage(path: str) -> optuna.storages.RDBStorage:
    """A persistent study (sqlite), browsable with `optuna-dashboard sqlite:///PATH`."""
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def trial_statuses(results) -> list[str]:
    """Every trial's status (TERMINATED, ERROR, PENDING, ...): a ResultGrid keeps them only in its
    private _experiment_analysis (tune/result_grid.py); its Results have none."""
    return [trial.status for trial in results._experiment_analysis.trials]


def trial_number(trial_dir: str, trial_name: str) -> int | None:
    """The trial's number in its search (1, 2, ...): Ray names its folder
    <trial_name>_<number>_<config>_<date>, and exposes the number nowhere else."""
    match = re.search(r"_(\d+)_", Path(trial_dir).name.removeprefix(trial_name))
    return int(match.group(1)) if match else None


def result_trial_id(result) -> str | None:
    """A Ray Result's trial id: from its reports, else from its folder (NAME_<id>_<n>_...),
    for a trial that never reported."""
    if (result.metrics or {}).get("trial_id"):
        return result.metrics["trial_id"]
    match = re.search(r"_([0-9a-f]{5,})_\d+_", Path(result.path).name) if result.path else None
    return match.group(1) if match else None


def warm_workers_for_trials() -> None:
    """Ray Tune gives every trainable's actor a runtime environment of {"PL_DISABLE_FORK": "1"}
    (tune/execution/class_cache.py DEFAULT_ENV_VARS, for PyTorch Lightning, which fmae does not
    use). Ray then starts a new process for each trial instead of giving it one of the workers
    it started with Ray (those serve only actors whose runtime environment is empty). Without
    it, a trial starts in one of those (tune.cluster.start_trials_in_rays_first_workers)."""
    from ray.tune.execution import class_cache

    class_cache.DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)


# Ray's raylet keeps as many idle workers as there are free CPUs, and ends the others once idle
# for 1 s. A search's placement groups take every CPU a moment before its trials ask for
# processes: the workers Ray started with itself, idle for a second by then about half the
# time, were ended in that moment and new ones started for the trials (1-2 s later to their
# first epoch, measured 2026-12-03). Idle workers of a Ray fmae starts live a minute instead.
KEEP_FIRST_WORKERS = {"idle_worker_killing_time_threshold_ms": 60_000}


class _NotMainThreadNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set because current thread")


def drop_note_of_init_off_main_thread() -> None:
    """ray.init in a thread other than the main one warns that it leaves SIGTERM alone
    (_private/worker.py init). That is what fmae wants: in the main thread ray.init replaces
    fmae's SIGTERM handler with sys.exit, and fmae relays SIGTERM to Tune itself."""
    logger = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _NotMainThreadNote) for f in logger.filters):
        logger.addFilter(_NotMainThreadNote())


# Console noise a user cannot act on, silenced while a search runs (Ray reads these in fit):
QUIET = {
    # The new console prints a setup box and result paths even at verbose=0, and a
    # "Tuner.restore" hint on an interrupt that is not how an fmae user resumes.
    "RAY_AIR_NEW_OUTPUT": "0",
    # "Experiment state snapshotting has been triggered multiple times": forced because every
    # trial checkpoints each epoch with num_to_keep set (execution/experiment_state.py).
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextlib.contextmanager
def quiet_console(verbose: bool) -> Iterator[None]:
    """QUIET, and Optuna's study-created and trial-told lines, for the duration of a search
    (unless verbose); the environment and Optuna's verbosity are restored after."""
    saved, verbosity = {k: os.environ.get(k) for k in QUIET}, optuna.logging.get_verbosity()
    if not verbose:
        for key, value in QUIET.items():
            os.environ.setdefault(key, value)  # a user's own setting wins
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
