"""The registered classifier served over REST as users call it: per image a class index, its
name and its probability, from `mlflow models serve` and mlflow.pyfunc alike, while
mlflow.pytorch still gives the module's (N, 10) log-probabilities."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.nn import functional as F

from experiments.data import CLASS_NAMES, Split
from experiments.tracking import serving
from experiments.tracking.models import log_module
from experiments.tracking.registry import register_model
from experiments.training import accuracy, fit
from fmae_models import CAEConfig, Classifier, Encoder
from tests.helpers import ROOT, free_port, subprocess_env

NAME, N_TEST = "fmae-classifier", 500
URI = f"models:/{NAME}@champion"


class Warnings(logging.Handler):
    """The warnings one MLflow logger gives while attached."""

    def __init__(self, logger: str):
        super().__init__(logging.WARNING)
        self.logger, self.messages = logging.getLogger(logger), []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(module_store, small_data):
    """A tiny classifier trained 2 epochs on 2,000 real images, logged and registered as
    fmae-classifier@champion; yields the first N_TEST test images and labels, and the run."""
    torch.manual_seed(0)
    config = {"n_channels": 4, "encoded_space_dim": 8, "batch_norm": False}
    model = Classifier(Encoder(CAEConfig(**config)), config["encoded_space_dim"])
    val = Split(small_data.val.inputs[:1000], small_data.val.labels[:1000])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(
        model,
        lambda m, x, y: F.nll_loss(m(x), y),
        optimizer,
        small_data.train,
        val,
        epochs=2,
        batch_size=64,
        seed=0,
        report=lambda epoch, metrics: None,
        loss_name="nll",
    )
    test = Split(small_data.test.inputs[:N_TEST], small_data.test.labels[:N_TEST])
    model.eval()
    test_accuracy = accuracy(model, test)
    with pytest.MonkeyPatch.context() as mp, Warnings("mlflow.models.model") as logging_warnings:
        mp.chdir(module_store)  # the store's first use puts its artifact root (./mlruns) here, not in the repo
        experiment_id = MlflowClient().create_experiment("serving")  # no set_experiment: it exports an id
        with mlflow.start_run(experiment_id=experiment_id) as run:  # the logged model joins the run's experiment
            mlflow.log_metric("test_accuracy", test_accuracy)
            info = log_module(
                model, "classifier", "classifier", config, run.info.run_id
            )  # warns if its serving check fails
        register_model(info.model_uri, NAME, run.info.run_id, ("test_accuracy", test_accuracy), higher_is_better=True)
    return {
        "images": test.inputs.numpy(),
        "labels": test.labels.numpy(),
        "run_id": run.info.run_id,
        "tmp": module_store,
        "logging_warnings": logging_warnings.messages,
    }


@pytest.fixture(scope="module")
def server(registered):
    """`mlflow models serve -m models:/fmae-classifier@champion --env-manager local`, in a session
    of its own so its uvicorn goes with it; yields its URL once /ping answers."""
    port, log = free_port(), registered["tmp"] / "serve.log"
    with open(log, "a") as out:  # the server keeps its own copy of the file
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                URI,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
            ],  # uvicorn: found on subprocess_env's PATH (the venv's)
            cwd=registered["tmp"],
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180  # a loaded 2-core machine
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    """POST to /invocations; (HTTP status, JSON answer), errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def reference_log_probs(images: np.ndarray) -> np.ndarray:
    """What the pytorch flavour gives: the logged module's (N, 10) log-probabilities."""
    module = mlflow.pytorch.load_model(URI)
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


# --- tests ---------------------------------------------------------------------------------------


def test_loader_keeps_fmae_class_names():
    assert serving.CLASS_NAMES == CLASS_NAMES


