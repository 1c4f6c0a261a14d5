"""`report.html`: a study on one page — each step's results (study metrics first, rounded;
system metrics apart), its figures inline, and links back to every run in the MLflow UI."""

import base64
import html
import math

import pandas as pd

from experiments.tracking.links import ui_base, ui_path
from experiments.tracking.queries import child_runs, download_artifact, get_run

SYSTEM_PREFIX = "system/"  # MLflow's CPU, memory, disk and GPU samples: how it ran, not what it found
FIGURES = {  # step -> artifacts shown in report.html
    "tune": ("parallel_coordinates.png", "learning_curves.png", "pareto_front.png", "reconstructions.png"),
    "finetune": ("confusion_matrix.png",),
    "vae": ("samples.png",),
    "analyze": ("cae_tsne.png", "vae_tsne.png", "cae_samples.png"),
}
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}td,th{padding:2px 12px;"
    "text-align:left}figure{margin:12px 0}details{margin:8px 0;color:#555}"
)


def fmt(value: float) -> str:
    """Four significant digits: what these figures mean (0.019084336853 -> 0.01908)."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def param_text(value: str) -> str:
    """A logged hyperparameter as shown: floats to four significant digits (lr 0.0054021425 ->
    0.005402), anything else as logged."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else fmt(number)


def run_anchor(run, label: str = "") -> str:
    """A link that opens run in the MLflow UI's training view (absolute: the report is also read
    on its own, and MLflow's artifact viewer shows it in a frame of its own)."""
    href = f"{ui_base()}/{ui_path(run.info.experiment_id, run.info.run_id)}"
    return f'<a href="{html.escape(href)}">{html.escape(label or run.info.run_name)}</a>'


def metric_rows(metrics: dict[str, float]) -> str:
    return "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(v)}</td></tr>" for k, v in metrics.items())


def metrics_html(run) -> str:
    """The study's metrics in a table; system metrics folded away below it."""
    metrics = run.data.metrics
    study = {k: v for k, v in sorted(metrics.items()) if not k.startswith(SYSTEM_PREFIX) and k != "epoch_seconds"}
    system = {k: v for k, v in sorted(metrics.items()) if k.startswith(SYSTEM_PREFIX)}
    folded = f"<details><summary>System metrics ({len(system)})</summary><table>{metric_rows(system)}</table></details>"
    return f"<table>{metric_rows(study)}</table>" + (folded if system else "")


def figures_html(run_id: str, names: tuple[str, ...], folder: str) -> str:
    images = []
    for name in names:
        path = download_artifact(run_id, name, folder)
        if path is None:  # a missing figure is left out of the report
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        images.append(f'<figure><img src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>')
    return "".join(images)


def search_html(run, folder: str) -> str:
    """The search's best trial (linked) and hyperparameters, and its size-quality front."""
    best = child_runs(run.info.run_id, "tags.`fmae.best_trial` = 'true'")
    params = {k.removeprefix("best_"): v for k, v in sorted(run.data.params.items()) if k.startswith("best_")}
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(param_text(v))}</td></tr>" for k, v in params.items()
    )
    part = (
        f"<p>Best trial: {run_anchor(best[0]) if best else 'not recorded'}, with these hyperparameters:</p>"
        f"<table>{rows}</table>"
    )
    front = download_artifact(run.info.run_id, "pareto_front.csv", folder)
    if front is not None:
        part += front_html(pd.read_csv(front))
    return part


def front_html(front: pd.DataFrame) -> str:
    on_front = front[front["on_front"]].sort_values("encoder_params")
    rows = "".join(
        f"<tr><td>{html.escape(str(r.trial))}</td><td>{fmt(r.test_loss)}</td><td>{int(r.encoder_params):,}</td>"
        f"<td>{fmt(r.cpu_ms_per_image)}</td></tr>"
        for r in on_front.itertuples()
    )
    best = front["test_loss"].min()
    small = front[front["test_loss"] <= 1.05 * best].sort_values("encoder_params").head(1)
    note = (
        (
            f"<p>Smallest encoder within 5% of the best test loss: <b>{html.escape(str(small.trial.iloc[0]))}</b>, "
            f"{int(small.encoder_params.iloc[0]):,} parameters, test loss {fmt(small.test_loss.iloc[0])} "
            f"(best {fmt(best)}).</p>"
        )
        if len(small)
        else ""
    )
    return (
        "<p>The size–quality front (no other trial is both smaller or faster and better):</p><table><tr><th>trial"
        "</th><th>test_loss</th><th>encoder parameters</th><th>CPU ms per image</th></tr>" + rows + "</table>" + note
    )


def step_html(step: str, run_id: str, folder: str) -> str:
    run = get_run(run_id)
    what = html.escape(run.data.tags.get("mlflow.note.content", "").split("\n", 1)[0].replace("**", ""))
    body = f"<h2>{step}</h2><p>Run {run_anchor(run)}. {what}</p>" + metrics_html(run)
    if step == "tune":
        body += search_html(run, folder)
    return body + figures_html(run_id, FIGURES.get(step, ()), folder)


def report_page(runs: dict[str, list[str]], folder: str) -> str:
    sections = "".join(step_html(step, run_id, folder) for step, run_ids in runs.items() for run_id in run_ids)
    return (
        f"<!doctype html><meta charset='utf-8'><title>fmae report</title><style>{STYLE}</style>"
        "<h1>fmae: the study, end to end</h1><p>Links open the runs in the MLflow UI "
        f"(served at {html.escape(ui_base())}).</p>" + sections
    )
