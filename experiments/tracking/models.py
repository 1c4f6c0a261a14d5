"""fmae's models in MLflow: logged as PyTorch models that load anywhere, and rebuilt as the
trainable modules they were.

MLflow 3.17 saves PyTorch models as pt2 (torch.export): safe to load and callable on any batch,
but it loads back as a traced graph, not a module to train further. So each logged model also
holds a recipe (which fmae_models class, which config) and a state dict (read back with
weights_only=True): `load_module` rebuilds the real module. No whole module is ever pickled.
"""

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from torch import nn

from experiments.errors import UserError
from experiments.tracking.mlflow_compat import (
    CPU_PYTORCH_FLAVOR,
    UNLINKED_STEP,
    link_results_to_model,
    requirements_of_this_interpreter,
)
from experiments.tracking.server import check_tracking_server, tracking_uri
from experiments.tracking.serving import make_classifier_pyfunc
from experiments.training import flush_denormals_
from fmae_models import build_module

RECIPE_FILE = "fmae_model.json"  # what to build: {"kind": ..., "classes": [...], "config": {...}}
WEIGHTS_FILE = "state_dict.pt"  # its weights, read back with weights_only=True


def example_images(n: int = 4) -> np.ndarray:
    """A fixed input example (n, 1, 28, 28) float32; n > 1 keeps the exported batch dim dynamic."""
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def write_recipe(folder: str, model: nn.Module, kind: str, config: dict[str, Any]) -> list[str]:
    """The recipe and weights that rebuild model; returns their paths."""
    recipe, weights = Path(folder, RECIPE_FILE), Path(folder, WEIGHTS_FILE)
    classes = [f"{type(x).__module__}.{type(x).__qualname__}" for x in (model, getattr(model, "config", None))]
    recipe.write_text(json.dumps({"kind": kind, "classes": classes, "config": config}))
    torch.save(model.state_dict(), weights)
    return [str(recipe), str(weights)]


def log_module(model: nn.Module, name: str, kind: str, config: dict[str, Any], run_id: str | None = None):
    """Log model as an MLflow pytorch model (pt2: safe to load, callable on any batch) plus the
    recipe and state dict that rebuild it as a trainable fmae module (see load_module)."""
    # contiguous weights: torch.export's archive does not recognise channels-last ones (fit's, on the CPU)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    flush_denormals_(model)  # whoever loads it computes at full speed
    x = example_images()
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    outputs = y[0] if isinstance(y, tuple) else y  # the VAE's first output is its reconstruction
    with tempfile.TemporaryDirectory() as tmp, requirements_of_this_interpreter():
        info = mlflow.models.Model.log(
            artifact_path=None,
            flavor=CPU_PYTORCH_FLAVOR,
            pytorch_model=model,
            name=name,
            input_example=x,
            signature=infer_signature(x, outputs.numpy()),
            extra_files=write_recipe(tmp, model, kind, config),
            serialization_format="pt2",
            pickle_module=mlflow.pytorch.pickle_module,
            # Stated rather than inferred: inference reloads the model in a subprocess (seconds per model).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            run_id=run_id,
            # pyfunc serving takes one output tensor; the VAE returns three, so skip that check for it
            validate_serving_input=not isinstance(y, tuple),
            # served, a classifier answers class_index, class_name and probability per image
            after_save=make_classifier_pyfunc if kind == "classifier" else None,
            step=UNLINKED_STEP,  # no system/* metric becomes the model's (see mlflow_compat)
        )
    if info.run_id:
        link_results_to_model(info.run_id, info.model_id)
    return info


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
        raise UserError(
            f"model_uri={model_uri!r} is a {recipe['kind']}; this step needs {article} {' or '.join(kinds)}."
        )
    module = build_module(recipe["kind"], recipe["config"], tuple(recipe.get("classes", ("", ""))))
    module.load_state_dict(torch.load(recipe_path.parent / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    flush_denormals_(module)  # models logged before log_module flushed them
    return module, recipe["kind"], recipe["config"]


def source_run_id(model_uri: str) -> str | None:
    """The run that logged model_uri, for any URI form (runs:/, models:/NAME@ALIAS, models:/m-...)."""
    try:
        return mlflow.models.get_model_info(model_uri).run_id
    except Exception:  # the model itself loaded, so only its provenance is unknown
        return model_lineage(model_uri).get("fmae.source_run_id") or None


def registry_version(model_uri: str):
    """The registered version a models:/NAME@ALIAS or models:/NAME/VERSION URI names, else None."""
    name_ref = model_uri[len("models:/") :] if model_uri.startswith("models:/") else ""
    client = MlflowClient()
    try:
        if "@" in name_ref:
            return client.get_model_version_by_alias(*name_ref.split("@", 1))
        if "/" in name_ref:
            return client.get_model_version(*name_ref.split("/", 1))
    except MlflowException:
        pass
    return None


def model_lineage(model_uri: str) -> dict[str, str]:
    """Tags that say where a model came from: its registered version, its source run and, for a
    search's trial, the trial's name (what users browse)."""
    tags = {"fmae.source_model_uri": model_uri}
    version = registry_version(model_uri)
    if version is not None:
        tags.update(
            {"fmae.source_model": f"{version.name}/{version.version}", "fmae.source_run_id": version.run_id or ""}
        )
    elif model_uri.startswith("runs:/"):
        tags["fmae.source_run_id"] = model_uri[len("runs:/") :].split("/", 1)[0]
    if tags.get("fmae.source_run_id"):
        try:
            source = MlflowClient().get_run(tags["fmae.source_run_id"])
        except MlflowException:
            return tags
        if source.data.tags.get("ray.trial_id"):
            tags["fmae.source_trial"] = source.info.run_name
    return tags
