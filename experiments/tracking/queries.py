"""What later steps read back from the store: runs, their artifacts, the search's best trials,
and the version a run registered."""

from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

PRUNED_TAG = "fmae.pruned"  # a search trial the scheduler stopped early
ARCHITECTURE = ("n_channels", "encoded_space_dim", "batch_norm")


def get_run(run_id: str) -> Run:
    return MlflowClient().get_run(run_id)


def download_artifact(run_id: str, path: str, folder: str) -> Path | None:
    """A run's artifact, copied into folder; None if the run has no such artifact."""
    try:
        return Path(MlflowClient().download_artifacts(run_id, path, folder))
    except (MlflowException, OSError):
        return None


def child_runs(parent_run_id: str, filter_string: str = "", order_by: list[str] | None = None) -> list[Run]:
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    where = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'" + (f" and {filter_string}" if filter_string else "")
    return client.search_runs([experiment_id], where, max_results=10_000, order_by=order_by)


def best_trials(search_run_id: str, n: int, distinct: tuple[str, ...] = ARCHITECTURE) -> list[Run]:
    """The child runs of the n trials of a search that ran to the end with the lowest val_loss,
    one per architecture (distinct values of `distinct`): the encoders worth fine-tuning."""
    runs = child_runs(search_run_id, "attributes.status = 'FINISHED'", ["metrics.val_loss ASC"])
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


def registered_version(run_id: str, name: str) -> str | None:
    """models:/NAME/VERSION of what run_id registered as name, if it did."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'", max_results=10_000)
    mine = [v for v in versions if v.tags.get("fmae.run_id") == run_id]
    return f"models:/{name}/{max(int(v.version) for v in mine)}" if mine else None


def logged_model_uri(run_id: str, name: str) -> str:
    """models:/m-... of the model `name` that run_id logged: what runs:/RUN/NAME resolves to, without
    MLflow 3's warning that a run's artifacts no longer hold its models."""
    experiment_id = get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    return f"models:/{models[-1].model_id}" if models else f"runs:/{run_id}/{name}"