def test_served_answers_are_classes_with_probabilities(registered, server):
    images, labels = registered["images"], registered["labels"]
    answers = []
    for start in range(0, len(images), 250):  # a few requests, as a client batching its images
        status, body = post(server, {"inputs": images[start : start + 250].tolist()})
        assert status == 200, body
        answers += body["predictions"]
    assert len(answers) == len(images)
    for answer in answers:
        assert set(answer) == {"class_index", "class_name", "probability"}
        assert type(answer["class_index"]) is int and 0 <= answer["class_index"] < 10
        assert answer["class_name"] == CLASS_NAMES[answer["class_index"]]
        assert type(answer["probability"]) is float and 0.0 <= answer["probability"] <= 1.0
    served = pd.DataFrame(answers)
    log_probs = reference_log_probs(images)
    assert (served["class_index"].to_numpy() == log_probs.argmax(1)).all()
    np.testing.assert_allclose(served["probability"], np.exp(log_probs.max(1)), rtol=1e-5, atol=1e-6)
    assert served["probability"].min() >= 0.1 - 1e-6  # the largest of ten probabilities
    served_accuracy = float((served["class_index"].to_numpy() == labels).mean())
    logged = MlflowClient().get_run(registered["run_id"]).data.metrics["test_accuracy"]
    assert served_accuracy == pytest.approx(logged, abs=1e-9)
    assert served_accuracy > 0.5  # 2 epochs on 2,000 images: well above chance (0.1)


def with_pixel(x: np.ndarray, value) -> bytes:
    """Two images, one pixel of the first replaced by value (NaN as Python's json writes it)."""
    inputs = x[:2].tolist()
    inputs[0][0][14][14] = value
    return json.dumps({"inputs": inputs}).encode()


# Each bad request, and what its answer's message must say (after MLflow's echo of the data).
BAD_REQUESTS = {
    "shape (N, 28, 28)": (
        lambda x: {"inputs": x[:3, 0].tolist()},
        "Shape of input (3, 28, 28) does not match expected shape (-1, 1, 28, 28)",
    ),
    "shape (N, 784)": (
        lambda x: {"inputs": x[:3].reshape(3, -1).tolist()},
        "Shape of input (3, 784) does not match expected shape (-1, 1, 28, 28)",
    ),
    "a string among the numbers": (lambda x: with_pixel(x, "dark"), "could not convert string to float: 'dark'"),
    "no inputs": (lambda x: {"data": x[:2].tolist()}, "exactly one of the input fields"),
    "pixels in 0-255": (lambda x: {"inputs": (x[:2] * 255).tolist()}, "pixels must lie in [0, 1]"),
    "NaN": (lambda x: with_pixel(x, float("nan")), "inputs must be finite numbers"),
    "not JSON": (lambda x: b'{"inputs": [[', "valid JSON"),
    "no images": (lambda x: {"inputs": []}, "Failed to enforce schema"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_a_message(registered, server, case):
    body, says = BAD_REQUESTS[case]
    status, answer = post(server, body(registered["images"]))
    assert status == 400, (status, answer)
    assert says in answer["message"], answer


def test_pytorch_flavour_unchanged_and_pyfunc_answers(registered):
    images = registered["images"][:64]
    log_probs = reference_log_probs(images)
    assert log_probs.shape == (64, 10)
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-5)
    pyfunc = mlflow.pyfunc.load_model(URI)
    answers = pyfunc.predict(images)
    assert list(answers.columns) == ["class_index", "class_name", "probability"]
    assert answers["class_index"].dtype == np.int64 and answers["probability"].dtype == np.float64
    assert (answers["class_index"].to_numpy() == log_probs.argmax(1)).all()
    assert list(answers["class_name"]) == [CLASS_NAMES[i] for i in log_probs.argmax(1)]
    np.testing.assert_allclose(answers["probability"], np.exp(log_probs.max(1)), rtol=1e-5, atol=1e-6)
    assert isinstance(pyfunc.get_raw_model(), torch.nn.Module)
    info = mlflow.models.get_model_info(URI)
    assert info.flavors["python_function"]["loader_module"] == serving.MODULE
    assert info.flavors["python_function"]["config"] == {"device": "cpu"}
    assert set(info.flavors) == {"pytorch", "python_function"}
    assert info.signature.outputs.to_dict() == serving.OUTPUT_SCHEMA.to_dict()  # the model page's
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 28, 28)
    assert not [m for m in registered["logging_warnings"] if "serving input" in m]  # Model.log's own check passed


def test_the_readme_serving_example_gets_answers(registered, server):
    """The README's request (`python -m experiments.request_body 3`, posted with curl) as a user sends it."""
    from experiments.request_body import request_body

    readme = (ROOT / "README.md").read_text()
    assert "mlflow models serve -m models:/fmae-classifier@champion" in readme
    assert "python -m experiments.request_body 3 > request.json" in readme
    status, body = post(server, request_body(3).encode())
    assert status == 200 and [a["class_name"] for a in body["predictions"]] == [
        CLASS_NAMES[a["class_index"]] for a in body["predictions"]
    ]
    assert len(body["predictions"]) == 3
