"""MLflow at the edges: which run a step writes to, models that rebuild as modules, the
registry's champion rule, and the link a user opens afterwards."""

import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
import time
import types
import warnings
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from torch import nn

from experiments import interrupts
from experiments.data import FashionMNIST, pack_split
from experiments.errors import UserError
from experiments.training import flush_denormals_
from fmae_models import CAE, VAE, CAEConfig, Classifier, Encoder, VAEConfig
from fmae_models.vae import VAEMeanEncoder

DEFAULT_EXPERIMENT = "fmae"
CHAMPION = "champion"
RECIPE_FILE = "fmae_model.json"  # what to build: {"kind": ..., "config": {...}}
WEIGHTS_FILE = "state_dict.pt"  # its weights, read back with weights_only=True
UI_BASE = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,4}")  # MLflow's own run names: delightful-mule-836


def build_module(kind: str, config: dict[str, Any], classes: tuple[str, str] = ("", "")) -> nn.Module:
    """An untrained module of one of the kinds fmae logs; of any other kind, the fmae_models
    class recorded with it, built from its recorded config class: Model(ModelConfig(**config))."""
    if kind == "cae":
        return CAE(CAEConfig(**config))
    if kind == "encoder":
        return Encoder(CAEConfig(**config))
    if kind == "classifier":
        return Classifier(Encoder(CAEConfig(**config)), config["encoded_space_dim"])
    if kind == "vae":
        return VAE(VAEConfig(**config))
    if kind == "vae_encoder":
        return VAEMeanEncoder(VAE(VAEConfig(**config)))
    if all(name.startswith("fmae_models.") for name in classes):  # only our own classes
        model_cls, config_cls = (getattr(importlib.import_module(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1])
                                 for name in classes)
        return model_cls(config_cls(**config))
    raise ValueError(f"unknown model kind {kind!r}")


# --- tracking server and runs ------------------------------------------------------------

def tracking_uri() -> str:
    """MLflow's own choice, with a relative sqlite/file path made absolute so trial processes
    (which Ray starts in other folders) write to the same store."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of HTTP retries, when a tracking server is down."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"the MLflow tracking server at {uri} did not answer ({reason}). Start it "
            "(mlflow server --host ... --port ...), fix MLFLOW_TRACKING_URI, or unset it to use "
            "the local store mlflow.db."
        ) from None


class TrackingUnavailable(RuntimeError):
    """Raised in a trial whose tracking server stopped answering for longer than MLflow's client
    retries (about two minutes): the trial fails, keeps its checkpoint, and resumes later."""


def tracking_reachable(uri: str | None = None) -> bool:
    try:
        check_tracking_server(uri)
        return True
    except UserError:
        return False


def choose_experiment() -> None:
    """`mlflow run`'s experiment if it started us, else $MLFLOW_EXPERIMENT_NAME/_ID, else fmae.

    Created here, not by `mlflow.set_experiment` alone: when two processes create the same new
    experiment at once, MLflow 3.17's set_experiment returns to the one that lost the race
    without making the experiment active, and its runs land in Default (on a store `mlflow ui`
    created, one whose artifacts only a server can take, so its first artifact fails)."""
    if os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = MlflowClient()
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process made it first
                raise
    mlflow.set_experiment(name)  # it exists now: made active (or refused, if deleted)


EXPERIMENT_DESCRIPTION = """**fmae**: a convolutional autoencoder (CAE) on FashionMNIST, tuned with Ray Tune and
Optuna, its encoder fine-tuned into a classifier, a VAE beside it, and both latent spaces compared.

- Runs named **main** hold a whole study: its headline metrics, a description linking each step, and report.html.
- **tune** runs are searches; each trial is a child run: expand the `main` and `tune` rows (in the chart view
  too) to see the trials and their `val_loss` curves. Trials tagged `fmae.pruned=true` were
  stopped early by the scheduler: the search working, not a failure. The best one is tagged `fmae.best_trial`.
- Metric names mean one thing: `train_loss`/`val_loss` are the CAE's per-pixel MSE, `train_elbo`/`val_elbo` the
  VAE's nats per image, `train_nll`/`val_accuracy` the classifier's; `system/*` is CPU, memory and GPU use.
- Models: the Models tab holds fmae-cae-encoder, fmae-classifier and fmae-vae, the best of each under alias champion.
"""


def describe_experiment(experiment_id: str) -> None:
    """The experiment's description (its page's About box), written once, never over a user's."""
    client = MlflowClient()
    if "mlflow.note.content" not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, "mlflow.note.content", EXPERIMENT_DESCRIPTION)


