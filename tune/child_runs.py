"""Driver-side MLflow bookkeeping for the trials' child runs: their final status."""

import re
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from ray.tune import Callback

from experiments.tracking import TrackingUnavailable
from tune.trainable import stopped_early

PRUNED_TAG = "fmae.pruned"


class ChildRunStatus(Callback):
    """FINISHED for trials that ran max_epochs and for trials the scheduler stopped (those tagged
    fmae.pruned=true and fmae.stopped_at_epoch, and saying so in their description: stopping
    early is the search working, and MLflow's red cross for KILLED reads as a failure), FAILED
    for trials that broke. Trials tell us their run id in results."""

    def __init__(self, tracking_uri: str, max_epochs: int):
        self.tracking_uri = tracking_uri
        self.max_epochs = max_epochs
        self.run_ids: dict[str, str] = {}
        self.pending: list[tuple[str, int, dict[str, str]]] = []

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.run_ids[trial.trial_id] = result["mlflow_run_id"]

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        if trial.last_result.get("diverged"):  # its loss turned NaN or infinite: the trial broke
            self.mark(run_id, RunStatus.FAILED, {MLFLOW_RUN_NOTE: (
                f"**Diverged at epoch {trial.last_result['epoch']}**: its loss turned NaN or infinite (tag "
                "fmae.failure_cause), so the trial stopped there. The search went on without it.")})
            return
        tags = {}
        if stopped_early(trial.last_result, self.max_epochs):
            epochs = trial.last_result["epoch"]
            val_loss = trial.last_result.get("val_loss", float("nan"))
            tags = {PRUNED_TAG: "true", "fmae.stopped_at_epoch": str(epochs), MLFLOW_RUN_NOTE: (
                f"**Stopped early by the scheduler (ASHA) at the epoch-{epochs} rung** of {self.max_epochs}: "
                f"its val_loss {val_loss:.5f} was not among the best of the trials that had reached "
                f"epoch {epochs}. Stopping early is the search working, not a failure; the trials that "
                "ran to the end hold the models and plots.")}
        self.mark(run_id, RunStatus.FINISHED, tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None:
            tags = {}
            if outage_error(trial):
                tags[MLFLOW_RUN_NOTE] = ("**The tracking server stopped answering** during this trial, for longer "
                                         "than MLflow's client retries. Its checkpoint is kept: `resume=true` "
                                         "continues it in this run.")
            self.mark(run_id, RunStatus.FAILED, tags)

    def mark(self, run_id: str, status: int, tags: dict[str, str]) -> None:
        """Set tags and the final status; while the tracking server is down, keep them for flush()
        instead of failing the search from inside Ray's loop."""
        try:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
            self.client.set_terminated(run_id, RunStatus.to_string(status))
        except MlflowException:
            self.pending.append((run_id, status, tags))

    def flush(self) -> None:
        """Apply what mark() could not, now that the server answers again."""
        pending, self.pending = self.pending, []
        for run_id, status, tags in pending:
            self.mark(run_id, status, tags)


def outage_error(trial) -> bool:
    """Whether the trial failed because its tracking server stopped answering (TrackingUnavailable)."""
    try:
        return TrackingUnavailable.__name__ in str(trial.get_error() or "")
    except OSError:
        return False


def close_open_children(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str = "FAILED") -> int:
    """After the search: no child is left RUNNING — FAILED for a trial that died before
    reporting, KILLED for trials a signal interrupted. Returns how many were closed."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return len(runs)


def result_trial_id(result) -> str | None:
    """A Ray Result's trial id: from its reports, else from its folder (NAME_<id>_<n>_...)."""
    if (result.metrics or {}).get("trial_id"):
        return result.metrics["trial_id"]
    match = re.search(r"_([0-9a-f]{5,})_\d+_", Path(result.path).name) if result.path else None
    return match.group(1) if match else None


def drop_lost_trials(client: MlflowClient, experiment_id: str, parent_run_id: str, results) -> int:
    """Delete the child runs of trials the search no longer has: ones a killed driver started
    after Ray last saved its state, which the resumed search ran again under new ids (so the
    parent keeps exactly num_samples trials). Returns how many were deleted."""
    known = {result_trial_id(result) for result in results}
    if None in known or len(known) != len(results):  # not every trial accounted for: delete nothing
        return 0
    lost = [run for run in child_runs(client, experiment_id, parent_run_id)
            if run.data.tags.get("ray.trial_id") not in known]
    for run in lost:
        client.set_tag(run.info.run_id, "fmae.lost_trial", "true")
        client.delete_run(run.info.run_id)
    if lost:
        print(f"Deleted {len(lost)} child run(s) of trials the interrupted search had started after it last "
              f"saved its state; the resumed search ran them again: {', '.join(r.info.run_name for r in lost)}.")
    return len(lost)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str):
    return client.search_runs([experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                              max_results=10_000)


ARCHITECTURE = ("n_channels", "encoded_space_dim", "batch_norm")


def best_trials(parent_run_id: str, n: int, distinct: tuple[str, ...] = ARCHITECTURE) -> list:
    """The child runs of the n trials that ran to the end with the lowest val_loss, one per
    architecture (distinct values of `distinct`): the encoders worth fine-tuning."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], max_results=10_000, order_by=["metrics.val_loss ASC"],
                              filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
                                            "and attributes.status = 'FINISHED'")
    chosen, seen = [], set()
    for run in runs:
        architecture = tuple(run.data.params.get(k) for k in distinct)
        if run.data.tags.get(PRUNED_TAG) == "true" or "val_loss" not in run.data.metrics or architecture in seen:
            continue
        seen.add(architecture)
        chosen.append(run)
        if len(chosen) == n:
            break
    return chosen
