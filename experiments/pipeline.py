"""Step `main`: the whole study as one parent run — tune -> finetune -> vae -> analyze as
child runs, each starting from the model the step before registered — and `report.html`."""

import base64
import dataclasses
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cli import step_module
from experiments.config import CommonConfig, check_choice, config_params, field_help, field_types, parse_flags
from experiments.step import open_step
from experiments.tracking import StepRun, download_artifact, get_run, registered_version, ui_path

STEP = "main"
# The study, in order: a step joins it with its name here. Each later step starts from the
# models the earlier ones registered in this run (see chain_models).
ORDER = ("tune", "finetune", "vae", "analyze")
# quick: minutes on a laptop CPU, to see every piece work; full: the contract's defaults.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "tune": {"train_subset": 20_000, "num_samples": 6, "max_epochs": 6, "grace_period": 2},
        "finetune": {"train_subset": 20_000},
        "vae": {"train_subset": 20_000, "epochs": 8},
        "analyze": {"n_points": 1000},
    },
    "full": {step: {} for step in ORDER},
}
# How many of the search's best encoders (of distinct architectures) main also fine-tunes in
# mode=full, the champion classifier being the best of them: the best reconstruction is not
# always the best classifier (docs/finetune.md: 0.913 from the champion, 0.922 from another trial).
TOP_ENCODERS = {"quick": 0, "full": 3}
HEADLINES = {  # step -> the metrics of its run that main carries, the study's results at a glance
    "tune": ("best_test_loss",),
    "finetune": ("test_accuracy",),
    "vae": ("test_recon_mse",),
    "analyze": ("cae_knn_accuracy", "vae_knn_accuracy"),
}
BEST_BY = {"finetune": "test_accuracy"}  # step -> the metric that picks its headline run when it ran more than once
REPORT_FIGURES = {  # step -> artifacts shown in report.html
    "tune": ("parallel_coordinates.png", "learning_curves.png", "reconstructions.png"),
    "finetune": ("confusion_matrix.png",),
    "vae": ("samples.png",),
    "analyze": ("cae_tsne.png", "vae_tsne.png", "cae_samples.png"),
}


@dataclass(frozen=True)
class Config(CommonConfig):
    profile: str = "quick"  # quick (minutes, subsets) or full (the contract's defaults, full data)
    top_encoders: int = -1  # also fine-tune (mode=full) the search's best N encoders of distinct architectures; -1 = the profile's (quick 0, full 3)
    overrides: tuple = ()  # other steps' parameters given to main, as typed (name, value) pairs

    def __post_init__(self):
        super().__post_init__()
        check_choice("profile", self.profile, tuple(PROFILES))
        if self.top_encoders < 0:
            object.__setattr__(self, "top_encoders", TOP_ENCODERS[self.profile])

    @classmethod
    def from_argv(cls, argv: list[str], prog: str = "fmae main") -> "Config":
        """main's own flags, plus any step's parameter, typed once here; it goes to every step
        that takes it. Every step's config is built (and checked) before any work starts."""
        own = {k: v for k, v in field_types(cls).items() if k != "overrides"}
        steps, help_ = {}, {}
        for name in ORDER:
            step_cls = step_module(name).Config
            help_ = {**field_help(step_cls), **help_}
            for key, kind in field_types(step_cls).items():
                if steps.setdefault(key, kind) is not kind:
                    raise TypeError(f"steps disagree on the type of {key}")  # a programming error: fix the configs
        values = parse_flags({**steps, **own}, argv, prog, {**help_, **field_help(cls)},
                             unknown_hint=": no step has that parameter")
        config = cls(**{k: v for k, v in values.items() if k in own},
                     overrides=tuple((k, v) for k, v in values.items() if k not in own))
        for step in ORDER:
            step_config(config, step)
        return config


def step_config(config: Config, step: str, chained: dict[str, Any] | None = None):
    """step's config in this study: the profile's values, main's common flags, models this run
    registered (chained), then what the user gave main; checked by the step's own Config."""
    cls = step_module(step).Config
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {**PROFILES[config.profile].get(step, {}),
              **{k: getattr(config, k) for k in ("data_dir", "seed", "device")},
              **({"train_subset": config.train_subset} if config.train_subset else {}),
              **(chained or {}), **dict(config.overrides)}
    return cls(**{k: v for k, v in values.items() if k in fields})


def chain_models(registered: dict[str, str], cls) -> dict[str, str]:
    """A later step's model URIs that default to a name@champion this run registered a version
    of: pinned to that version, so the study uses its own models even if they lost the alias."""
    chained = {}
    for f in dataclasses.fields(cls):
        if isinstance(f.default, str) and f.default.startswith("models:/") and "@" in f.default:
            name = f.default[len("models:/"):].split("@", 1)[0]
            if name in registered:
                chained[f.name] = registered[name]
    return chained


