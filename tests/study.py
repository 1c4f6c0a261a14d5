"""The small study the test modules share: one `main` through `mlflow run`, as users run it.

Three trials of two epochs on 2,000 images: the two start points run to the end, and ASHA
stops Optuna's first draw at its first rung. top_encoders=1: the best finished trial's encoder
is fine-tuned (mode=full) besides the frozen run on the champion. Then the VAE and the analysis.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run

from tests.helpers import runs_of

STUDY = {
    "train_subset": 2000,
    "num_samples": 3,
    "max_epochs": 2,
    "grace_period": 1,
    "epochs": 2,
    "n_points": 300,
    "top_encoders": 1,
}
EXPERIMENT = "fmae-test"


@dataclass
class Study:
    folder: Path
    console: str  # what `mlflow run . -e main` printed
    ui_port: int  # where report.html's links expect the MLflow UI
    runs: list[Run]  # every run, oldest first
    main: Run
    tune: Run
    frozen: Run  # finetune, mode=frozen, on the search's new encoder version
    full: Run  # finetune, mode=full, on the best trial's encoder
    vae: Run
    analyze: Run
    trials: list[Run]
    pruned: Run  # a trial ASHA stopped
    finished: Run  # a trial that ran to the end

    @property
    def experiment_id(self) -> str:
        return self.main.info.experiment_id


def read_study(folder: Path) -> Study:
    runs = runs_of(EXPERIMENT)
    by_step: dict[str, list[Run]] = {}
    for run in runs:
        by_step.setdefault(run.data.tags.get("fmae.step", ""), []).append(run)
    finetunes = {r.data.params["mode"]: r for r in by_step["finetune"]}
    trials = by_step["tune-trial"]
    pruned = [r for r in trials if r.data.tags.get("fmae.pruned") == "true"]
    finished = [r for r in trials if "fmae.pruned" not in r.data.tags]
    assert pruned and finished, [(r.info.run_name, r.data.tags.get("fmae.pruned")) for r in trials]
    return Study(
        folder,
        (folder / "console.txt").read_text(),
        json.loads((folder / "meta.json").read_text())["ui_port"],
        runs,
        by_step["main"][0],
        by_step["tune"][0],
        finetunes["frozen"],
        finetunes["full"],
        by_step["vae"][0],
        by_step["analyze"][0],
        trials,
        pruned[0],
        finished[0],
    )
