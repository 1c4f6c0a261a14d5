"""Step `tune`: a Ray Tune search with OptunaSearch (TPE) and ASHA over the CAE, tracked as
one MLflow parent run with a child run per trial; the best encoder goes to the registry.

The story of `run`, top to bottom: open the step's run (data loaded), join or start Ray, set
up the search's folder (or find the interrupted one), build the Tuner, run the trials (closing
every trial's run however it ends), then summarize, log and register what they found.
"""

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from experiments import interrupts, train_cae
from experiments.config import CommonConfig, check_choice, check_named, check_positive
from experiments.errors import UserError
from experiments.step import Step, open_step
from experiments.tracking.server import tracking_uri
from experiments.training import PRECISIONS
from tune import ray_compat, resume, summary
from tune.child_runs import ChildRunStatus, closing_children, drop_lost_trials
from tune.cluster import ray_session, trial_concurrency
from tune.space import START_POINTS, define_space
from tune.timeline import TrialProgress, TrialTimeline, read_timeline
from tune.trainable import TrialSetup, train_trial

STEP = "tune"
REDUCTION_FACTOR = 2  # ASHA keeps the best half at each rung (grace, 2*grace, 4*grace, ...)
# Ray saves the search's state (trials, searcher) on the driver and copies it to storage_path
# every sync_period, 300 s by default: a driver killed outright (SIGKILL, a lost machine) then
# resumes from minutes ago, forgetting trials it had started since, and proposing them again.
STATE_SYNC_SECONDS = 10
# Who ran the search and from what: MLflow sets these on the parent; its trials' runs show them too.
SHARED_TAGS = (
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.source.git.repoURL",
    "mlflow.project.entryPoint",
    "mlflow.project.env",
)


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
    precision: str = "auto"  # trials' training arithmetic: auto (bf16 on CPUs with AMX, else fp32), fp32 or bf16

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "num_samples", "max_epochs", "grace_period", "cpus_per_trial")
        check_positive(self, "max_concurrent", "gpus_per_trial", allow_zero=True)
        if self.grace_period > self.max_epochs:
            raise UserError(
                f"grace_period={self.grace_period} exceeds max_epochs={self.max_epochs}; "
                "ASHA needs grace_period <= max_epochs."
            )
        check_named(self, "register_as", "fmae-cae-encoder")
        check_choice("precision", self.precision, PRECISIONS)
        if self.gpus_per_trial and not self.ray_address and not torch.cuda.is_available():
            raise UserError(
                f"gpus_per_trial={self.gpus_per_trial:g} asks for a GPU, but PyTorch sees none on this "
                "machine, so Ray would wait for ever. Use gpus_per_trial=0 here, or join a cluster "
                "with GPUs through ray_address."
            )


def new_tuner(config: Config, trainable, folder: Path, storage: str, callbacks: list, concurrency: int) -> tune.Tuner:
    """OptunaSearch (TPE, seeded, from START_POINTS) under a concurrency limit, and ASHA."""
    searcher = ray_compat.PruningAwareOptunaSearch(
        space=define_space,
        metric="val_loss",
        mode="min",
        points_to_evaluate=START_POINTS,
        seed=config.seed,
        study_name=folder.name,
        storage=ray_compat.optuna_storage(str(folder / resume.STUDY_FILE)),
        max_epochs=config.max_epochs,
    )
    print(f"Search: {config.num_samples} trials, up to {concurrency} at once.", flush=True)
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=config.max_epochs, grace_period=config.grace_period, reduction_factor=REDUCTION_FACTOR
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            search_alg=ConcurrencyLimiter(searcher, concurrency),
            scheduler=scheduler,
            num_samples=config.num_samples,
            # A finished trial's process takes the next trial: no new process,
            # imports, data fetch or CUDA start (see tune.trainable.prepare_process).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=storage,
            callbacks=[*callbacks, TrialProgress(config.num_samples, concurrency, config.max_epochs)],
            sync_config=tune.SyncConfig(sync_period=STATE_SYNC_SECONDS),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=1 if config.verbose else 0,
        ),
    )


def build_tuner(config: Config, trainable, folder: Path, storage: str, callbacks: list, concurrency: int) -> tune.Tuner:
    """A new search, or (resume) the interrupted one: its finished trials stay finished,
    interrupted ones continue from their last checkpoint, and the searcher (with its Optuna
    study) and the callbacks come back from the saved state."""
    trainable = tune.with_resources(trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    if not config.resume:
        return new_tuner(config, trainable, folder, storage, callbacks, concurrency)
    path = f"{storage.rstrip('/')}/{folder.name}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"the search at {path} left no state to resume from. Start a new search.")
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)


