"""The tracking server goes away in the middle of a search and comes back: trials and the driver
wait for it (MLflow's client retries with backoff, about two minutes in all), and every epoch is
logged exactly once. The server that restarts is the cluster recipe's (basic auth), and its
password shows up in no param, tag, artifact, result file or console line. Gone for longer than
the retries, the search fails its trials clearly and says how to resume them, and the resumed
search finishes them in the same runs."""

import contextlib
import functools
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    assert_each_epoch_once,
    start_auth_server,
    start_mlflow_server,
    stop_mlflow_server,
    subprocess_env,
)

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 5  # on top of the ~5 s that starting the server again takes, and of two epochs
MAX_EPOCHS = 4
PASSWORD = secrets.token_urlsafe(18)
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}


@contextlib.contextmanager
def frozen(pid: int):
    """pid and every process it started (Ray's daemons, the trials) stopped (SIGSTOP) for the
    block. Without it the server's stop raced the trial: on a quick machine, a trial logged all
    its epochs in the seconds between the first one and the server being gone."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


def start_search_and_stop_the_server(tmp_path, start_server, **env):
    """A real server (start_server(folder, port=0)), a search logging to it, and the server stopped
    once a trial logged its first epoch, while the trial has epochs left to log. Also returns how
    long that first epoch took: an outage must outlast the next one to catch it."""
    folder = tmp_path / "server"
    folder.mkdir()
    server, url = start_server(folder)
    search = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments",
            "tune",
            "--num_samples",
            "1",
            "--max_epochs",
            str(MAX_EPOCHS),
            "--grace_period",
            str(MAX_EPOCHS),
            "--train_subset",
            "4000",
            "--storage_path",
            str(tmp_path / "ray"),
        ],
        cwd=tmp_path,
        env=subprocess_env(MLFLOW_TRACKING_URI=url, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client, deadline = MlflowClient(url), time.time() + 600
    while not (
        trials := client.search_runs([e.experiment_id for e in client.search_experiments()], "metrics.val_loss > 0")
    ):
        assert search.poll() is None and time.time() < deadline, search.communicate()[1][-3000:]
        time.sleep(0.2)
    with frozen(search.pid):  # a restart: the trial is mid-training, the driver mid-search
        stopped_at = time.time()
        stop_mlflow_server(server, timeout=2)
    return folder, url, client, search, stopped_at, trials[0].data.metrics["epoch_seconds"]


def files_holding(secret: str, url: str, runs, folders: list[Path], dst: Path) -> list[str]:
    """Every artifact of runs (downloaded from url into dst) and every file under folders that
    holds secret."""
    for run in runs:
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, dst_path=str(dst / run.info.run_id), tracking_uri=url
        )
    files = [p for folder in [dst, *folders] for p in folder.rglob("*") if p.is_file()]
    return [str(p) for p in files if secret in p.read_bytes().decode("latin-1")]


def assert_one_finished_trial_with_each_epoch_once(client):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and len(children) == 1
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_epoch_once(child, list(range(1, MAX_EPOCHS + 1)), client)


def test_a_search_rides_out_a_restart_of_the_recipes_server_and_leaks_no_password(tmp_path, monkeypatch):
    for name, value in CREDENTIALS.items():  # the test's client and the search's, as a user exports them
        monkeypatch.setenv(name, value)
    start = functools.partial(start_auth_server, password=PASSWORD)
    folder, url, client, search, stopped_at, epoch_seconds = start_search_and_stop_the_server(tmp_path, start)
    # Long enough for the trial to end its next epoch while the server is gone, on a slow host as well
    # (a busy CI host once took longer for an epoch than a fixed 5 s outage), and well inside the
    # client's two minutes of retries.
    time.sleep(min(OUTAGE_SECONDS + 2 * epoch_seconds, 60))
    server, _ = start(folder, port=int(url.rsplit(":", 1)[1]))
    back_at = time.time()
    try:
        out, err = search.communicate(timeout=900)
        assert search.returncode == 0, err[-3000:]
        assert "View run" not in out  # MLflow's per-run links stay out of a quiet console
        assert_one_finished_trial_with_each_epoch_once(client)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        (trial,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        logged = [m.timestamp / 1000 for m in client.get_metric_history(trial.info.run_id, "val_loss")]
        assert any(stopped_at < t < back_at for t in logged), "no epoch fell in the outage: the test proved nothing"
        seen = [out, err] + [v for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
        assert not [text for text in seen if PASSWORD in text]
        assert not files_holding(PASSWORD, url, runs, [tmp_path / "ray"], tmp_path / "artifacts")
    finally:
        stop_mlflow_server(server)


def test_an_outage_longer_than_the_retries_fails_clearly_and_the_search_resumes(tmp_path):
    # MLflow's client retries cut from ~2 minutes to seconds, so a short outage outlasts them
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    folder, url, client, search, *_ = start_search_and_stop_the_server(tmp_path, start_mlflow_server, **retries)
    _, err = search.communicate(timeout=600)  # the server stays down
    assert search.returncode == 2, err[-3000:]
    assert "trials failed because the MLflow tracking server" in err and "still does not answer" in err
    resume = re.search(r"resume the search: (MLFLOW_TRACKING_URI=\S+ fmae tune .*)$", err, re.M)
    assert resume, err[-3000:]
    server, _ = start_mlflow_server(folder, port=int(url.rsplit(":", 1)[1]))
    try:
        variable, *command = shlex.split(resume.group(1))
        result = subprocess.run(
            [sys.executable, "-m", "experiments", *command[1:]],
            cwd=tmp_path,
            timeout=600,
            env=subprocess_env(**dict([variable.split("=", 1)]), **retries),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert_one_finished_trial_with_each_epoch_once(client)  # the same parent and child, each epoch once
    finally:
        stop_mlflow_server(server)
