"""What the tests share besides fixtures: running steps as users do, reading MLflow back."""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import torch

from experiments.tracking.ui import NO_JOB_RUNNER

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell has it: without the experiment or run that
    MLflow exports when a test ran a step in-process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv's
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env.update(extra)
    return env


def flags(**values) -> list[str]:
    """`--name value` command-line flags, in the order given."""
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def mlflow_run_command(entry_point: str, params: dict, experiment: str | None = "fmae-test") -> list[str]:
    """`mlflow run . -e entry_point --env-manager local -P k=v ...`, as a user types it."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point, "--env-manager", "local"]
    cmd += ["--experiment-name", experiment] if experiment else []
    return cmd + [item for key, value in params.items() for item in ("-P", f"{key}={value}")]


def mlflow_run(
    entry_point: str,
    params: dict,
    tmp_path: Path,
    experiment: str = "fmae-test",
    check: bool = True,
    timeout: int = 900,
    **env: str,
) -> subprocess.CompletedProcess:
    """`mlflow run . -e entry_point --env-manager local -P k=v ...`, as a user types it (env: more variables)."""
    cmd = mlflow_run_command(entry_point, params, experiment)
    result = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def fmae(args: list[str], tmp_path: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """The console command `fmae ...` (as `python -m experiments ...`, the same entry)."""
    return subprocess.run(
        [sys.executable, "-m", "experiments", *args],
        cwd=tmp_path,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs_of(experiment: str = "fmae-test"):
    """All runs of an experiment, oldest first."""
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = mlflow.search_runs([exp.experiment_id], output_format="list", order_by=["attributes.start_time ASC"])
    return runs


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 2000, f"{path} is suspiciously small"


def images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(
    folder: Path,
    *args: str,
    port: int = 0,
    store: str = "",
    command: str = "server",
    workers: int | None = 1,
    **env: str,
) -> tuple[subprocess.Popen, str]:
    """`mlflow server` (or `mlflow ui`) on 127.0.0.1 (port, else a free one) with store as its
    backend (else a sqlite file in folder), serving artifacts itself, with `workers` workers
    (None: MLflow's default), plus args ("{port}" in them is its port); returns the process and
    its URL once /health answers. Its log is folder/server.log."""
    port = port or free_port()
    store = store or f"sqlite:///{folder / 'server.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            command,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(folder / "artifacts"),
            *(["--workers", str(workers)] if workers else []),
            *(a.replace("{port}", str(port)) for a in args),
        ],
        cwd=folder,
        env=subprocess_env(**{**NO_JOB_RUNNER, **env}),  # as the cluster recipe and `fmae ui` run it
        stdout=open(folder / "server.log", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its uvicorn and job runner with it, for the kill below
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240  # a busy 2-core machine: a minute or more
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5)  # a loaded machine answers the first one slowly
            return proc, url
        except OSError:
            time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):  # SIGKILL to `mlflow server` alone would orphan its uvicorn
        os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError((folder / "server.log").read_text()[-3000:])


def start_auth_server(folder: Path, password: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    """The cluster recipe's server, as README.md runs it: MLflow's basic-auth app with
    deploy/mlflow-auth.ini, `admin` with password, this host only. Its user store lives in folder,
    so a restart on the same folder and port is the same server."""
    return start_mlflow_server(
        folder,
        "--app-name",
        "basic-auth",
        "--allowed-hosts",
        "127.0.0.1:{port}",
        port=port,
        MLFLOW_AUTH_CONFIG_PATH=str(ROOT / "deploy" / "mlflow-auth.ini"),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )


def stop_mlflow_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server start_mlflow_server started, and all it started: uvicorn and MLflow's job
    runner, whose consumers outlive a SIGTERM to `mlflow server` alone. SIGKILL after timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_each_epoch_once(run, epochs: list[int], client=None) -> None:
    """run (a trial's) holds train_loss and val_loss for exactly these epochs, each once: what a
    retried, resumed or restarted trial must not break."""
    client = client or mlflow.tracking.MlflowClient()
    for key in ("train_loss", "val_loss"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == epochs, (run.info.run_name, key, steps)


def searcher_on_study(searcher_class, study_file: Path, **options):
    """A searcher over fmae's space from its start points, on a persistent Optuna study: what a
    search, and the same search resumed, set up."""
    from tune.ray_compat import optuna_storage
    from tune.space import START_POINTS, define_space

    return searcher_class(
        space=define_space,
        metric="val_loss",
        mode="min",
        seed=0,
        study_name="s",
        points_to_evaluate=START_POINTS,
        storage=optuna_storage(str(study_file)),
        **options,
    )