def run(config: Config) -> str:
    params = {"profile": config.profile, **config_params(config), "overrides": dict(config.overrides)}
    with open_step(STEP, config, data=False, params=params) as main:
        runs: dict[str, list[str]] = {}
        registered: dict[str, str] = {}
        for number, step in enumerate(ORDER, 1):
            module = step_module(step)
            step_configs = [step_config(config, step, chain_models(registered, module.Config))]
            if step == "finetune":
                step_configs += top_encoder_configs(config, runs["tune"][0])
            for i, step_cfg in enumerate(step_configs):
                what = f" ({step_cfg.mode} on {step_cfg.model_uri})" if step == "finetune" else ""
                print(f"\n=== fmae main: step {number}/{len(ORDER)} {step}{what} ===", flush=True)
                runs.setdefault(step, []).append(module.run(step_cfg))
                name = getattr(step_cfg, "register_as", "")
                version = registered_version(runs[step][-1], name) if name else None
                if version and i == 0:  # later steps build on the step's own run, not its extra ones
                    registered[name] = version
        log_headlines(main.run, runs)
        log_report(main.run, runs)
        return main.run_id


def top_encoder_configs(config: Config, tune_run_id: str) -> list:
    """finetune's configs for mode=full from the encoders of the search's best trials."""
    if not config.top_encoders:
        return []
    from tune.child_runs import best_trials  # main composes the steps; tune builds on experiments, so import late

    trials = best_trials(tune_run_id, config.top_encoders)
    return [step_config(config, "finetune", {"model_uri": f"runs:/{trial.info.run_id}/encoder", "mode": "full"})
            for trial in trials]


def headline_run(step: str, run_ids: list[str]):
    """The run whose numbers stand for the step: its only one, or the one with the highest
    BEST_BY metric (finetune: the best classifier, the one its registered champion came from)."""
    runs = [get_run(run_id) for run_id in run_ids]
    key = BEST_BY.get(step)
    return max(runs, key=lambda r: r.data.metrics.get(key, float("-inf"))) if key else runs[-1]


def run_line(run, metrics: tuple[str, ...]) -> str:
    mode = run.data.tags.get("fmae.mode")
    source = run.data.tags.get("fmae.source_trial") or run.data.tags.get("fmae.source_model")
    what = f" ({mode}{' from ' + source if source else ''})" if mode else ""
    figures = ", ".join(f"{k} **{run.data.metrics[k]:.4g}**" for k in metrics if k in run.data.metrics)
    return f"[{run.data.tags.get('fmae.step', run.info.run_name)}]({ui_path(run.info.experiment_id, run.info.run_id)}){what} — {figures}"


def log_headlines(main: StepRun, runs: dict[str, list[str]]) -> None:
    """The study's headline metrics on the main run, and a description linking each step's run."""
    lines, metrics = [], {}
    for step, run_ids in runs.items():
        keys = HEADLINES.get(step, ())
        best = headline_run(step, run_ids)
        metrics.update({k: best.data.metrics[k] for k in keys if k in best.data.metrics})
        for run_id in run_ids:
            run = get_run(run_id)
            if run.data.tags.get("fmae.mode") == "frozen" and "test_accuracy" in run.data.metrics:
                metrics["frozen_test_accuracy"] = run.data.metrics["test_accuracy"]
            marker = " ← the study's figure" if len(run_ids) > 1 and run_id == best.info.run_id else ""
            lines.append(f"{len(lines) + 1}. {run_line(run, keys)}{marker}")
    main.log_metrics(metrics)
    main.describe("**fmae: the whole study**, one child run per step (newest first "
                   "in the table; this is their order):\n\n" + "\n".join(lines)
                   + "\n\nreport.html (Artifacts) has every step's numbers and figures on one page.")


def log_report(main: StepRun, runs: dict[str, list[str]]) -> None:
    """report.html: each step's key numbers, its figures inline, and where to find its run."""
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for step, run_id in ((step, run_id) for step, run_ids in runs.items() for run_id in run_ids):
            run = get_run(run_id)
            metrics = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
                              for k, v in sorted(run.data.metrics.items()) if not k.startswith("epoch"))
            images = []
            for name in REPORT_FIGURES.get(step, ()):
                path = download_artifact(run_id, name, tmp)
                if path is None:  # a missing figure is left out of the report
                    continue
                data = base64.b64encode(path.read_bytes()).decode()
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
        main.log_artifact(path)
