"""Searches on a real two-node Ray cluster logging to a real MLflow server on PostgreSQL, a
worker that dies mid-trial, a driver killed mid-search and resumed, and an unreachable tracking server.
Everything runs on 127.0.0.1, started by the tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psycopg
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.tune import Callback

from tests.helpers import (
    ROOT,
    assert_each_epoch_once,
    assert_png,
    flags,
    fmae,
    free_port,
    start_mlflow_server,
    stop_mlflow_server,
    subprocess_env,
)

pytestmark = pytest.mark.slow
SMALL = flags(num_samples=4, max_epochs=3, grace_period=3, train_subset=2000)
RESUMED = flags(num_samples=3, max_epochs=2, grace_period=2, train_subset=2000, max_concurrent=1)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, postgres):
    """`mlflow server` on PostgreSQL, as the cluster recipe runs it, serving artifacts itself."""
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("server"), store=postgres)
    yield url
    stop_mlflow_server(proc)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node, one CPU each: trials must spread over both."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


class KillOneWorker(Callback):
    """A dying worker: the first trial to report `epoch` has its process killed (SIGKILL), once."""

    def __init__(self, epoch: int, marker: Path):
        self.epoch, self.marker = epoch, str(marker)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == self.epoch and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"{trial.trial_id} {result['pid']}")
            os.kill(result["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster_search(tmp_path_factory, mlflow_server, two_nodes):
    """4 trials on the two-node cluster, tracked on the server; one trial's worker dies at epoch 2.
    The search runs as a user's script would, in a process of its own, with the test's callback."""
    tmp = tmp_path_factory.mktemp("cluster")
    argv = [
        *SMALL,
        "--ray_address",
        two_nodes.address,
        "--storage_path",
        str(tmp / "ray"),
        "--register_as",
        "cluster-encoder",
    ]
    script = (
        f"from pathlib import Path\nfrom tests.test_cluster import KillOneWorker\nfrom tune import search\n"
        f"search.run(search.Config.from_argv({argv!r}), "
        f"callbacks=(KillOneWorker(2, Path({str(tmp / 'killed-once')!r})),))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        env=subprocess_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="cluster"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    yield {"tmp": tmp, "parent": parent, "children": children, "client": client}
    mlflow.set_tracking_uri(None)


def test_trials_ran_on_both_nodes_and_logged_to_the_server(cluster_search):
    children = cluster_search["children"]
    assert len(children) == 4
    assert len({c.data.tags["ray.node_id"] for c in children}) >= 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert all(c.info.artifact_uri.startswith("mlflow-artifacts:") for c in children)  # served, not driver paths


def test_the_server_keeps_the_search_in_postgresql(cluster_search, postgres):
    """The recipe's database, not some file beside the server, holds the runs and their epochs."""
    children = [c.info.run_id for c in cluster_search["children"]]
    with psycopg.connect(postgres) as db:
        stored = {run_id for (run_id,) in db.execute("SELECT run_uuid FROM runs")}
        (epochs,) = db.execute(
            "SELECT count(*) FROM metrics WHERE key = 'val_loss' AND run_uuid = ANY(%s)", (children,)
        ).fetchone()
    assert {cluster_search["parent"].info.run_id, *children} <= stored
    assert epochs == 4 * 3  # 4 trials x 3 epochs, each once


def test_artifacts_and_champion_come_through_the_server(cluster_search, tmp_path):
    client, parent = cluster_search["client"], cluster_search["parent"]
    assert_png(client.download_artifacts(parent.info.run_id, "parallel_coordinates.png", str(tmp_path)))
    child = cluster_search["children"][0]
    assert_png(client.download_artifacts(child.info.run_id, "latent_pca.png", str(tmp_path)))
    encoder = mlflow.pytorch.load_model("models:/cluster-encoder@champion")
    assert encoder(torch.rand(2, 1, 28, 28)).shape == (2, int(parent.data.params["best_encoded_space_dim"]))


def test_a_dead_worker_is_retried_from_its_checkpoint_and_logs_each_epoch_once(cluster_search):
    assert (cluster_search["tmp"] / "killed-once").exists()  # one trial's worker really died at epoch 2
    for child in cluster_search["children"]:
        assert_each_epoch_once(child, [1, 2, 3])


def test_killed_driver_resumes_the_same_search(tmp_path, tracking):
    storage = tmp_path / "ray"
    args = [sys.executable, "-m", "experiments", "tune", *RESUMED, "--storage_path", str(storage)]
    driver = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=subprocess_env(),
        start_new_session=True,
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
    )
    client = MlflowClient()
    deadline = time.time() + 900
    while time.time() < deadline and driver.poll() is None:  # wait for a finished trial, then kill all
        exp = mlflow.get_experiment_by_name("fmae")
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'") if exp else []
        if any("mlflow.parentRunId" in r.data.tags for r in runs):
            break
        time.sleep(2)
    assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    exp = mlflow.get_experiment_by_name("fmae")
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "RUNNING"
    finished_before = {
        r.info.run_id
        for r in client.search_runs([exp.experiment_id])
        if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags
    }

    result = fmae(["tune", *RESUMED, "--storage_path", str(storage), "--resume", "true"], tmp_path, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # the same parent continued
    assert parents[0].info.status == "FINISHED" and "best_test_loss" in parents[0].data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert all(c.info.status == "FINISHED" for c in children), [c.info.status for c in children]
    for child in children:
        assert_each_epoch_once(child, [1, 2])
    assert finished_before <= {c.info.run_id for c in children}


def test_unreachable_tracking_server_fails_fast_with_exit_2(tmp_path):
    started = time.monotonic()
    result = fmae(["tune", "--num_samples", "1"], tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "did not answer" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # MLflow's own retries would take minutes