def system_metrics_on() -> bool:
    """MLflow's system metrics (CPU, memory, disk, network; GPU through nvidia-ml-py) for every
    step and trial, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false says otherwise."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() not in ("false", "0")


def monitor_system_metrics(run_id: str, uri: str):
    """Sample system metrics into run_id (a trial's run, which fmae creates itself) until it ends:
    the sampler stops at the first sample after the run is no longer RUNNING. None when off."""
    if not system_metrics_on():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


@contextlib.contextmanager
def start_step_run(step: str, params: dict[str, Any], resume_run_id: str | None = None) -> Iterator[Run]:
    """The run a step writes to: the one `mlflow run` made, a child of an active run (the
    `main` pipeline), a new one, or (resume_run_id) an interrupted run to continue.
    Ends FAILED on any error, KILLED on Ctrl-C."""
    check_tracking_server()
    nested = mlflow.active_run() is not None
    if resume_run_id:
        launched = os.environ.pop("MLFLOW_RUN_ID", None)
        if launched and launched != resume_run_id:  # `mlflow run` made a run we won't use
            client = MlflowClient()
            client.set_tag(launched, "fmae.resumed_run", resume_run_id)
            client.set_terminated(launched, "FINISHED")
            print(f"This run continues the interrupted run {resume_run_id}: {ui_link(resume_run_id)}")
        active = mlflow.start_run(run_id=resume_run_id, nested=nested, log_system_metrics=system_metrics_on())
    else:
        if not nested:
            choose_experiment()
        active = mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else step, nested=nested,
                                  log_system_metrics=system_metrics_on())
    try:
        if not nested:
            describe_experiment(active.info.experiment_id)
        mlflow.set_tag("fmae.step", step)
        if GENERATED_NAME.fullmatch(mlflow.active_run().info.run_name or ""):  # `mlflow run` named it at random
            mlflow.set_tag("mlflow.runName", step)
        log_new_params(params)
        yield mlflow.get_run(active.info.run_id)
    except KeyboardInterrupt:
        with interrupts.deferred():
            end_run_if_reachable("KILLED")
        raise
    except BaseException:
        with interrupts.deferred():
            end_run_if_reachable("FAILED")
        raise
    mlflow.end_run("FINISHED")
    print_run_link(active.info.run_id)


def end_run_if_reachable(status: str) -> None:
    """End the active run, unless its tracking server is down (a step failing for that reason
    would otherwise wait minutes on retries, then fail again): that run stays RUNNING, and
    `resume=true` continues it."""
    if tracking_reachable():
        mlflow.end_run(status)
    else:
        print(f"The tracking server at {tracking_uri()} does not answer, so run "
              f"{mlflow.active_run().info.run_id} could not be marked {status}.", file=sys.stderr, flush=True)


# Run by keep_killed_under_mlflow_run in a process of its own: until the `mlflow run` wrapper has
# marked the run (at most `timeout` s), then back to KILLED if it made it FAILED.
_KEEP_KILLED = """
import sys, time
from mlflow.tracking import MlflowClient
run_id, timeout = sys.argv[1], float(sys.argv[2])
client, deadline = MlflowClient(), time.time() + timeout
while time.time() < deadline:
    if client.get_run(run_id).info.status == "FAILED":
        client.set_terminated(run_id, "KILLED")
        break
    time.sleep(0.5)
"""


def keep_killed_under_mlflow_run(run_id: str, timeout: float = 60) -> None:
    """An interrupted step under `mlflow run` ends its run KILLED, but MLflow 3.17's wrapper then
    marks it FAILED anyway (its _maybe_set_run_terminated compares the run's status string with
    RunStatus numbers, so no status counts as final). A detached process waits for that and puts
    KILLED back once the wrapper has exited."""
    import subprocess

    subprocess.Popen([sys.executable, "-c", _KEEP_KILLED, run_id, str(timeout)], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()})


def describe_rejected_launch(message: str) -> None:
    """`mlflow run` creates its run before the step reads its parameters; when the step rejects
    them, that run (which MLflow then marks FAILED) says why in its description."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        check_tracking_server()
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":  # the step never opened it
            client.set_tag(run_id, "mlflow.note.content", f"**fmae did not start**: {message}")
            client.set_terminated(run_id, "FAILED")
    except (UserError, MlflowException, OSError):  # the message on the console is what matters
        pass


def log_new_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log params the run lacks. `mlflow run` has already logged the entry point's
    parameters as the user spelled them (1e-3 vs 0.001); those stay as they are."""
    client = MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    present = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)) for k, v in params.items() if k not in present]
    if fresh:
        client.log_batch(run_id, params=fresh)


def log_dataset(data: FashionMNIST) -> None:
    """Where the data came from (param data_source), and its three splits as the run's dataset
    inputs, which the MLflow UI lists in its Datasets column and on each run's page."""
    mlflow.log_param("data_source", data.source)
    for context, split in (("training", data.train), ("validation", data.val), ("test", data.test)):
        packed = pack_split(split)
        with warnings.catch_warnings():  # a folder path "can be interpreted in multiple ways": any is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(packed.images, targets=packed.labels, source=data.source,
                                             name=f"fashion-mnist-{context}")
        mlflow.log_input(dataset, context=context)


