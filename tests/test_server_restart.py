"""The tracking server goes away in the middle of a search and comes back: trials and the driver
wait for it (MLflow's client retries with backoff, about two minutes in all), and every epoch is
logged exactly once. Gone for longer than the retries, the search fails its trials clearly and
says how to resume them, and the resumed search finishes them in the same runs."""

import re
import shlex
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import assert_each_epoch_once, start_mlflow_server, stop_mlflow_server, subprocess_env

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 5  # on top of the ~10 s that stopping and starting the server take
# Epochs long and many enough that the server goes down (polled every 0.2 s) before the trial's
# last ones: with 3 epochs on 2,000 images, all three were logged before the server stopped.
MAX_EPOCHS = 6


def start_search_and_stop_the_server(tmp_path, **env):
    """A real server, a search logging to it, and the server stopped once a trial logged an epoch."""
    folder = tmp_path / "server"
    folder.mkdir()
    server, url = start_mlflow_server(folder)
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
            "6000",
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
    while not client.search_runs([e.experiment_id for e in client.search_experiments()], "metrics.val_loss > 0"):
        assert search.poll() is None and time.time() < deadline, search.communicate()[1][-3000:]
        time.sleep(0.2)
    stopped_at = time.time()
    stop_mlflow_server(server)  # a restart: the trials are mid-training, the driver mid-search
    return folder, url, client, search, stopped_at


def assert_one_finished_trial_with_each_epoch_once(client):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and len(children) == 1
    for child in children:
        assert child.info.status == "FINISHED"
        assert_each_epoch_once(child, list(range(1, MAX_EPOCHS + 1)), client)


def test_a_search_rides_out_a_tracking_server_restart(tmp_path):
    folder, url, client, search, stopped_at = start_search_and_stop_the_server(tmp_path)
    time.sleep(OUTAGE_SECONDS)
    server, _ = start_mlflow_server(folder, port=int(url.rsplit(":", 1)[1]))
    back_at = time.time()
    try:
        _, err = search.communicate(timeout=900)
        assert search.returncode == 0, err[-3000:]
        assert_one_finished_trial_with_each_epoch_once(client)
        (trial,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "metrics.val_loss > 0")
        logged = [m.timestamp / 1000 for m in client.get_metric_history(trial.info.run_id, "val_loss")]
        assert any(stopped_at < t < back_at for t in logged), "no epoch fell in the outage: the test proved nothing"
    finally:
        stop_mlflow_server(server)


def test_an_outage_longer_than_the_retries_fails_clearly_and_the_search_resumes(tmp_path):
    # MLflow's client retries cut from ~2 minutes to seconds, so a short outage outlasts them
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    folder, url, client, search, _ = start_search_and_stop_the_server(tmp_path, **retries)
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
