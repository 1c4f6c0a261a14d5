"""Step `main`: the whole study as one parent run — tune -> finetune -> vae -> analyze as
child runs, each starting from the model the step before registered — and `report.html`."""

import base64
import dataclasses
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from experiments.cli import step_module
from experiments.config import CommonConfig, check_choice, config_params, parse_config
from experiments.errors import UserError
from experiments.tracking import start_step_run

ORDER = ("tune", "finetune", "vae", "analyze")
# quick: minutes on a laptop CPU, to see every piece work; full: the contract's defaults.
PROFILES = {
    "quick": {
        "tune": {"train_subset": 20_000, "num_samples": 6, "max_epochs": 6, "grace_period": 2},
        "finetune": {"train_subset": 20_000, "epochs": 5},
        "vae": {"train_subset": 20_000, "epochs": 8},
        "analyze": {"n_points": 1000},
    },
    "full": {step: {} for step in ORDER},
}
HEADLINES = {  # step -> the metrics of its run that main carries, the study's results at a glance
    "tune": ("best_test_loss",),
    "finetune": ("test_accuracy",),
    "vae": ("test_recon_mse",),
    "analyze": ("cae_knn_accuracy", "vae_knn_accuracy"),
}
REPORT_FIGURES = {  # step -> artifacts shown in report.html
    "tune": ("parallel_coordinates.png", "learning_curves.png", "reconstructions.png"),
    "finetune": ("confusion_matrix.png",),
    "vae": ("samples.png",),
    "analyze": ("cae_tsne.png", "vae_tsne.png", "cae_samples.png"),
}


@dataclass(frozen=True)
class Config(CommonConfig):
    profile: str = "quick"  # quick (minutes, subsets) or full (the contract's defaults, full data)
    overrides: tuple = ()  # other steps' parameters given to main, as (name, text) pairs

    def __post_init__(self):
        super().__post_init__()
        check_choice("profile", self.profile, tuple(PROFILES))


def parse(argv: list[str]) -> Config:
    """main's own flags, plus any step's parameter, which goes to every step that takes it."""
    own = {f.name for f in dataclasses.fields(CommonConfig)} | {"profile"}
    step_fields = {name: {f.name for f in dataclasses.fields(step_module(name).Config)} for name in ORDER}
    mine, overrides, i = [], [], 0
    while i < len(argv):
        flag = argv[i]
        key, _, inline = flag[2:].partition("=") if flag.startswith("--") else ("", "", "")
        key = key.replace("-", "_")
        value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
        if not key or value is None:
            raise UserError(f"fmae main: could not read {flag!r}; flags take the form --name value.")
        if key in own:
            mine += [f"--{key}", value]
        elif any(key in fields for fields in step_fields.values()):
            overrides.append((key, value))
        else:
            raise UserError(f"fmae main does not take --{key}: no step has that parameter.")
        i += 1 if inline else 2
    config = dataclasses.replace(parse_config(Config, mine, prog="fmae main"), overrides=tuple(overrides))
    step_configs(config)  # reject bad values before any work starts
    return config


def step_argv(config: Config, step: str, extra: dict[str, str]) -> list[str]:
    fields = {f.name for f in dataclasses.fields(step_module(step).Config)}
    values = {k: str(v) for k, v in PROFILES[config.profile][step].items()}
    values.update({k: str(getattr(config, k)) for k in ("data_dir", "seed", "device")})
    if config.train_subset:
        values["train_subset"] = str(config.train_subset)
    values.update(extra)
    values.update({k: v for k, v in config.overrides if k in fields})
    return [token for k, v in values.items() if k in fields for token in (f"--{k}", v)]


def step_configs(config: Config, extra: dict[str, dict[str, str]] | None = None) -> dict:
    return {step: parse_config(step_module(step).Config, step_argv(config, step, (extra or {}).get(step, {})),
                               prog=f"fmae main ({step})") for step in ORDER}


def registered_version(run_id: str, name: str) -> str | None:
    """models:/NAME/VERSION of what run_id registered as name, if it did."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.tags.get("fmae.run_id") == run_id]
    return f"models:/{name}/{max(int(v.version) for v in mine)}" if mine else None


def run(config: Config) -> str:
    with start_step_run("main", {"profile": config.profile, **config_params(config), "overrides": dict(config.overrides)}) as parent:
        given = {k for k, _ in config.overrides}
        runs, extra = {}, {}
        for step in ORDER:
            step_config = step_configs(config, extra)[step]
            print(f"\n=== fmae main: {step} ===", flush=True)
            runs[step] = step_module(step).run(step_config)
            # Later steps start from the models this pipeline just registered, unless told otherwise.
            if step == "tune" and "model_uri" not in given:
                uri = registered_version(runs[step], step_config.register_as)
                extra["finetune"] = {"model_uri": uri} if uri else {}
                if uri and "cae_model_uri" not in given:
                    extra.setdefault("analyze", {})["cae_model_uri"] = uri
            if step == "vae" and "vae_model_uri" not in given:
                uri = registered_version(runs[step], step_config.register_as)
                if uri:
                    extra.setdefault("analyze", {})["vae_model_uri"] = uri
        log_headlines(runs)
        log_report(runs)
        return parent.info.run_id


def run_path(run) -> str:
    """A run's address inside the MLflow UI, relative to wherever the UI is served."""
    return f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"


def log_headlines(runs: dict[str, str]) -> None:
    """The study's headline metrics on the main run, and a description linking each step's run."""
    client = MlflowClient()
    lines, metrics = [], {}
    for step, run_id in runs.items():
        run = client.get_run(run_id)
        found = {k: run.data.metrics[k] for k in HEADLINES[step] if k in run.data.metrics}
        metrics.update(found)
        figures = ", ".join(f"{k} **{v:.4g}**" for k, v in found.items())
        lines.append(f"{len(lines) + 1}. [{step}]({run_path(run)}) — {figures}")
    mlflow.log_metrics(metrics)
    mlflow.set_tag("mlflow.note.content", "**fmae: the whole study**, one child run per step (newest first "
                   "in the table; this is their order):\n\n" + "\n".join(lines)
                   + "\n\nreport.html (Artifacts) has every step's numbers and figures on one page.")


def log_report(runs: dict[str, str]) -> None:
    """report.html: each step's key numbers, its figures inline, and where to find its run."""
    client = MlflowClient()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for step, run_id in runs.items():
            run = client.get_run(run_id)
            metrics = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
                              for k, v in sorted(run.data.metrics.items()) if not k.startswith("epoch"))
            images = []
            for name in REPORT_FIGURES[step]:
                try:
                    path = client.download_artifacts(run_id, name, tmp)
                except Exception:  # noqa: BLE001 - a missing figure is left out of the report
                    continue
                data = base64.b64encode(Path(path).read_bytes()).decode()
                images.append(f'<figure><img src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>')
            # No links: MLflow's artifact viewer shows this page in a frame where none would work.
            sections.append(f"<h2>{step}</h2><p>Run <code>{run_id}</code> (<b>{html.escape(run.info.run_name)}</b>): "
                            "in the MLflow UI, open the <b>main</b> run and its child runs, or search "
                            f"<code>attributes.run_id = '{run_id}'</code>.</p><table>{metrics}</table>{''.join(images)}")
        page = ("<!doctype html><meta charset='utf-8'><title>fmae report</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
                "td{padding:2px 12px}figure{margin:12px 0}</style><h1>fmae: the study, end to end</h1>"
                + "".join(sections))
        path = Path(tmp, "report.html")
        path.write_text(page)
        mlflow.log_artifact(str(path))
