"""What a search found: `summarize_search` computes it (the trials' table, the best checkpoint
evaluated on the test set, importances, the size–quality front) and `log_search_summary` writes
it to the parent run, registers the best encoder and describes the search."""

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from experiments.errors import UserError
from experiments.tracking.links import ui_path, version_markdown_link
from experiments.tracking.queries import download_artifact, logged_model_uri
from experiments.tracking.step_run import StepRun
from tune import pareto
from tune.child_runs import stopped_early, tag_trial_runs
from tune.ray_compat import optuna_storage
from tune.space import SEARCHED, used_params
from tune.timeline import timeline_metrics

ABOUT = (
    "The encoder of fmae's convolutional autoencoder, the best of a `fmae tune` search. Input: float tensor "
    "(N, 1, 28, 28) in [0, 1]; output: (N, encoded_space_dim) codes. `fmae finetune` starts from it."
)
TIMELINE_COLUMNS = ("process_started", "created", "launched", "entered", "ready", "first_epoch", "last_epoch", "ended")
# PED-ANOVA contrasts the best 10% of finished trials with all of them: below 11 finished trials
# that best 10% is a single trial, and the ranking describes that trial alone.
MIN_TRIALS_FOR_IMPORTANCE = 11


@dataclass
class SearchSummary:
    table: pd.DataFrame  # one row per trial: search_results.csv
    curves: dict[str, pd.Series]  # val_loss per epoch of the trials that ran to the end, by run name
    best_run_id: str  # the best trial's MLflow run
    best_name: str
    best_config: dict  # the hyperparameters it used
    best_val: float
    best_test: float  # its logged model on the test set (not a retrain)
    front: pd.DataFrame  # pareto.size_quality_front
    importances: dict[str, float]
    importance_trials: int  # finished trials the importances rest on
    metrics: dict[str, float]  # for the parent run


def trial_row(result, max_epochs: int, times: dict, number: int) -> tuple[dict, pd.Series | None]:
    """A trial's row of search_results.csv, and its val_loss curve if it ran to the end."""
    history, metrics = result.metrics_dataframe, result.metrics or {}
    if history is None or history.empty:
        epochs, best, last, run_id, curve = 0, math.nan, math.nan, None, None
    else:
        history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
        epochs, best, last = int(history["epoch"].max()), history["val_loss"].min(), history["val_loss"].iloc[-1]
        run_id, curve = history["mlflow_run_id"].iloc[-1], history.set_index("epoch")["val_loss"]
    status = (
        "failed"
        if result.error or metrics.get("diverged")
        else ("pruned" if stopped_early({"epoch": epochs}, max_epochs) else "finished")
    )
    row = {
        "trial_id": metrics.get("trial_id", f"#{number}"),
        "trial": metrics.get("mlflow_run_name", ""),
        **{k: (result.config or {}).get(k) for k in SEARCHED},
        "status": status,
        "pruned": status == "pruned",
        "epochs": epochs,
        "best_val_loss": best,
        "last_val_loss": last,
        "test_loss": metrics.get("test_loss", math.nan),
        "mlflow_run_id": run_id,
        **{f"{k}_s": round(times[k], 2) for k in TIMELINE_COLUMNS if k in times},
    }
    return row, curve if status == "finished" else None


def summarize_trials(results, max_epochs: int, timeline: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per trial for search_results.csv (with its timeline, seconds since the search
    began; a hyperparameter a trial did not use stays empty), and the finished trials' curves."""
    rows, curves = [], {}
    for number, result in enumerate(results):
        trial_id = (result.metrics or {}).get("trial_id", "")
        row, curve = trial_row(result, max_epochs, (timeline or {}).get(trial_id, {}), number)
        rows.append(row)
        if curve is not None:
            curves[row["trial"] or row["trial_id"]] = curve
    return pd.DataFrame(rows), curves


def import_in_background() -> threading.Thread:
    """Import what the summary draws and scores with (matplotlib; Optuna's importance module,
    which imports scikit-learn): about 3 CPU-seconds, here while the driver waits on the trials.
    After the last trial one core would import them alone, the other idle."""

    def load() -> None:
        import optuna.importance  # noqa: F401

        import tune.search_plots  # noqa: F401

    thread = threading.Thread(target=load, name="fmae-summary-imports", daemon=True)
    thread.start()
    return thread


def param_importances(study_name: str, study_file: Path) -> tuple[dict[str, float], int]:
    """Optuna 5's default evaluator, PED-ANOVA, on the finished trials: it scores each
    hyperparameter on the trials that used it (momentum on sgd and rmsprop trials only), where
    fANOVA would drop a conditional one. Returns the importances and how many trials they rest on."""
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(str(study_file)))
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if finished < 2:
        return {}, finished
    try:
        return optuna.importance.get_param_importances(study), finished
    except (RuntimeError, ValueError):  # e.g. every finished trial drew the same values
        return {}, finished


def best_trial(table: pd.DataFrame) -> pd.Series:
    """The trial that ran to the end with the lowest final val_loss: the model it logged is the one
    registered, and its test_loss (computed on that model) is the search's best_test_loss."""
    finished = table[(table["status"] == "finished") & table["mlflow_run_id"].notna()]
    if finished.empty:
        raise UserError(
            f"none of the {len(table)} trials ran to the end ({dict(table['status'].value_counts())}), so there is "
            "no encoder to register. Give trials more room (grace_period, max_epochs) or look at the failures "
            "with FMAE_DEBUG=1 and the trial logs under storage_path."
        )
    return finished.loc[finished["last_val_loss"].idxmin()]


