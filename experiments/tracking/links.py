"""Where a user opens a run: links into the MLflow UI's training view.

MLflow 3 keeps its GenAI / Model-training switch per browser (default GenAI) and only a URL's
`workflowType` overrides it, so every link fmae prints or writes carries it.
"""

import os

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.tracking.server import is_server, tracking_uri

UI_BASE = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
TRAINING_VIEW = "workflowType=machine_learning"


def ui_path(experiment_id: str, run_id: str = "") -> str:
    """A run's (or, without run_id, the experiment's runs table's) address inside the UI, relative
    to wherever the UI is served: markdown links in descriptions work on any host and port."""
    where = f"runs/{run_id}" if run_id else "runs"
    return f"#/experiments/{experiment_id}/{where}?{TRAINING_VIEW}"


def ui_base() -> str:
    """Where the UI is: $FMAE_UI_URL if set, the tracking server, else `fmae ui`'s default."""
    uri = tracking_uri()
    return os.environ.get("FMAE_UI_URL") or (uri.rstrip("/") if is_server(uri) else UI_BASE)


def ui_link(run_id: str) -> str:
    """The run in the MLflow UI's training view, as a full URL."""
    return f"{ui_base()}/{ui_path(MlflowClient().get_run(run_id).info.experiment_id, run_id)}"


def run_markdown_link(run_id: str, label: str = "") -> str:
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return f"run `{run_id}`"
    return f"[{label or run.info.run_name}]({ui_path(run.info.experiment_id, run_id)})"


def version_markdown_link(name: str, version: str) -> str:
    return f"[{name} version {version}](#/models/{name}/versions/{version})"


def print_run_link(run_id: str) -> None:
    uri = tracking_uri()
    print(f"MLflow tracking URI: {uri}")
    if not is_server(uri):
        print("Browse it with: fmae ui   (mlflow ui on this store, opened on the study's runs)")
    print(f"Run: {ui_link(run_id)}", flush=True)
