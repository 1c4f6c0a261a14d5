"""`fmae NAME --key value`: the console command and the MLproject entry points share it."""

import importlib
import os
import sys
import traceback

from experiments.config import parse_config
from experiments.errors import UserError

# Steps by name, imported only when asked for: the search lives in tune/, which builds on
# experiments/ and is not imported by it.
STEPS = {
    "train_cae": "experiments.train_cae",
    "tune": "tune.search",
    "finetune": "experiments.finetune",
    "vae": "experiments.vae",
    "analyze": "experiments.analyze",
    "main": "experiments.pipeline",
}
USAGE = f"usage: fmae {{{','.join(STEPS)}}} [--name value ...]   (fmae NAME --help lists a step's parameters)"


def step_module(name: str):
    if name not in STEPS:
        raise UserError(f"there is no step {name!r}. The steps are: {', '.join(STEPS)}.")
    return importlib.import_module(STEPS[name])


def run_step(name: str, argv: list[str]):
    """Parse argv for step name and run it; returns what the step returns."""
    module = step_module(name)
    parse = getattr(module, "parse", None)  # main reads every step's parameters itself
    config = parse(argv) if parse else parse_config(module.Config, argv, prog=f"fmae {name}")
    return module.run(config)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # MLflow draws a progress bar for every artifact download: two per model load, dozens a study.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        run_step(argv[0], argv[1:])
    except UserError as exc:
        if os.environ.get("FMAE_DEBUG") == "1":
            traceback.print_exc()
        print(f"fmae {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fmae {argv[0]}: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