def summarize_search(results, config, folder: Path, timeline: dict, search_seconds: float) -> SearchSummary:
    table, curves = summarize_trials(results, config.max_epochs, timeline)
    best = best_trial(table)
    finished = table[table["status"] == "finished"].dropna(subset=["test_loss"])
    front = pareto.size_quality_front(
        [
            {"trial": r.trial, "mlflow_run_id": r.mlflow_run_id, "test_loss": r.test_loss, "config": r._asdict()}
            for r in finished.itertuples()
        ]
    )
    importances, importance_trials = param_importances(folder.name, folder / "optuna.db")
    counts = table["status"].value_counts()
    metrics = {
        "best_val_loss": float(best["last_val_loss"]),
        "best_test_loss": float(best["test_loss"]),
        "trials_finished": int(counts.get("finished", 0)),
        "trials_pruned": int(counts.get("pruned", 0)),
        "trials_failed": int(counts.get("failed", 0)),
        **timeline_metrics(timeline, search_seconds),
    }
    config_used = used_params({k: best[k] for k in SEARCHED if pd.notna(best[k])})
    return SearchSummary(
        table,
        curves,
        best["mlflow_run_id"],
        best["trial"],
        config_used,
        metrics["best_val_loss"],
        metrics["best_test_loss"],
        front,
        importances,
        importance_trials,
        metrics,
    )


def search_description(summary: SearchSummary, experiment_id: str, register_as: str, version: str) -> str:
    counts, table = summary.table["status"].value_counts(), summary.table
    best = f"[{summary.best_name}]({ui_path(experiment_id, summary.best_run_id)})"
    small = pareto.smallest_within(summary.front)
    front = (
        f" The smallest encoder within 5% of the best test loss: {small.trial} ({small.encoder_params:,} "
        f"parameters, test_loss {small.test_loss:.5f}); pareto_front.png shows the trade-off."
        if small is not None
        else ""
    )
    return (
        f"**Search of {len(table)} trials** (Ray Tune + Optuna TPE, ASHA stopping): {counts.get('finished', 0)} ran "
        f"to the end, {counts.get('pruned', 0)} were stopped early, {counts.get('failed', 0)} failed. Expand this "
        f"run in the table to see them as child runs.\n\nBest: {best}, val_loss **{summary.best_val:.5f}**, "
        f"test_loss **{summary.best_test:.5f}**; its encoder is {version_markdown_link(register_as, version)}."
        f"{front}\n\nFigures (Artifacts): parallel_coordinates.png, learning_curves.png, param_importances.png, "
        "pareto_front.png, reconstructions.png; every trial in search_results.csv."
    )


def log_tables(parent: StepRun, summary: SearchSummary) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in (("search_results.csv", summary.table), ("pareto_front.csv", summary.front)):
            table.to_csv(Path(tmp, name), index=False)
            parent.log_artifact(Path(tmp, name))


def log_search_summary(parent: StepRun, summary: SearchSummary, config) -> None:
    """Everything the parent run holds after the search; the best encoder registered, and linked
    from its trial."""
    from tune import search_plots  # matplotlib: not on the search's start (import_in_background)

    parent.log_params({f"best_{k}": v for k, v in summary.best_config.items()})
    parent.log_metrics(summary.metrics)
    finished = summary.table[summary.table["status"] != "failed"]
    parent.log_figures(
        {
            "parallel_coordinates.png": search_plots.plot_parallel_coordinates(finished, list(SEARCHED)),
            "learning_curves.png": search_plots.plot_learning_curves(
                summary.curves, "val_loss of the trials that ran to the end"
            ),
            "param_importances.png": search_plots.plot_param_importances(
                summary.importances, summary.importance_trials, MIN_TRIALS_FOR_IMPORTANCE
            ),
            "pareto_front.png": search_plots.plot_pareto_front(summary.front),
        }
    )
    log_tables(parent, summary)
    tag_trial_runs(summary.front.loc[summary.front["on_front"], "mlflow_run_id"], {"fmae.pareto": "true"})
    with tempfile.TemporaryDirectory() as tmp:  # the best trial's own figure, shown on the search's page too
        figure = download_artifact(summary.best_run_id, "reconstructions.png", tmp)
        if figure is not None:
            parent.log_artifact(figure)
    version, _ = parent.register(
        logged_model_uri(summary.best_run_id, "encoder"),
        config.register_as,
        ("test_loss", summary.best_test),
        higher_is_better=False,
        about=ABOUT,
        tags={"val_loss": summary.best_val, "fmae.trial_run_id": summary.best_run_id, **summary.best_config},
    )
    link_trial_to_version(summary.best_run_id, config.register_as, str(version.version))
    parent.describe(search_description(summary, parent.experiment_id, config.register_as, str(version.version)))
    counts = summary.table["status"].value_counts()
    print(
        f"best trial: val_loss {summary.best_val:.5f}  test_loss {summary.best_test:.5f}  "
        + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.best_config.items())
    )
    print(
        f"trials: {len(summary.table)} ({counts.get('finished', 0)} finished, {counts.get('pruned', 0)} stopped "
        f"early, {counts.get('failed', 0)} failed)"
    )


def link_trial_to_version(run_id: str, name: str, version: str) -> None:
    """The best trial's page names the version its encoder became (MLflow's own "Registered
    models" box lists only versions registered from that run's own models)."""
    trial = StepRun(run_id)
    note = trial.client.get_run(run_id).data.tags.get("mlflow.note.content", "")
    trial.set_tags({"fmae.best_trial": "true", "fmae.registered_version": f"{name}/{version}"})
    trial.describe(f"{note}\n\n**The search's best trial**: its encoder is {version_markdown_link(name, version)}.")
