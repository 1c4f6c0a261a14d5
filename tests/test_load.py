"""Load on one store: two searches at once, eight concurrent trials each, write to one sqlite
file while `mlflow ui` reads it. Every trial logs each epoch exactly once, and no "database is
locked" reaches the user: not the searches' consoles, not the UI's answers or its log.
Sixteen trial processes at once need 12–14 GB of memory at their peak."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import assert_each_epoch_once, start_mlflow_server, stop_mlflow_server, subprocess_env

pytestmark = pytest.mark.slow
MAX_EPOCHS = 3
SEARCH = [
    "tune",
    "--num_samples",
    "8",
    "--max_concurrent",
    "8",
    "--cpus_per_trial",
    "0.25",
    "--max_epochs",
    str(MAX_EPOCHS),
    "--grace_period",
    "1",
    "--train_subset",
    "300",
]
LOCK_ERRORS = ("database is locked", "OperationalError")


def ui_request(url: str, path: str, body: dict | None = None) -> dict:
    """One REST call as the UI's pages make it; raises on any answer but 200."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


def read_like_the_ui(url: str) -> int:
    """What the UI's experiment page asks while a user watches: experiments, their runs, and the
    val_loss curve of the newest run. Returns how many runs it saw."""
    experiments = ui_request(url, "experiments/search", {"max_results": 100}).get("experiments", [])
    ids = [e["experiment_id"] for e in experiments]
    runs = (
        ui_request(
            url, "runs/search", {"experiment_ids": ids, "max_results": 1000, "order_by": ["attributes.start_time DESC"]}
        ).get("runs", [])
        if ids
        else []
    )
    if runs:
        run_id = runs[0]["info"]["run_id"]
        ui_request(url, f"metrics/get-history?run_id={run_id}&metric_key=val_loss")
    return len(runs)


def expected_epochs(run) -> list[int]:
    """The epochs a trial's run must hold once each: all of them, up to the rung ASHA stopped it
    at, or up to the epoch before its loss diverged."""
    tags = run.data.tags
    if tags.get("fmae.failure") == "diverged":
        return list(range(1, int(tags["fmae.diverged_at_epoch"])))
    if tags.get("fmae.pruned") == "true":
        return list(range(1, int(tags["fmae.stopped_at_epoch"]) + 1))
    return list(range(1, MAX_EPOCHS + 1))


def test_two_searches_and_the_ui_share_one_sqlite_store(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui_folder = tmp_path / "ui"
    ui_folder.mkdir()
    # The README's `mlflow ui --backend-store-uri sqlite:///mlflow.db`, on 127.0.0.1; one worker, as the
    # test reads one request at a time (each of MLflow's default four would cost memory the trials need).
    ui, url = start_mlflow_server(ui_folder, store=store, command="ui")
    searches = []
    for seed in (0, 1):  # started together, as two people (or one impatient one) would
        log = open(tmp_path / f"search{seed}.log", "w")
        searches.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "experiments",
                        *SEARCH,
                        "--seed",
                        str(seed),
                        "--storage_path",
                        str(tmp_path / f"ray{seed}"),
                    ],
                    cwd=tmp_path,
                    env=subprocess_env(MLFLOW_TRACKING_URI=store),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    reads, ui_failures, most_runs, deadline = 0, [], 0, time.time() + 1200
    try:
        while any(search.poll() is None for search, _ in searches):
            assert time.time() < deadline, "the searches took more than 20 minutes"
            try:
                most_runs = max(most_runs, read_like_the_ui(url))
                reads += 1
            except (urllib.error.URLError, OSError) as exc:  # HTTPError included: any status but 200
                ui_failures.append(f"{type(exc).__name__}: {getattr(exc, 'code', '')} {exc}")
            time.sleep(0.5)
    finally:
        for search, log in searches:
            if search.poll() is None:
                search.kill()
            search.wait()
            log.close()
        stop_mlflow_server(ui)

    consoles = {f"search{seed}.log": (tmp_path / f"search{seed}.log").read_text() for seed in (0, 1)}
    for (search, _), (name, console) in zip(searches, consoles.items()):
        assert search.returncode == 0, f"{name} exited {search.returncode}:\n{console[-5000:]}"
    consoles["ui/server.log"] = (ui_folder / "server.log").read_text()
    for name, text in consoles.items():
        assert not [e for e in LOCK_ERRORS if e in text], f"{name} shows a locking error:\n{text[-5000:]}"
    assert not ui_failures, ui_failures[:5]
    assert reads >= 20 and most_runs >= 4, (reads, most_runs)  # the UI really read while the searches wrote

    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 8, (parent.info.run_name, len(children))
        assert int(float(parent.data.params["concurrent_trials"])) == 8
        for child in children:
            diverged = child.data.tags.get("fmae.failure") == "diverged"
            assert child.info.status == ("FAILED" if diverged else "FINISHED"), (child.info.run_name, child.info.status)
            assert_each_epoch_once(child, expected_epochs(child), client)
