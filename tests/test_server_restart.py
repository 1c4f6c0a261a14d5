"""The tracking server goes away in the middle of a search and comes back: trials and the driver
wait for it (MLflow's client retries with backoff, about two minutes in all), and every epoch is
logged exactly once."""

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import start_mlflow_server, stop_mlflow_server, subprocess_env

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 20


def test_a_search_rides_out_a_tracking_server_restart(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    server, url = start_mlflow_server(folder)
    search = subprocess.Popen(
        [sys.executable, "-m", "experiments", "tune", "--num_samples", "1", "--max_epochs", "3", "--grace_period", "3",
         "--train_subset", "2000", "--storage_path", str(tmp_path / "ray")],
        cwd=tmp_path, env=subprocess_env(MLFLOW_TRACKING_URI=url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    client, deadline = MlflowClient(url), time.time() + 600
    while not client.search_runs([e.experiment_id for e in client.search_experiments()], "metrics.val_loss > 0"):
        assert search.poll() is None and time.time() < deadline, search.communicate()[1][-3000:]
        time.sleep(1)
    stop_mlflow_server(server)  # a restart: the trials are mid-training, the driver mid-search
    time.sleep(OUTAGE_SECONDS)
    server, _ = start_mlflow_server(folder, port=int(url.rsplit(":", 1)[1]))
    try:
        _, err = search.communicate(timeout=900)
        assert search.returncode == 0, err[-3000:]
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert parent.info.status == "FINISHED" and len(children) == 1
        for child in children:
            assert child.info.status == "FINISHED"
            for key in ("train_loss", "val_loss"):
                steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
                assert steps == [1, 2, 3], (child.info.run_name, key, steps)
    finally:
        stop_mlflow_server(server)