def ui_link(run_id: str) -> str:
    """The run in the MLflow UI's training view."""
    run = MlflowClient().get_run(run_id)
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_BASE
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning"


def print_run_link(run_id: str) -> None:
    uri = tracking_uri()
    print(f"MLflow tracking URI: {uri}")
    if not uri.startswith(("http://", "https://")):
        print(f"Browse it with: mlflow ui --backend-store-uri {uri}")
    print(f"Run: {ui_link(run_id)}", flush=True)


def log_figures(figures: dict, run_id: str | None = None) -> None:
    """Log each matplotlib figure as a PNG artifact (to run_id, else the active run) and close it."""
    import matplotlib.pyplot as plt

    client = MlflowClient()
    for name, figure in figures.items():
        if run_id is None:
            mlflow.log_figure(figure, name)
        else:
            client.log_figure(run_id, figure, name)
        plt.close(figure)


class StepRun:
    """One MLflow run as a step (or a search trial) writes to it: metrics per epoch and at the
    end, params, tags, tables, figures and models. Steps reach MLflow only through this."""

    ECHOED_EPOCHS = 20  # a long run's console shows about this many epoch lines; MLflow holds them all

    def __init__(self, run_id: str, echo: bool = True, epochs: int = 0):
        self.run_id, self.echo = run_id, echo
        self.echo_every = max(1, -(-epochs // self.ECHOED_EPOCHS))  # ceil: 100 epochs -> every 5th
        self.client = MlflowClient()

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One batch; echoed as one line (an epoch's: `epoch   3  train_loss ...`)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])
        if self.echo and (step is None or step == 1 or step % self.echo_every == 0):
            prefix = f"epoch {step:3d}  " if step is not None else ""
            suffix = f"  (one epoch in {self.echo_every} echoed here; MLflow holds them all)" if step == 1 and self.echo_every > 1 else ""
            print(prefix + "  ".join(f"{k} {v:.5g}" for k, v in metrics.items()) + suffix, flush=True)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The training loop's report(epoch, metrics): `step` = epoch, 1-based."""
        self.log_metrics(metrics, step=epoch)

    def logged_epochs(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_params(self, params: dict[str, Any]) -> None:
        log_new_params(params, self.run_id)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def describe(self, markdown: str) -> None:
        """The run's description in the UI (its Overview's Description box)."""
        self.client.set_tag(self.run_id, "mlflow.note.content", markdown)

    def log_table(self, table: dict[str, list], name: str) -> None:
        self.client.log_table(self.run_id, table, name)

    def log_dict(self, values: dict, name: str) -> None:
        self.client.log_dict(self.run_id, values, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_figures(self, figures: dict) -> None:
        log_figures(figures, run_id=self.run_id)

    def log_model(self, model: nn.Module, name: str, kind: str, config: dict[str, Any]):
        return log_module(model, name, kind, config, run_id=self.run_id)

    def register(self, model_uri: str, name: str, score: tuple[str, float], higher_is_better: bool,
                 tags: dict[str, Any] | None = None, about: str = ""):
        return register_model(model_uri, name, self.run_id, score, higher_is_better, tags, about)


# --- models --------------------------------------------------------------------------------

def example_images(n: int = 4) -> np.ndarray:
    """A fixed input example (n, 1, 28, 28) float32; n > 1 keeps the exported batch dim dynamic."""
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def save_cpu_pytorch_model(path: str, mlflow_model, **kwargs) -> None:
    """mlflow.pytorch.save_model, with the pyfunc flavour pinned to the CPU.

    A pt2 model keeps the device it was exported on, and MLflow refuses to move it; but its
    pyfunc loader picks cuda wherever CUDA is present, so on a GPU machine
    `mlflow.pyfunc.load_model` failed ("exported on cpu, can't be loaded on cuda"), and so did
    the serving check every log_model runs. fmae exports on the CPU, so the CPU it is.
    (`model_config={"device": ...}` at load time still overrides it.)
    """
    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["config"] = {"device": "cpu"}
    mlflow_model.save(os.path.join(path, "MLmodel"))


# mlflow.pytorch for Model.log, saving through save_cpu_pytorch_model; its name is the flavour's.
CPU_PYTORCH_FLAVOR = types.SimpleNamespace(__name__=mlflow.pytorch.__name__, save_model=save_cpu_pytorch_model)


def log_module(model: nn.Module, name: str, kind: str, config: dict[str, Any], run_id: str | None = None):
    """Log model as an MLflow pytorch model (pt2: safe to load, callable on any batch) plus
    a recipe and a state dict that rebuild it as a trainable fmae module (see load_module)."""
    model = model.to("cpu").eval()
    flush_denormals_(model)  # whoever loads it computes at full speed
    x = example_images()
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    outputs = y[0] if isinstance(y, tuple) else y  # the VAE's first output is its reconstruction
    with tempfile.TemporaryDirectory() as tmp:
        recipe, weights = Path(tmp, RECIPE_FILE), Path(tmp, WEIGHTS_FILE)
        classes = [f"{type(x).__module__}.{type(x).__qualname__}" for x in (model, getattr(model, "config", None))]
        recipe.write_text(json.dumps({"kind": kind, "classes": classes, "config": config}))
        torch.save(model.state_dict(), weights)
        return mlflow.models.Model.log(
            artifact_path=None,
            flavor=CPU_PYTORCH_FLAVOR,
            pytorch_model=model,
            name=name,
            input_example=x,
            signature=infer_signature(x, outputs.numpy()),
            extra_files=[str(recipe), str(weights)],
            serialization_format="pt2",
            pickle_module=mlflow.pytorch.pickle_module,
            # Stated rather than inferred: inference reloads the model in a subprocess (seconds per model).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            run_id=run_id,
            # pyfunc serving takes one output tensor; the VAE returns three, so skip that check for it
            validate_serving_input=not isinstance(y, tuple),
        )


def load_module(model_uri: str, kinds: tuple[str, ...] | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """Rebuild the trainable module behind any MLflow model URI fmae logged
    (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/NAME, models:/m-...)."""
    check_tracking_server()  # a dead server fails in seconds, not after minutes of retries
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except (MlflowException, OSError) as exc:
        raise UserError(
            f"model_uri={model_uri!r} names no model MLflow can find at {tracking_uri()} "
            f"({str(exc).splitlines()[0]}). Check the name, version or alias in the MLflow UI "
            "(Models tab), or run the step that registers it first."
        ) from None
    recipe_path = next(local.rglob(RECIPE_FILE), None)
    if recipe_path is None:
        raise UserError(f"model_uri={model_uri!r} is not a model fmae logged: it has no {RECIPE_FILE}.")
    recipe = json.loads(recipe_path.read_text())
    if kinds is not None and recipe["kind"] not in kinds:
        article = "an" if kinds[0][0] in "aeiou" else "a"
        raise UserError(f"model_uri={model_uri!r} is a {recipe['kind']}; this step needs {article} {' or '.join(kinds)}.")
    module = build_module(recipe["kind"], recipe["config"], tuple(recipe.get("classes", ("", ""))))
    state = torch.load(recipe_path.parent / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    flush_denormals_(module)  # models logged before log_module flushed them
    return module, recipe["kind"], recipe["config"]


def source_run_id(model_uri: str) -> str | None:
    """The run that logged model_uri, for any URI form (runs:/, models:/NAME@ALIAS, models:/m-...)."""
    try:
        return mlflow.models.get_model_info(model_uri).run_id
    except Exception:  # the model itself loaded, so only its provenance is unknown
        return model_lineage(model_uri).get("fmae.source_run_id") or None


def registered_version(run_id: str, name: str) -> str | None:
    """models:/NAME/VERSION of what run_id registered as name, if it did."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.tags.get("fmae.run_id") == run_id]
    return f"models:/{name}/{max(int(v.version) for v in mine)}" if mine else None


def get_run(run_id: str) -> Run:
    return MlflowClient().get_run(run_id)


def download_artifact(run_id: str, path: str, folder: str) -> Path | None:
    """A run's artifact, copied into folder; None if the run has no such artifact."""
    try:
        return Path(MlflowClient().download_artifacts(run_id, path, folder))
    except (MlflowException, OSError):
        return None


def model_lineage(model_uri: str) -> dict[str, str]:
    """Tags that say where a model came from: its registered version and source run."""
    tags = {"fmae.source_model_uri": model_uri}
    if model_uri.startswith("models:/"):
        name_ref = model_uri[len("models:/"):]
        client = MlflowClient()
        try:
            if "@" in name_ref:
                name, alias = name_ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in name_ref:
                name, number = name_ref.split("/", 1)
                version = client.get_model_version(name, number)
            else:
                return tags
        except MlflowException:
            return tags
        tags.update({"fmae.source_model": f"{version.name}/{version.version}",
                     "fmae.source_run_id": version.run_id or ""})
    elif model_uri.startswith("runs:/"):
        tags["fmae.source_run_id"] = model_uri[len("runs:/"):].split("/", 1)[0]
    run_id = tags.get("fmae.source_run_id")
    if run_id:
        try:
            source = MlflowClient().get_run(run_id)
        except MlflowException:
            return tags
        if source.data.tags.get("ray.trial_id"):  # a search's trial: name it, it is what users browse
            tags["fmae.source_trial"] = source.info.run_name
    return tags


def ui_path(experiment_id: str, run_id: str) -> str:
    """A run's address inside the MLflow UI, relative to wherever the UI is served (markdown
    links in descriptions keep working on any host and port)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def run_markdown_link(client: MlflowClient, run_id: str, label: str = "") -> str:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return f"run `{run_id}`"
    return f"[{label or run.info.run_name}]({ui_path(run.info.experiment_id, run_id)})"


def version_description(client: MlflowClient, run_id: str, score: tuple[str, float], tags: dict[str, str]) -> str:
    """Markdown for a model version: its score, the run that made it, and the links back along
    its lineage (the encoder version and the search trial it was built from)."""
    key, value = score
    lines = [f"**{key} {value:.4g}**, made by run {run_markdown_link(client, run_id)}."]
    if tags.get("fmae.trial_run_id"):
        lines.append(f"The encoder of the search's best trial, {run_markdown_link(client, tags['fmae.trial_run_id'])}.")
    if tags.get("fmae.source_model"):
        name, number = tags["fmae.source_model"].split("/", 1)
        lines.append(f"Built on [{name} version {number}](#/models/{name}/versions/{number}).")
    if tags.get("fmae.source_run_id"):
        label = tags.get("fmae.source_trial") or ""
        lines.append(f"Its encoder came from run {run_markdown_link(client, tags['fmae.source_run_id'], label)}"
                     + (" (a search trial)." if label else "."))
    if tags.get("fmae.mode"):
        lines.append(f"Fine-tuning mode: {tags['fmae.mode']}.")
    return "\n\n".join(lines)


def register_model(model_uri: str, name: str, run_id: str, score: tuple[str, float], higher_is_better: bool,
                   tags: dict[str, Any] | None = None, about: str = ""):
    """Register model_uri as a new version of name, tagged with its run and score and described
    (markdown, with links along its lineage); the alias `champion` moves to it only if it beats
    the current champion's score (or there is none). about: the registered model's description,
    set while it has none."""
    client = MlflowClient()
    key, value = score
    all_tags = {"fmae.run_id": run_id, key: str(value), **{k: str(v) for k, v in (tags or {}).items()}}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    client.update_model_version(name, version.version, version_description(client, run_id, score, all_tags))
    if about and not client.get_registered_model(name).description:
        client.update_registered_model(name, f"{about}\n\nAlias **{CHAMPION}**: the version with the "
                                       f"{'highest' if higher_is_better else 'lowest'} {key}.")
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        current_value = float(current.tags.get(key, "nan"))
    except MlflowException:
        current, current_value = None, float("nan")
    beats = current is None or not np.isfinite(current_value) or (
        value > current_value if higher_is_better else value < current_value)
    if beats:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        print(f"Registered {name} version {version.version}: the new {CHAMPION} ({key}={value:.4g}).")
    else:
        print(f"Registered {name} version {version.version} ({key}={value:.4g}); {CHAMPION} stays version "
              f"{current.version} ({key}={current_value:.4g}).")
    client.set_model_version_tag(name, version.version, "fmae.champion_at_registration", str(beats).lower())
    return version, beats
