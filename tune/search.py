"""Step `tune`: a Ray Tune search with OptunaSearch (TPE) and ASHA over the CAE, tracked as
one MLflow parent run with a child run per trial; the best encoder goes to the registry."""

import dataclasses
import json
import logging
import os
import shlex
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from experiments import interrupts, train_cae
from experiments.config import CommonConfig, check_named, check_positive
from experiments.data import FashionMNIST
from experiments.errors import UserError
from experiments.step import open_step
from experiments.tracking import StepRun, TrackingUnavailable, tracking_reachable, tracking_uri, ui_path
from fmae_models import CAE, CAEConfig
from tune import search_plots
from tune.child_runs import ChildRunStatus, close_open_children, drop_lost_trials
from tune.optuna_search import PruningAwareOptunaSearch, optuna_storage
from tune.space import SEARCHED, START_POINTS, search_space
from tune.timeline import TrialProgress, TrialTimeline, read_timeline, timeline_metrics
from tune.trainable import TrialSetup, load_checkpoint, stopped_early, train_trial

STEP = "tune"
ABOUT = ("The encoder of fmae's convolutional autoencoder, the best of a `fmae tune` search. Input: float tensor "
         "(N, 1, 28, 28) in [0, 1]; output: (N, encoded_space_dim) codes. `fmae finetune` starts from it.")
REDUCTION_FACTOR = 2  # ASHA keeps the best half at each rung (grace, 2*grace, 4*grace, ...)
STUDY_FILE = "optuna.db"
SEARCH_FILE = "fmae_search.json"  # which MLflow parent run a Ray experiment belongs to, for resume
TIMELINE_FILE = "timeline.json"  # when each trial launched, started, trained and ended
# Ray saves the search's state (trials, searcher) on the driver and copies it to storage_path
# every sync_period, 300 s by default: a driver killed outright (SIGKILL, a lost machine) then
# resumes from minutes ago, forgetting trials it had started since, and proposing them again.
STATE_SYNC_SECONDS = 10
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class Config(CommonConfig):
    num_samples: int = 20  # trials, the seed's first being the seed's best configuration
    max_epochs: int = 20  # epochs of a trial the scheduler lets run to the end
    grace_period: int = 3  # epochs every trial gets before ASHA may stop it
    max_concurrent: int = 0  # trials at once; 0 = as many as the cluster's resources allow
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial
    gpus_per_trial: float = 0.0  # GPUs per trial; fractions share one (0.25 = four per GPU)
    ray_address: str = ""  # "" starts Ray here; "auto", "host:port" or "ray://host:10001" join a cluster
    storage_path: str = ""  # Ray's results and checkpoints ("" = ~/ray_results); shared storage on a cluster
    resume: bool = False  # continue the interrupted search kept under storage_path
    register_as: str = "fmae-cae-encoder"  # registered model that receives the best encoder
    verbose: bool = False  # Ray's trial table every 30 s as well as fmae's line per finished trial

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "num_samples", "max_epochs", "grace_period", "cpus_per_trial")
        check_positive(self, "max_concurrent", "gpus_per_trial", allow_zero=True)
        if self.grace_period > self.max_epochs:
            raise UserError(f"grace_period={self.grace_period} exceeds max_epochs={self.max_epochs}; "
                            "ASHA needs grace_period <= max_epochs.")
        check_named(self, "register_as", "fmae-cae-encoder")
        if self.gpus_per_trial and not self.ray_address and not torch.cuda.is_available():
            raise UserError(f"gpus_per_trial={self.gpus_per_trial:g} asks for a GPU, but PyTorch sees none on this "
                            "machine, so Ray would wait for ever. Use gpus_per_trial=0 here, or join a cluster "
                            "with GPUs through ray_address.")


def storage_root(config: Config) -> str:
    if not config.storage_path:
        return str(Path("~/ray_results").expanduser())
    if "://" in config.storage_path:  # s3://, gs://, ... : Ray's own business
        return config.storage_path
    return str(Path(config.storage_path).expanduser().resolve())


