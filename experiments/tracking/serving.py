"""The classifier's python_function flavour: per image, its class and that class's probability.

This file is copied into every logged classifier (its MLflow `code` folder, which pyfunc puts
on sys.path) and named there as the flavour's loader module, so `mlflow models serve` and
`mlflow.pyfunc.load_model` answer class_index, class_name and probability, while
`mlflow.pytorch.load_model` still returns the module giving (N, 10) log-probabilities.
Inside a model it is imported on its own, so it needs nothing beyond numpy, pandas and mlflow.
"""

import os
import shutil

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

# FashionMNIST's classes in label order; a test holds this equal to experiments.data.CLASS_NAMES.
CLASS_NAMES = tuple("T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot".split("|"))
MODULE = "fmae_classifier_serving"  # its name inside a model: distinct from anything a server imports
OUTPUT_SCHEMA = Schema(
    [ColSpec("long", "class_index"), ColSpec("string", "class_name"), ColSpec("double", "probability")]
)


def _load_pyfunc(path: str, model_config: dict | None = None) -> "ClassifierPyfunc":
    """Called by mlflow.pyfunc.load_model with the model's data folder and pyfunc config."""
    import mlflow.pytorch  # here, not at the top: torch is loaded only once a model is

    return ClassifierPyfunc(mlflow.pytorch._load_pyfunc(path, model_config))


class ClassifierPyfunc:
    """mlflow.pytorch's own pyfunc wrapper, with its (N, 10) log-probabilities made answers."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def get_raw_model(self):
        return self.wrapped.get_raw_model()

    def predict(self, data, params: dict | None = None) -> pd.DataFrame:
        """data: (N, 1, 28, 28) float32 in [0, 1], already checked against the signature's
        shape and type by pyfunc. Raising MlflowException(INVALID_PARAMETER_VALUE) makes the
        scoring server answer 400 with its message."""
        images = np.asarray(data)
        if images.dtype.kind != "f" or not np.isfinite(images).all():
            raise MlflowException.invalid_parameter_value(
                "inputs must be finite numbers: every pixel a float in [0, 1]."
            )
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise MlflowException.invalid_parameter_value(
                f"pixels must lie in [0, 1]; these span [{images.min():.4g}, {images.max():.4g}]. "
                "Divide 0-255 pixel values by 255."
            )
        log_probs = np.asarray(self.wrapped.predict(images, params), dtype=np.float64)
        index = log_probs.argmax(axis=1)
        return pd.DataFrame(
            {
                "class_index": index.astype(np.int64),
                "class_name": np.asarray(CLASS_NAMES, dtype=object)[index],
                # exp of the winning log-probability, not a softmax here: the model's LogSoftmax did it
                "probability": np.exp(log_probs[np.arange(len(index)), index]).clip(0.0, 1.0),
            }
        )


def classifier_signature(inputs: Schema) -> ModelSignature:
    """The served signature: the model's tensor input, and the answer table as its output."""
    return ModelSignature(inputs=inputs, outputs=OUTPUT_SCHEMA)


def make_classifier_pyfunc(model_dir: str, mlflow_model: Model) -> None:
    """Point a saved classifier's python_function flavour at a copy of this file, and give the
    model the answer table as its output signature; rewrites model_dir/MLmodel.

    Call right after mlflow.pytorch.save_model(path=model_dir, mlflow_model=mlflow_model, ...);
    the pytorch flavour is left as it is."""
    conf = mlflow_model.flavors["python_function"]
    code = conf.get("code") or "code"  # mlflow's own folder for code_paths, on sys.path at load
    os.makedirs(os.path.join(model_dir, code), exist_ok=True)
    shutil.copyfile(os.path.abspath(__file__), os.path.join(model_dir, code, MODULE + ".py"))
    conf.update(loader_module=MODULE, code=code)
    mlflow_model.signature = classifier_signature(mlflow_model.signature.inputs)
    mlflow_model.save(os.path.join(model_dir, "MLmodel"))
