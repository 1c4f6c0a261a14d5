"""Ctrl-C and SIGTERM, as users and schedulers send them: runs end KILLED, Ray's processes go,
the exit status says which signal, and an interrupted search resumes to exactly its trials."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import assert_each_epoch_once, flags, mlflow_run_command, subprocess_env

pytestmark = pytest.mark.slow
SEARCH = flags(num_samples=3, max_epochs=2, grace_period=2, train_subset=2000, max_concurrent=2)


def start(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """A process in a session of its own, as a terminal's foreground job is: with Ctrl-C's default
    action too, which a suite started in the background (`bash .ci/run &`) would otherwise pass on
    as ignored (a shell ignores SIGINT in its background jobs, and Python keeps an inherited
    SIG_IGN)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(**env),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_an_epoch(proc: subprocess.Popen, trial: bool, timeout: float = 600) -> None:
    """Until some run (a trial's, if trial) has logged its first epoch."""
    client, deadline = MlflowClient(), time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, "metrics.val_loss > 0") if experiments else []
        if any(("mlflow.parentRunId" in r.data.tags) == trial for r in runs):
            return
        time.sleep(1)
    raise AssertionError("no epoch was logged")


def all_runs():
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def ray_processes(ray_tmp: str) -> list[int]:
    """Processes of the Ray that a step started with RAY_TMPDIR=ray_tmp (they inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"RAY_TMPDIR={ray_tmp}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_ctrl_c_twice_ends_a_search_killed_and_its_resume_command_finishes_it(tmp_path, tracking):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    proc = start(
        [sys.executable, "-m", "experiments", "tune", *SEARCH, "--storage_path", str(tmp_path / "ray")],
        tmp_path,
        RAY_TMPDIR=ray_tmp,
    )
    wait_for_an_epoch(proc, trial=True)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    time.sleep(1)
    os.kill(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C, during the clean-up
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "fmae tune: interrupted by SIGINT; its runs are marked KILLED." in err and "Traceback" not in err
    runs = all_runs()
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    deadline = time.time() + 30
    while ray_processes(ray_tmp) and time.time() < deadline:
        time.sleep(1)
    assert not ray_processes(ray_tmp), "Ray's processes outlived the step"

    resume = err.split("To resume the search: ", 1)[1].splitlines()[0]
    assert f"--storage_path {tmp_path / 'ray'}" in resume and resume.endswith("--resume true")
    result = subprocess.run(
        ["bash", "-c", resume],
        cwd=tmp_path,
        env=subprocess_env(RAY_TMPDIR=ray_tmp),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # the same search continued
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    configurations = {tuple(sorted(c.data.params.items())) for c in children}
    assert len(configurations) == 3, configurations  # no start point (nor any configuration) ran twice
    assert "interrupted" not in result.stderr  # the resumed search was not taken for an interrupted one
    for child in children:
        assert_each_epoch_once(child, [1, 2])


def test_sigterm_ends_a_step_killed_with_exit_143(tmp_path, tracking):
    proc = start(
        [sys.executable, "-m", "experiments", "train_cae", "--epochs", "100", "--train_subset", "2000"], tmp_path
    )
    wait_for_an_epoch(proc, trial=False)
    proc.send_signal(signal.SIGTERM)  # `timeout`, `kill`, a job scheduler
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err
    (run,) = all_runs()
    assert run.info.status == "KILLED"


def test_sigterm_to_the_mlflow_run_wrapper_reaches_the_step(tmp_path, tracking):
    """`mlflow run` has no SIGTERM handler and dies at once; its step must not run on unseen."""
    proc = start(mlflow_run_command("train_cae", {"epochs": 100, "train_subset": 2000}, experiment=None), tmp_path)
    wait_for_an_epoch(proc, trial=False)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline and all_runs()[0].info.status == "RUNNING":
        time.sleep(1)
    assert all_runs()[0].info.status == "KILLED"


def test_ctrl_c_to_mlflow_run_and_its_step_leaves_the_run_killed(tmp_path, tracking):
    """Ctrl-C in a terminal reaches `mlflow run` and its step together. MLflow 3.17's wrapper then
    marks the run FAILED over the step's KILLED; fmae puts KILLED back once the wrapper is gone."""
    proc = start(mlflow_run_command("train_cae", {"epochs": 100, "train_subset": 2000}, experiment=None), tmp_path)
    wait_for_an_epoch(proc, trial=False)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # the step gets the SIGINT, or the SIGTERM the wrapper cancels it with, whichever comes first
    assert "fmae train_cae: interrupted by SIG" in err, err[-3000:]
    run_id = all_runs()[0].info.run_id
    deadline = time.time() + 90  # the wrapper has exited; the process that restores KILLED ends once it has
    while restorers(run_id) and time.time() < deadline:
        time.sleep(0.5)
    assert not restorers(run_id) and all_runs()[0].info.status == "KILLED"


def restorers(run_id: str) -> list[int]:
    """Processes of mlflow_compat.keep_killed_under_mlflow_run still watching run_id."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"experiments.tracking.mlflow_compat" in argv and run_id.encode() in argv:
            found.append(int(proc.name))
    return found
