"""`fmae ui`: MLflow's UI on the tracking store, opened where the study is.

MLflow 3 opens an experiment on its GenAI overview unless a URL says `workflowType`; the link
this prints lands on the experiment's runs in the Model-training view.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser

from mlflow.tracking import MlflowClient

from experiments.interrupts import die_with_parent, interrupt_on
from experiments.tracking.links import TRAINING_VIEW, ui_path
from experiments.tracking.runs import DEFAULT_EXPERIMENT
from experiments.tracking.server import is_server, tracking_uri

# MLflow's job runner runs GenAI jobs (scorers, evaluations, prompt optimisation), none of them
# fmae's; its seven consumers poll for work and burn about 0.6 of a core while the UI is
# open. Off unless the user's environment turns it on.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def runs_url(base: str) -> str:
    """The study's runs (the experiment fmae writes to), else the list of experiments."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = MlflowClient().get_experiment_by_name(name)
    return f"{base}/{ui_path(experiment.experiment_id)}" if experiment else f"{base}/#/experiments?{TRAINING_VIEW}"


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmae ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on")
    parser.add_argument("--open", action="store_true", help="also open the link in a web browser")
    args = parser.parse_args(argv)
    uri = tracking_uri()
    if is_server(uri):  # a tracking server serves its own UI
        print(f"Open: {runs_url(uri.rstrip('/'))}")
        return 0
    base = f"http://{args.host}:{args.port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            args.host,
            "--port",
            str(args.port),
        ],
        env={**NO_JOB_RUNNER, **os.environ},
        start_new_session=True,  # its own process group, with the uvicorn workers it starts: see stop()
        preexec_fn=die_with_parent,  # a SIGTERM, which ends them all, should fmae ui be killed outright
    )
    # kill, a service manager or a closed terminal stop it as Ctrl-C does, the server with it
    interrupt_on(signal.SIGTERM, signal.SIGHUP)
    try:
        if not wait_until_up(base, proc):
            print(
                f"fmae ui: error: mlflow ui did not come up on {base} (is the port taken? try --port).", file=sys.stderr
            )
            return 2
        url = runs_url(base)
        print(f"\nMLflow UI on {uri}\nOpen: {url}\n(Ctrl-C stops it)", flush=True)
        if args.open:
            webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt as exc:
        return getattr(exc, "exit_status", 0)  # Ctrl-C is how it is meant to stop
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """`mlflow ui` and every process it started (its uvicorn workers): all of its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
