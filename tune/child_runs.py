"""The trials' MLflow child runs: opened by each trial on its node, described and closed by the
driver (which alone knows whether the scheduler stopped a trial), none left RUNNING."""

import contextlib
from collections.abc import Iterator

import ray
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from ray import tune
from ray.tune import Callback

from experiments import interrupts, train_cae
from experiments.tracking.links import ui_path
from experiments.tracking.mlflow_compat import TRIAL_CONFIG_FILE
from experiments.tracking.queries import PRUNED_TAG
from experiments.tracking.server import TrackingUnavailable, tracking_reachable
from tune import ray_compat
from tune.space import used_params

TRIAL_STEP = "tune-trial"  # the fmae.step tag of a trial's run


def trial_run_name(config: dict, number: int | None, trial_id: str) -> str:
    """Short and distinct in MLflow's table: the trial's number and its architecture,
    e.g. t03-c32-d14-adam-bn (Ray's own names, train_trial_<id>, are cut to train_trial_...)."""
    prefix = f"t{number:02d}" if number is not None else trial_id
    return f"{prefix}-c{config['n_channels']}-d{config['encoded_space_dim']}-{config['optimizer']}" + (
        "-bn" if config.get("batch_norm") else ""
    )


def describe_config(config: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in used_params(config).items())


def open_trial_run(setup, config: dict) -> str:
    """The trial's child run: the one an earlier attempt made (a retry, a resumed search), else a
    new one, created through the client with the parent's id — never `mlflow.start_run()`, which
    would resume the parent inherited via MLFLOW_RUN_ID (ray#30649, mlflow#4781)."""
    client, context = MlflowClient(setup.tracking_uri), tune.get_context()
    node = ray.get_runtime_context().get_node_id()
    earlier = client.search_runs(
        [setup.experiment_id],
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{setup.parent_run_id}' and tags.`ray.trial_id` = '{context.get_trial_id()}'",
    )
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        client.set_tag(earlier[0].info.run_id, "ray.node_id", node)
        return earlier[0].info.run_id
    number = ray_compat.trial_number(context.get_trial_dir(), context.get_trial_name())
    name = trial_run_name(config, number, context.get_trial_id())
    parent = f"[the search]({ui_path(setup.experiment_id, setup.parent_run_id)})"
    run = client.create_run(
        setup.experiment_id,
        run_name=name,
        tags={
            MLFLOW_PARENT_RUN_ID: setup.parent_run_id,
            MLFLOW_RUN_NAME: name,
            "fmae.step": TRIAL_STEP,
            "ray.trial_name": context.get_trial_name(),
            "ray.trial_id": context.get_trial_id(),
            "ray.node_id": node,
            **train_cae.precision_tags(setup.base),  # this node's: "auto" resolves per machine
            MLFLOW_RUN_NOTE: f"**Trial {name}** of {parent}, training: a CAE with {describe_config(config)}.",
            **setup.tags,
        },
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config.items()])
    client.log_dict(run.info.run_id, dict(config), TRIAL_CONFIG_FILE)
    return run.info.run_id


def stopped_name(name: str) -> str:
    number, _, architecture = name.partition("-")
    return f"{number}-stopped-{architecture}" if architecture else f"{name}-stopped"


def stopped_early(result: dict | None, max_epochs: int) -> bool:
    """Whether a trial that ended without error was stopped by the scheduler: its last report
    (each trial reports `epoch`) came before max_epochs."""
    return bool(result) and result.get("epoch", max_epochs) < max_epochs


def outcome_note(name: str, result: dict, max_epochs: int) -> str:
    """What a trial that ended says of itself: how far it got, its figures, what it holds."""
    epochs, val_loss = result.get("epoch", 0), result.get("val_loss", float("nan"))
    if result.get("diverged"):
        return (
            f"**Diverged at epoch {epochs}**: its loss turned NaN or infinite (tag fmae.failure_cause), so the "
            "trial stopped there. The search went on without it."
        )
    if stopped_early(result, max_epochs):
        return (
            f"**Stopped early by the scheduler (ASHA) at the epoch-{epochs} rung** of {max_epochs}: its val_loss "
            f"{val_loss:.5f} was not among the best of the trials that had reached epoch {epochs}. Stopping early "
            "is the search working, not a failure; the trials that ran to the end hold the models and plots."
        )
    return (
        f"**Trial {name} ran all {epochs} epochs**: val_loss {val_loss:.5f}, test_loss "
        f"{result.get('test_loss', float('nan')):.5f}. It holds its `encoder` (a logged model), "
        "reconstructions.png, latent_pca.png (its test codes by PCA) and samples.png."
    )


