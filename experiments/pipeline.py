"""Step `main`: the whole study as one parent run — tune -> finetune -> vae -> analyze as
child runs, each starting from the model the step before registered — and `report.html`."""

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cli import step_module
from experiments.config import CommonConfig, check_choice, config_params, field_help, field_types, parse_flags
from experiments.report import report_page
from experiments.step import open_step
from experiments.tracking.links import ui_path
from experiments.tracking.queries import best_trials, get_run, registered_version
from experiments.tracking.step_run import StepRun

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
    # full: the contract's defaults; each classifier decided on 3 seeds (mean ± std), not on one
    "full": {"tune": {}, "finetune": {"repeats": 3}, "vae": {}, "analyze": {}},
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


@dataclass(frozen=True)
class Config(CommonConfig):
    profile: str = "quick"  # quick (minutes, subsets) or full (the contract's defaults, full data)
    top_encoders: int = -1  # also fine-tune (full) the search's best N distinct architectures; -1 = the profile's
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
        values = parse_flags(
            {**steps, **own}, argv, prog, {**help_, **field_help(cls)}, unknown_hint=": no step has that parameter"
        )
        config = cls(
            **{k: v for k, v in values.items() if k in own},
            overrides=tuple((k, v) for k, v in values.items() if k not in own),
        )
        for step in ORDER:
            step_config(config, step)
        return config


def step_config(config: Config, step: str, chained: dict[str, Any] | None = None):
    """step's config in this study: the profile's values, main's common flags, models this run
    registered (chained), then what the user gave main; checked by the step's own Config."""
    cls = step_module(step).Config
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {
        **PROFILES[config.profile].get(step, {}),
        **{k: getattr(config, k) for k in ("data_dir", "seed", "device")},
        **({"train_subset": config.train_subset} if config.train_subset else {}),
        **(chained or {}),
        **dict(config.overrides),
    }
    return cls(**{k: v for k, v in values.items() if k in fields})


def chain_models(registered: dict[str, str], cls) -> dict[str, str]:
    """A later step's model URIs that default to a name@champion this run registered a version
    of: pinned to that version, so the study uses its own models even if they lost the alias."""
    chained = {}
    for f in dataclasses.fields(cls):
        if isinstance(f.default, str) and f.default.startswith("models:/") and "@" in f.default:
            name = f.default[len("models:/") :].split("@", 1)[0]
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
    trials = best_trials(tune_run_id, config.top_encoders)
    return [
        step_config(config, "finetune", {"model_uri": f"runs:/{trial.info.run_id}/encoder", "mode": "full"})
        for trial in trials
    ]


def headline_run(step: str, run_ids: list[str]):
    """The run whose numbers stand for the step: its only one, or the one with the highest
    BEST_BY metric (finetune: the best classifier, the one its registered champion came from)."""
    runs = [get_run(run_id) for run_id in run_ids]
    key = BEST_BY.get(step)
    return max(runs, key=lambda r: r.data.metrics.get(key, float("-inf"))) if key else runs[-1]


def figure(metrics: dict[str, float], key: str) -> str:
    """A headline figure, with its spread over seeds when the step repeated (`0.9123 ± 0.0021`)."""
    value = f"{metrics[key]:.4g}"
    return f"{value} ± {metrics[key + '_std']:.2g}" if key + "_std" in metrics else value


def run_line(run, metrics: tuple[str, ...]) -> str:
    mode = run.data.tags.get("fmae.mode")
    source = run.data.tags.get("fmae.source_trial") or run.data.tags.get("fmae.source_model")
    what = f" ({mode}{' from ' + source if source else ''})" if mode else ""
    figures = ", ".join(f"{k} **{figure(run.data.metrics, k)}**" for k in metrics if k in run.data.metrics)
    link = f"[{run.data.tags.get('fmae.step', run.info.run_name)}]({ui_path(run.info.experiment_id, run.info.run_id)})"
    return f"{link}{what} — {figures}"


def log_headlines(main: StepRun, runs: dict[str, list[str]]) -> None:
    """The study's headline metrics on the main run, and a description linking each step's run."""
    lines, metrics = [], {}
    for step, run_ids in runs.items():
        keys = HEADLINES.get(step, ())
        best = headline_run(step, run_ids)
        metrics.update(
            {k: best.data.metrics[k] for k in keys + tuple(f"{k}_std" for k in keys) if k in best.data.metrics}
        )
        for run_id in run_ids:
            run = get_run(run_id)
            if run.data.tags.get("fmae.mode") == "frozen" and "test_accuracy" in run.data.metrics:
                metrics["frozen_test_accuracy"] = run.data.metrics["test_accuracy"]
            marker = " ← the study's figure" if len(run_ids) > 1 and run_id == best.info.run_id else ""
            lines.append(f"{len(lines) + 1}. {run_line(run, keys)}{marker}")
    main.log_metrics(metrics)
    main.describe(
        "**fmae: the whole study**, one child run per step (newest first "
        "in the table; this is their order):\n\n"
        + "\n".join(lines)
        + "\n\nreport.html (Artifacts) has every step's numbers and figures on one page."
    )


def log_report(main: StepRun, runs: dict[str, list[str]]) -> None:
    """report.html: each step's results and figures on one page, linked to its runs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "report.html")
        path.write_text(report_page(runs, tmp))
        main.log_artifact(path)