def fit(tuner: tune.Tuner, config: Config, storage: str) -> tune.ResultGrid:
    """tuner.fit(), stopped as gracefully by SIGTERM as by Ctrl-C: Ray Tune catches the first
    SIGINT itself, stops the trials, saves the search's state and returns. Raises Interrupted,
    with the command that resumes the search, when not every trial ran to an end."""
    terms: list[int] = []

    def stop(signum, frame):
        terms.append(signum)
        signal.raise_signal(signal.SIGINT)  # Ray Tune's handler; Python's before Tune installs it

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # before Tune's handler was in place, or a second Ctrl-C
        terms.append(signal.SIGINT)
        results = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    statuses = ray_compat.trial_statuses(results) if results is not None else []
    if terms or len(statuses) < config.num_samples or any(s not in ("TERMINATED", "ERROR") for s in statuses):
        raise interrupts.Interrupted(terms[0] if terms else signal.SIGINT, resume.resume_command(config, storage))
    return results


def trial_setup(config: Config, step: Step) -> TrialSetup:
    base = train_cae.Config(
        data_dir=config.data_dir,
        train_subset=config.train_subset,
        seed=config.seed,
        device=config.device,
        epochs=config.max_epochs,
        precision=config.precision,
    )
    tags = step.run.client.get_run(step.run_id).data.tags
    return TrialSetup(
        cpus_per_trial=config.cpus_per_trial,
        base=base,
        tracking_uri=tracking_uri(),
        experiment_id=step.experiment_id,
        parent_run_id=step.run_id,
        tags={k: v for k, v in tags.items() if k in SHARED_TAGS},
    )


def search_folder(parent, storage: str, interrupted: dict | None) -> Path:
    """fmae's own files of this search (or of the interrupted one), beside Ray's results."""
    name = interrupted["name"] if interrupted else f"fmae-tune-{parent.run_id[:12]}"
    folder = resume.search_folder(storage, name)
    resume.write_search_file(folder, name=name, parent_run_id=parent.run_id, finished=False)
    parent.set_tags(
        {"fmae.ray_results": f"{storage}/{name}", "fmae.optuna_study": f"sqlite:///{folder / resume.STUDY_FILE}"}
    )
    return folder


def prepare_tuner(config: Config, step: Step, folder: Path, storage: str, callbacks) -> tuple:
    """The Tuner, and the callback that closes the trials' runs (check_outage asks it)."""
    concurrency = trial_concurrency(config)
    if not config.resume:  # a resumed search keeps the limit it was saved with
        step.run.log_params({"concurrent_trials": concurrency})
    setup = trial_setup(config, step)
    status = ChildRunStatus(setup.tracking_uri, config.max_epochs)
    trainable = tune.with_parameters(train_trial, data=step.data.pack(), setup=setup)
    timeline = TrialTimeline(folder / resume.TIMELINE_FILE)
    return build_tuner(config, trainable, folder, storage, [status, timeline, *callbacks], concurrency), status


def run(config: Config, callbacks: tuple[tune.Callback, ...] = ()) -> str:
    """The search as one MLflow parent run; callbacks: more Ray Tune callbacks to run with it."""
    storage = resume.storage_root(config.storage_path)
    interrupted = resume.find_interrupted_search(storage) if config.resume else None
    resume_run_id = interrupted and interrupted["parent_run_id"]
    with (
        ray_session(config.ray_address) as cluster,  # Ray starts while the data loads and the run opens
        ray_compat.quiet_console(config.verbose),
        open_step(STEP, config, data_on_device=False, resume_run_id=resume_run_id) as step,
    ):
        cluster.ready()
        folder = search_folder(step.run, storage, interrupted)
        tuner, status = prepare_tuner(config, step, folder, storage, callbacks)
        began = time.perf_counter()
        summary.import_in_background()
        with closing_children(step.experiment_id, step.run_id):
            results = fit(tuner, config, storage)
            resume.check_outage(results, status, config, storage)
        cluster.release()  # Ray shuts down while the summary is made
        drop_lost_trials(step.experiment_id, step.run_id, results)
        timeline = read_timeline(folder / resume.TIMELINE_FILE)
        found = summary.summarize_search(results, config, folder, timeline, time.perf_counter() - began)
        summary.log_search_summary(step.run, found, config)
        resume.write_search_file(folder, finished=True)
        return step.run_id