def study_path(root: str, name: str) -> Path:
    """The Optuna study beside Ray's results (on local or NFS storage), else in ~/ray_results."""
    folder = study_root(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder / STUDY_FILE


def study_root(root: str) -> Path:
    return Path(root) if "://" not in root else Path("~/ray_results").expanduser()


def find_interrupted_search(root: str) -> dict:
    """The newest search under root that did not finish, for resume=true."""
    candidates = sorted(study_root(root).glob(f"fmae-tune-*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime)
    unfinished = [json.loads(p.read_text()) for p in candidates if not json.loads(p.read_text())["finished"]]
    if not unfinished:
        raise UserError(f"resume=true found no interrupted search under storage_path={root!r}. Pass the "
                        "storage_path the search ran with, or start a new search with resume=false.")
    return unfinished[-1]


def write_search_file(folder: Path, **fields) -> None:
    path = folder / SEARCH_FILE
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta.update(fields)
    path.write_text(json.dumps(meta))


def connect_ray(config: Config) -> bool:
    """Join the cluster at ray_address, or start Ray here. Returns whether we started it."""
    if ray.is_initialized():
        return False
    if not config.ray_address:
        # A Ray started here keeps token authentication, Ray's default, without warning that it does.
        # (Setting RAY_AUTH_MODE=token here instead breaks ray.init: its client reads the mode at import.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    env_vars = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    # Trials on other nodes log through the same authenticated server: its credentials travel in
    # Ray's runtime environment, never as a run's param or tag.
    env_vars.update({k: os.environ[k] for k in CREDENTIALS if k in os.environ})
    try:
        # "local" starts a fresh Ray here even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would silently join it).
        ray.init(address=config.ray_address or "local", include_dashboard=False, configure_logging=True,
                 logging_level="warning", runtime_env={"env_vars": env_vars})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"could not reach the Ray cluster at ray_address={config.ray_address!r} ({exc}). "
                        "Start it with `ray start --head`, check the address, or leave ray_address empty "
                        "to run Ray on this machine.") from None
    return True


def trial_concurrency(config: Config) -> int:
    """How many trials run at once: max_concurrent, else as many as the cluster's CPUs and GPUs
    hold, never more than num_samples.

    Ray Tune keeps only one trial pending by default when a searcher proposes them, so trials
    would start one after another, each waiting for the last one's process to come up. A
    ConcurrencyLimiter sets the pending limit to its own, and starts them together.
    """
    if config.max_concurrent:
        return min(config.max_concurrent, config.num_samples)
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) / config.cpus_per_trial + 1e-9)
    if config.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0) / config.gpus_per_trial + 1e-9))
    if slots < 1:
        have = f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
        raise UserError(f"the Ray cluster has {have}, too few for one trial with cpus_per_trial="
                        f"{config.cpus_per_trial:g} and gpus_per_trial={config.gpus_per_trial:g}; Ray would wait "
                        "for ever. Lower them (gpus_per_trial=0 trains on the CPU), or add nodes and pass "
                        "max_concurrent.")
    return min(slots, config.num_samples)