class ChildRunStatus(Callback):
    """FINISHED for trials that ran max_epochs and for trials the scheduler stopped (those tagged
    fmae.pruned=true and fmae.stopped_at_epoch, named `tNN-stopped-...` and saying so in
    their description: stopping early is the search working, and MLflow's red cross for KILLED
    reads as a failure), FAILED for trials that broke. Trials tell us their run id in results."""

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
        run_id, result = self.run_ids.get(trial.trial_id), trial.last_result or {}
        if run_id is None:
            return
        name = result.get("mlflow_run_name", trial.trial_id)
        tags = {MLFLOW_RUN_NOTE: outcome_note(name, result, self.max_epochs)}
        if result.get("diverged"):  # its loss turned NaN or infinite: the trial broke
            self.mark(run_id, RunStatus.FAILED, tags)
            return
        if stopped_early(result, self.max_epochs):
            tags.update(
                {
                    PRUNED_TAG: "true",
                    "fmae.stopped_at_epoch": str(result["epoch"]),
                    # marked where the UI's narrow name column still shows it: t03-stopped-c8-d6-adam-bn
                    MLFLOW_RUN_NAME: stopped_name(name),
                }
            )
        self.mark(run_id, RunStatus.FINISHED, tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None:
            tags = {MLFLOW_RUN_NOTE: "**This trial broke**: see its error under the search's storage_path."}
            if outage_error(trial):
                tags[MLFLOW_RUN_NOTE] = (
                    "**The tracking server stopped answering** during this trial, for longer "
                    "than MLflow's client retries. Its checkpoint is kept: `resume=true` "
                    "continues it in this run."
                )
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


def close_open_children(experiment_id: str, parent_run_id: str, status: str) -> int:
    """End every child of parent_run_id still RUNNING with status; returns how many there were."""
    client = MlflowClient()
    runs = client.search_runs(
        [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return len(runs)


@contextlib.contextmanager
def closing_children(experiment_id: str, parent_run_id: str) -> Iterator[None]:
    """No trial's run is left RUNNING once the search returns: KILLED for trials a signal
    interrupted, FAILED for trials that died before reporting or that Ray gave up on. While the
    tracking server is down nothing can be closed: those runs wait for `resume=true`."""
    try:
        yield
    except KeyboardInterrupt:
        with interrupts.deferred():
            close_open_children(experiment_id, parent_run_id, "KILLED")
        raise
    except BaseException:
        with interrupts.deferred():
            if tracking_reachable():
                close_open_children(experiment_id, parent_run_id, "FAILED")
        raise
    close_open_children(experiment_id, parent_run_id, "FAILED")


def drop_lost_trials(experiment_id: str, parent_run_id: str, results) -> int:
    """Delete the child runs of trials the search no longer has: ones a killed driver started
    after Ray last saved its state, which the resumed search ran again under new ids (so the
    parent keeps exactly num_samples trials). Returns how many were deleted."""
    known = {ray_compat.result_trial_id(result) for result in results}
    if None in known or len(known) != len(results):  # not every trial accounted for: delete nothing
        return 0
    client = MlflowClient()
    children = client.search_runs(
        [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=10_000
    )
    lost = [run for run in children if run.data.tags.get("ray.trial_id") not in known]
    for run in lost:
        client.set_tag(run.info.run_id, "fmae.lost_trial", "true")
        client.delete_run(run.info.run_id)
    if lost:
        print(
            f"Deleted {len(lost)} child run(s) of trials the interrupted search had started after it last "
            f"saved its state; the resumed search ran them again: {', '.join(r.info.run_name for r in lost)}."
        )
    return len(lost)


def tag_trial_runs(run_ids, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for run_id in run_ids:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
