"""Where the tracking store is, and whether its server answers."""

import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from experiments.errors import UserError


class TrackingUnavailable(RuntimeError):
    """Raised in a trial whose tracking server stopped answering for longer than MLflow's client
    retries (about two minutes): the trial fails, keeps its checkpoint, and resumes later."""


def tracking_uri() -> str:
    """MLflow's own choice, with a relative sqlite/file path made absolute so trial processes
    (which Ray starts in other folders) write to the same store."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of HTTP retries, when a tracking server is down."""
    uri = uri or tracking_uri()
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"the MLflow tracking server at {uri} did not answer ({reason}). Start it "
            "(mlflow server --host ... --port ...), fix MLFLOW_TRACKING_URI, or unset it to use "
            "the local store mlflow.db."
        ) from None


def tracking_reachable(uri: str | None = None) -> bool:
    try:
        check_tracking_server(uri)
        return True
    except UserError:
        return False


def use_store(uri: str, experiment_id: str) -> None:
    """This process (a trial's, on any node) writes to uri, its logged models into experiment_id."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)


def lost_tracking(exc: BaseException, uri: str) -> bool:
    """Whether exc is MLflow giving up on a tracking server that still does not answer."""
    return isinstance(exc, MlflowException) and not tracking_reachable(uri)