def build_tuner(config: Config, trainable, name: str, storage: str, study: Path, callbacks, parent: StepRun) -> tune.Tuner:
    if not config.verbose:
        # Ray's new console output prints a setup box and result paths even at verbose=0; its
        # older one prints nothing at 0. The "Tuner.restore" hint on an interrupt is Ray's API,
        # not a command a user runs: fmae prints its own resume command.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # With a tracking server, MLflow prints two "View run/experiment" lines as each trial's run
        # ends (into its GenAI view); fmae's one line per trial, and the step's own link, say it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    trainable = tune.with_resources(trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    path = f"{storage.rstrip('/')}/{name}"
    if config.resume:
        if not tune.Tuner.can_restore(path):
            raise UserError(f"the search at {path} left no state to resume from. Start a new search.")
        # Finished trials stay finished; interrupted ones continue from their last checkpoint;
        # the searcher (and its Optuna study) and the callbacks come back from the saved state.
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=search_space())
    searcher = PruningAwareOptunaSearch(
        points_to_evaluate=START_POINTS,
        seed=config.seed,
        study_name=name,
        storage=optuna_storage(str(study)),
        max_epochs=config.max_epochs,
    )
    concurrency = trial_concurrency(config)
    parent.log_params({"concurrent_trials": concurrency})
    print(f"Search: {config.num_samples} trials, up to {concurrency} at once.", flush=True)
    search_alg = ConcurrencyLimiter(searcher, concurrency)
    callbacks = [*callbacks, TrialProgress(config.num_samples, concurrency, config.max_epochs)]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=config.max_epochs, grace_period=config.grace_period,
                              reduction_factor=REDUCTION_FACTOR)
    return tune.Tuner(
        trainable,
        param_space=search_space(),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=config.num_samples,
                                    # A finished trial's process takes the next trial: no new process,
                                    # imports, data fetch or CUDA start (see tune.trainable.unpacked_data).
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            sync_config=tune.SyncConfig(sync_period=STATE_SYNC_SECONDS),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                                    checkpoint_score_order="min"),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=1 if config.verbose else 0,
        ),
    )


def fit(tuner: tune.Tuner, num_samples: int) -> tune.ResultGrid:
    """tuner.fit(), stopped as gracefully by SIGTERM as by Ctrl-C: Ray Tune catches the first
    SIGINT itself, stops the trials, saves the search's state and returns. Raises Interrupted
    when the search did not run all its trials to an end."""
    terms: list[int] = []

    def stop(signum, frame):
        terms.append(signum)
        os.kill(os.getpid(), signal.SIGINT)  # Ray Tune's handler; Python's before Tune installs it

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # before Tune's handler was in place, or a second Ctrl-C
        raise interrupts.Interrupted(terms[0] if terms else signal.SIGINT) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    trials = results._experiment_analysis.trials  # Ray keeps their statuses only there
    if terms or len(trials) < num_samples or any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        raise interrupts.Interrupted(terms[0] if terms else signal.SIGINT)
    return results


# Who ran the search and from what: MLflow sets these on the parent; its trials' runs show them too.
SHARED_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
               "mlflow.source.git.repoURL", "mlflow.project.entryPoint", "mlflow.project.env")


def check_outage(results: tune.ResultGrid, status: ChildRunStatus, config: Config, storage: str) -> None:
    """After the search: if trials failed because the tracking server stopped answering for longer
    than MLflow's client retries, or it does not answer now, say so and how to resume (their
    checkpoints are kept; resume=true reruns them in the same runs)."""
    lost = sum(TrackingUnavailable.__name__ in str(result.error) for result in results if result.error)
    reachable = tracking_reachable()
    if reachable:
        status.flush()
    if lost or not reachable:
        raise UserError(
            f"{lost} of {len(results)} trials failed because the MLflow tracking server at {tracking_uri()} stopped "
            f"answering for longer than its client retries (about 2 minutes){'' if reachable else ', and it still does not answer'}. "
            f"Their checkpoints are kept. Once the server answers, resume the search: {resume_command(config, storage)}")


def resume_command(config: Config, storage: str) -> str:
    """The command that continues this search: its flags as given, resume=true, and the store."""
    defaults = Config()
    flags = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
             if getattr(config, f.name) != getattr(defaults, f.name)}
    flags.update(storage_path=storage, resume="true")
    args = " ".join(f"--{k} {shlex.quote(str(v).lower() if isinstance(v, bool) else str(v))}" for k, v in flags.items())
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri())} fmae tune {args}"


