"""Where a search's time goes: when each trial was launched, entered its function, finished
its first epoch and ended, and how many trials trained at once."""

import json
import time
from pathlib import Path

from ray.tune import Callback


class TrialTimeline(Callback):
    """Wall-clock times (seconds since the search began) of each trial's milestones.

    created: the searcher proposed it (with a concurrency limit: a slot was free); launched:
    its actor is up (created -> launched: a process started, the trainable's module imported,
    or a finished trial's process reused); entered: the trainable's first line ran (launched
    -> entered: fetching the data from the object store); ready: data on the device, model built,
    MLflow run open; first_epoch and last_epoch: the reports of those epochs; ended: Ray saw the
    trial end. process_started: when the trial's process began; before 0 when Ray had started it
    before the search began (one of the processes Ray starts with itself).

    Kept in a JSON file beside the search's Optuna study, so a resumed search (whose
    callbacks Ray restores from its own saved state) goes on writing the same timeline.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.began = time.time()
        self.trials: dict[str, dict[str, float]] = {}

    def _now(self) -> float:
        return time.time() - self.began

    def _save(self) -> None:
        Path(self.path).write_text(json.dumps(self.trials))

    def on_step_end(self, iteration, trials, **info):
        if len(trials) > len(self.trials):
            for trial in trials:
                self.trials.setdefault(trial.trial_id, {"created": self._now()})

    def on_trial_start(self, iteration, trials, trial, **info):
        self.trials.setdefault(trial.trial_id, {"created": self._now()})["launched"] = self._now()
        self._save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self.trials.setdefault(trial.trial_id, {})
        if "entered_at" in result and "entered" not in row:
            row["entered"] = result["entered_at"] - self.began
            row["ready"] = row["entered"] + result.get("setup_seconds", 0.0)
            if "process_started_at" in result:
                row["process_started"] = result["process_started_at"] - self.began
            row["first_epoch"] = self._now()
        row["last_epoch"] = self._now()
        row["epochs"] = result.get("epoch", 0)
        if "artifacts_seconds" in result:
            row["artifacts_seconds"] = result["artifacts_seconds"]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.trials.setdefault(trial.trial_id, {})["ended"] = self._now()
        self._save()

    on_trial_error = on_trial_complete


def read_timeline(path: str | Path) -> dict[str, dict[str, float]]:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def peak_concurrency(rows: list[dict[str, float]]) -> int:
    """The most trials training at the same moment (from entering their function to ending)."""
    events = []
    for row in rows:
        if "entered" in row and "ended" in row:
            events += [(row["entered"], 1), (row["ended"], -1)]
    running = peak = 0
    for _, step in sorted(events):  # at equal times the end (-1) sorts before the start
        running += step
        peak = max(peak, running)
    return peak


def timeline_metrics(trials: dict[str, dict[str, float]], search_seconds: float) -> dict[str, float]:
    """The parent run's view of the timeline."""
    rows = list(trials.values())
    first = [r["first_epoch"] for r in rows if "first_epoch" in r]
    starts = sorted(r["entered"] - r["created"] for r in rows if "entered" in r and "created" in r)
    setups = sorted(r["ready"] - r["entered"] for r in rows if "ready" in r)
    metrics = {"search_seconds": search_seconds, "peak_concurrent_trials": peak_concurrency(rows)}
    if first:
        metrics["seconds_to_first_epoch"] = min(first)
    if starts:
        metrics["median_trial_start_seconds"] = starts[len(starts) // 2]
    if setups:
        metrics["median_trial_setup_seconds"] = setups[len(setups) // 2]
    return metrics


class TrialProgress(Callback):
    """The console's view of a search: one line per trial that ends, with the best so far and
    an estimate of the time left (Ray's own trial table comes back with verbose=true)."""

    def __init__(self, num_samples: int, concurrency: int, max_epochs: int):
        self.num_samples, self.concurrency, self.max_epochs = num_samples, concurrency, max_epochs
        self.began = time.time()
        self.best = float("inf")
        self.durations: list[float] = []
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "FAILED")

    def _ended(self, trial, failure: str) -> None:
        result = trial.last_result or {}
        epochs, val_loss = result.get("epoch", 0), result.get("val_loss", float("nan"))
        if not failure and val_loss == val_loss:  # not NaN
            self.best = min(self.best, val_loss)
        self.durations.append(time.time() - self.started.get(trial.trial_id, self.began))
        done = len(self.durations)
        left = max(self.num_samples - done, 0)
        # Trials still to run, at the mean length of those that ended, `concurrency` at a time.
        eta = sum(self.durations) / done * -(-left // self.concurrency) if left else 0.0
        if result.get("diverged"):
            failure, val_loss = f"FAILED, its loss diverged at epoch {epochs}", float("nan")
        outcome = failure or ("ran to the end" if epochs >= self.max_epochs else f"stopped early at epoch {epochs}")
        name = result.get("mlflow_run_name", trial.trial_id)
        print(
            f"{progress_bar(done, self.num_samples)} trial {name}: {outcome}, val_loss {val_loss:.5f}, "
            f"best so far {self.best:.5f}; {format_seconds(time.time() - self.began)} elapsed"
            + (f", ~{format_seconds(eta)} left" if left else ""),
            flush=True,
        )


def progress_bar(done: int, total: int, width: int = 12) -> str:
    """`[#####-------] 5/12`: how far a search (or a study) is, at a glance."""
    filled = round(width * done / max(total, 1))
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
