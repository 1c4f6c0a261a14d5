"""Continuing a search: where its state is kept, which interrupted search `resume=true`
continues, the command that resumes it, and what an outage of the tracking server leaves."""

import dataclasses
import json
import shlex
from pathlib import Path

from experiments.errors import UserError
from experiments.tracking.server import TrackingUnavailable, tracking_reachable, tracking_uri

STUDY_FILE = "optuna.db"
SEARCH_FILE = "fmae_search.json"  # which MLflow parent run a Ray experiment belongs to
TIMELINE_FILE = "timeline.json"  # when each trial launched, started, trained and ended


def storage_root(storage_path: str) -> str:
    if not storage_path:
        return str(Path("~/ray_results").expanduser())
    if "://" in storage_path:  # s3://, gs://, ... : Ray's own business
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def study_root(root: str) -> Path:
    """Where fmae keeps its own files of a search: beside Ray's results (local or NFS storage),
    else in ~/ray_results."""
    return Path(root) if "://" not in root else Path("~/ray_results").expanduser()


def search_folder(root: str, name: str) -> Path:
    folder = study_root(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def find_interrupted_search(root: str) -> dict:
    """The newest search under root that did not finish, for resume=true."""
    candidates = sorted(study_root(root).glob(f"fmae-tune-*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime)
    unfinished = [meta for meta in (json.loads(p.read_text()) for p in candidates) if not meta["finished"]]
    if not unfinished:
        raise UserError(
            f"resume=true found no interrupted search under storage_path={root!r}. Pass the "
            "storage_path the search ran with, or start a new search with resume=false."
        )
    return unfinished[-1]


def write_search_file(folder: Path, **fields) -> None:
    path = folder / SEARCH_FILE
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta.update(fields)
    path.write_text(json.dumps(meta))


def resume_command(config, storage: str) -> str:
    """The command that continues this search: its flags as given, resume=true, and the store."""
    defaults = type(config)()
    flags = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(defaults, f.name)
    }
    flags.update(storage_path=storage, resume="true")
    args = " ".join(f"--{k} {shlex.quote(str(v).lower() if isinstance(v, bool) else str(v))}" for k, v in flags.items())
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri())} fmae tune {args}"


def check_outage(results, status, config, storage: str) -> None:
    """After the search: if trials failed because the tracking server stopped answering for longer
    than MLflow's client retries, or it does not answer now, say so and how to resume (their
    checkpoints are kept; resume=true reruns them in the same runs)."""
    lost = sum(TrackingUnavailable.__name__ in str(result.error) for result in results if result.error)
    reachable = tracking_reachable()
    if reachable:
        status.flush()
    if lost or not reachable:
        still = "" if reachable else ", and it still does not answer"
        raise UserError(
            f"{lost} of {len(results)} trials failed because the MLflow tracking server at {tracking_uri()} stopped "
            f"answering for longer than its client retries (about 2 minutes){still}. Their checkpoints are kept. "
            f"Once the server answers, resume the search: {resume_command(config, storage)}"
        )