def summarize_trials(results: tune.ResultGrid, max_epochs: int, timeline: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per trial for search_results.csv (with its timeline, seconds since the search
    began), and the val_loss curves of unstopped trials."""
    rows, curves = [], {}
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            epochs, best, last, run_id = 0, float("nan"), float("nan"), None
        else:
            history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
            epochs, best, last = int(history["epoch"].max()), history["val_loss"].min(), history["val_loss"].iloc[-1]
            run_id = history["mlflow_run_id"].iloc[-1]
        diverged = bool((result.metrics or {}).get("diverged"))
        status = "failed" if result.error or diverged else (
            "pruned" if stopped_early({"epoch": epochs}, max_epochs) else "finished")
        trial = (result.metrics or {}).get("trial_id", f"#{len(rows)}")
        times = (timeline or {}).get(trial, {})
        rows.append({"trial_id": trial, **(result.config or {}), "status": status, "pruned": status == "pruned",
                     "epochs": epochs, "best_val_loss": best, "last_val_loss": last, "mlflow_run_id": run_id,
                     **{f"{k}_s": round(times[k], 2) for k in TIMELINE_COLUMNS if k in times}})
        if status == "finished":
            name = (result.metrics or {}).get("mlflow_run_name") or trial  # as the MLflow UI names it
            curves[name] = history.set_index("epoch")["val_loss"]
    return pd.DataFrame(rows), curves


TIMELINE_COLUMNS = ("created", "launched", "entered", "ready", "first_epoch", "last_epoch", "ended")


def param_importances(study_name: str, study: Path) -> tuple[dict, str]:
    try:
        loaded = optuna.load_study(study_name=study_name, storage=optuna_storage(str(study)))
        return optuna.importance.get_param_importances(loaded), ""
    except (RuntimeError, ValueError) as exc:
        return {}, f"importances need more finished trials ({exc})"


def log_search_summary(parent: StepRun, results: tune.ResultGrid, config: Config, data: FashionMNIST, name: str,
                       study: Path, search_seconds: float) -> None:
    """Everything the parent run holds after the search, and the best encoder registered."""
    timeline = read_timeline(study.parent / TIMELINE_FILE)
    table, curves = summarize_trials(results, config.max_epochs, timeline)
    finished = table[table["status"] != "failed"]
    if finished.empty:
        raise UserError(f"all {len(table)} trials failed; the first error was: {results.errors[0]}. "
                        "Run with FMAE_DEBUG=1 and look at the trial logs under storage_path.")
    best = results.get_best_result(metric="val_loss", mode="min", scope="all")
    state = load_checkpoint(best.get_best_checkpoint(metric="val_loss", mode="min"))
    model = CAE(CAEConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model = model.to(config.torch_device)
    test = data.test.to(config.torch_device)
    best_val = float(finished["best_val_loss"].min())
    best_test = train_cae.test_loss(model, test)
    best_config = {k: best.config[k] for k in SEARCHED}

    parent.log_params({f"best_{k}": v for k, v in best_config.items()})
    parent.log_metrics({"best_val_loss": best_val, "best_test_loss": best_test,
                        "trials_finished": int((table["status"] == "finished").sum()),
                        "trials_pruned": int(table["pruned"].sum()),
                        "trials_failed": int((table["status"] == "failed").sum()),
                        **timeline_metrics(timeline, search_seconds)})
    importances, note = param_importances(name, study)
    parent.log_figures({
        "parallel_coordinates.png": search_plots.plot_parallel_coordinates(finished, list(SEARCHED)),
        "learning_curves.png": search_plots.plot_learning_curves(curves, "val_loss of the trials that ran to the end"),
        "param_importances.png": search_plots.plot_param_importances(importances, note),
    })
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp, "search_results.csv")
        table.to_csv(csv, index=False)
        parent.log_artifact(csv)

    info = train_cae.log_autoencoder(parent, model, test, config.seed)  # also reconstructions.png
    trial_run = best.metrics.get("mlflow_run_id", "")
    if trial_run:
        StepRun(trial_run).set_tags({"fmae.best_trial": "true"})
    parent.register(info.model_uri, config.register_as, ("test_loss", best_test), higher_is_better=False,
                    tags={"val_loss": best_val, "fmae.trial_run_id": trial_run, **best_config}, about=ABOUT)
    counts = table["status"].value_counts()
    best_link = f"[{best.metrics.get('mlflow_run_name', trial_run)}]({ui_path(parent.experiment_id, trial_run)})" \
        if trial_run else "its trial"
    parent.describe(
        f"**Search of {len(table)} trials** (Ray Tune + Optuna TPE, ASHA stopping): {counts.get('finished', 0)} ran "
        f"to the end, {counts.get('pruned', 0)} were stopped early, {counts.get('failed', 0)} failed. Expand this "
        f"run in the table to see them as child runs.\n\nBest: {best_link}, val_loss **{best_val:.5f}**, "
        f"test_loss **{best_test:.5f}**; its encoder is registered as `{config.register_as}`.\n\n"
        "Figures (Artifacts): parallel_coordinates.png, learning_curves.png, param_importances.png, "
        "reconstructions.png; every trial in search_results.csv.")
    print(f"best trial: val_loss {best_val:.5f}  test_loss {best_test:.5f}  "
          + "  ".join(f"{k}={v}" for k, v in best_config.items()))
    print(f"trials: {len(table)} ({(table['status'] == 'finished').sum()} finished, {table['pruned'].sum()} stopped "
          f"early, {(table['status'] == 'failed').sum()} failed); Optuna study: sqlite:///{study}")


def run(config: Config, callbacks: tuple[tune.Callback, ...] = ()) -> str:
    """The search as one MLflow parent run; callbacks: more Ray Tune callbacks to run with it."""
    storage = storage_root(config)
    interrupted = find_interrupted_search(storage) if config.resume else None
    with open_step(STEP, config, data_on_device=False, resume_run_id=interrupted and interrupted["parent_run_id"]) as step:
        parent = step.run
        started_ray = connect_ray(config)
        try:
            name = interrupted["name"] if interrupted else f"fmae-tune-{parent.run_id[:12]}"
            study = study_path(storage, name)
            write_search_file(study.parent, name=name, parent_run_id=parent.run_id, finished=False)
            parent.set_tags({"fmae.ray_results": f"{storage}/{name}", "fmae.optuna_study": f"sqlite:///{study}"})
            setup = TrialSetup(
                base=train_cae.Config(data_dir=config.data_dir, train_subset=config.train_subset, seed=config.seed,
                                      device=config.device, epochs=config.max_epochs),
                tracking_uri=tracking_uri(),
                experiment_id=step.experiment_id,
                parent_run_id=parent.run_id,
                tags={k: v for k, v in parent.client.get_run(parent.run_id).data.tags.items() if k in SHARED_TAGS},
            )
            trainable = tune.with_parameters(train_trial, data=step.data.pack(), setup=setup)
            status = ChildRunStatus(setup.tracking_uri, config.max_epochs)
            tuner = build_tuner(config, trainable, name, storage, study,
                                [status, TrialTimeline(study.parent / TIMELINE_FILE), *callbacks], parent)
            began = time.perf_counter()
            try:
                results = fit(tuner, config.num_samples)
            except KeyboardInterrupt as exc:
                with interrupts.deferred():
                    close_open_children(MlflowClient(), step.experiment_id, parent.run_id, "KILLED")
                raise interrupts.Interrupted(interrupts.signal_number(exc), resume_command(config, storage)) from None
            except Exception:  # Ray Tune gave up (e.g. a trial's process killed for memory): no trial stays RUNNING
                with interrupts.deferred():
                    if tracking_reachable():
                        close_open_children(MlflowClient(), step.experiment_id, parent.run_id)
                raise
            check_outage(results, status, config, storage)
            close_open_children(MlflowClient(), step.experiment_id, parent.run_id)
            drop_lost_trials(MlflowClient(), step.experiment_id, parent.run_id, results)
            log_search_summary(parent, results, config, step.data, name, study, time.perf_counter() - began)
            write_search_file(study.parent, finished=True)
        finally:
            if started_ray:
                with interrupts.deferred():  # a second Ctrl-C must not leave Ray's processes behind
                    ray.shutdown()
        return parent.run_id
