"""`fmae NAME --key value`: the console command and the MLproject entry points share it.

A step is a module of experiments/ or tune/ that says `STEP = "name"` and defines a frozen
`Config` dataclass and `run(config) -> run_id`. Steps are found by that line, without
importing them (the search lives in tune/, which builds on experiments/ and is not imported
by it), and imported only when asked for.
"""

import atexit
import importlib
import logging
import os
import re
import signal
import sys
import traceback
from functools import cache
from pathlib import Path

from experiments import interrupts
from experiments.errors import UserError

PACKAGES = ("experiments", "tune")
STEP_LINE = re.compile(r'^STEP = "(\w+)"$', re.M)


@cache
def steps() -> dict[str, str]:
    """Step name -> module, for every step module in PACKAGES."""
    root = Path(__file__).resolve().parents[1]
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            match = STEP_LINE.search(path.read_text())
            if match:
                found[match.group(1)] = f"{package}.{path.stem}"
    return found


def usage() -> str:
    return (
        f"usage: fmae {{{','.join(steps())}}} [--name value ...]   (fmae NAME --help lists a step's parameters)\n"
        "       fmae ui [--port 5000] [--open]   (MLflow's UI on the tracking store, opened on the study's runs)"
    )


def step_module(name: str):
    if name not in steps():
        raise UserError(f"there is no step {name!r}. The steps are: {', '.join(steps())}.")
    return importlib.import_module(steps()[name])


def run_step(name: str, argv: list[str]):
    """Parse argv for step name and run it; returns what the step returns."""
    module = step_module(name)
    return module.run(module.Config.from_argv(argv, prog=f"fmae {name}"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # MLflow draws a progress bar for every artifact download: two per model load, dozens a study.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints "View run / View experiment" as each run ends, into its
    # GenAI view; fmae prints one link per step, into the training view.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" line per run
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "ui":  # not a step: MLflow's UI on the store, opened on the study's runs
        from experiments.tracking import ui

        return ui.main(argv[1:])
    interrupts.install()
    launched = os.environ.get("MLFLOW_RUN_ID")  # the run `mlflow run` made (MLflow unsets this once it ends)
    try:
        run_step(argv[0], argv[1:])
    except UserError as exc:
        if os.environ.get("FMAE_DEBUG") == "1":
            traceback.print_exc()
        print(f"fmae {argv[0]}: error: {exc}", file=sys.stderr, flush=True)
        from experiments.tracking.runs import describe_rejected_launch

        describe_rejected_launch(str(exc))
        return 2
    except KeyboardInterrupt as exc:
        signum = interrupts.signal_number(exc)
        resume = getattr(exc, "resume", "")
        print(
            f"fmae {argv[0]}: interrupted by {signal.Signals(signum).name}; its runs are marked KILLED."
            + (f" To resume the search: {resume}" if resume else ""),
            file=sys.stderr,
            flush=True,
        )
        if launched:
            from experiments.tracking.mlflow_compat import keep_killed_under_mlflow_run

            keep_killed_under_mlflow_run(launched)
        return 128 + signum
    return 0


def console() -> None:
    """The `fmae` command (and `python -m experiments`): main(), then an exit that skips
    Python's teardown of torch, Ray and MLflow's modules (about 2 s after every step, measured in
    docs/performance.md) once the atexit handlers (MLflow's, Ray's, logging's) have run."""
    status = [1]  # an exception escaping main() is a failure

    def exit_now():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status[0])

    atexit.register(exit_now)  # registered first, so it runs after every handler registered later
    status[0] = main()
    sys.exit(status[0])


if __name__ == "__main__":
    console()
