"""One parser for the console command and MLproject: names, defaults, rejections. Rejections are
proven in-process; one test per way in (`fmae`, `mlflow run`) proves the exit status and what
the user sees there."""

import dataclasses

import mlflow
import pytest
import torch
import yaml

from experiments import cli
from experiments.cli import step_module, steps
from experiments.config import parse_config
from experiments.errors import UserError
from experiments.train_cae import Config
from tests.helpers import ROOT, fmae, mlflow_run, runs_of


def test_flags_parse_with_either_spelling():
    config = parse_config(Config, ["--lr", "1e-3", "--encoded-space-dim", "9", "--optimizer=sgd"])
    assert config.lr == 0.001 and config.encoded_space_dim == 9 and config.optimizer == "sgd"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--nope", "1"], "does not take"),
        (["--epochs", "two"], "not a valid int"),
        (["--optimizer", "lbfgs"], "is not one of"),
        (["--lr", "-1"], "must be more than 0"),
        (["--device", "tpu"], "is not one of"),
    ],
)
def test_bad_parameters_are_rejected_before_any_work(argv, message):
    with pytest.raises(UserError, match=message):
        parse_config(Config, argv)


def test_bad_parameter_exits_2_without_traceback(tmp_path, tracking):
    """The console command, as a user types it: exit status 2, one message, no traceback."""
    result = fmae(["train_cae", "--optimizer", "lbfgs"], tmp_path)
    assert result.returncode == 2
    assert "optimizer='lbfgs'" in result.stderr and "Traceback" not in result.stderr


def test_mlproject_matches_the_step_configs():
    """MLproject parameters are the dataclass fields, with the same defaults."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["entry_points"].pop("step")["command"] == "python -m experiments {name}"  # any step by name
    assert set(spec["entry_points"]) == set(steps())
    for name, entry in spec["entry_points"].items():
        fields = {f.name: f.default for f in dataclasses.fields(step_module(name).Config)}
        params = entry["parameters"]
        assert set(params) <= set(fields), f"{name}: {set(params) - set(fields)} unknown to the parser"
        for key, param in params.items():
            default = param["default"]
            assert (
                type(fields[key])(default) == fields[key]
                if not isinstance(fields[key], bool)
                else str(default).lower() == str(fields[key]).lower()
            ), f"{name}.{key}"
            assert f"--{key} {{{key}}}" in entry["command"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "argv,message",
    [
        (["train_cae", "--train_subset", "60000"], "more than the 50,000 training images"),
        (["tune", "--gpus_per_trial", "0.5"], "PyTorch sees none on this machine"),
        (["train_cae", "--epochs", "two"], "epochs='two' is not a valid int"),
        (["train_cae", "--batch_size", "0"], "batch_size=0 must be more than 0"),
        (["vae", "--batch_size", "0"], "batch_size=0 must be more than 0"),
        (["finetune", "--batch_size", "0"], "batch_size=0 must be more than 0"),
        (["main", "--batch_size", "0"], "batch_size=0 must be more than 0"),
        (["main", "--profile", "huge"], "profile='huge'"),
        (["tune", "--resume", "true", "--storage_path", "nothing-here"], "resume=true found no interrupted search"),
        (
            ["finetune", "--model_uri", "runs:/0123456789abcdef0123456789abcdef/encoder"],
            "names no model MLflow can find",
        ),
        (["nosuchstep"], "there is no step 'nosuchstep'"),
    ],
)
def test_inputs_that_cannot_work_exit_2_and_leave_the_store_untouched(tracking, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err[-2000:]
    experiments = mlflow.search_experiments()
    assert not mlflow.search_runs([e.experiment_id for e in experiments], output_format="list")


@pytest.mark.parametrize(
    "params,message",
    [
        ({"epochs": "two"}, "epochs='two' is not a valid int"),
        ({"model_uri": "models:/no-such-encoder@champion"}, "names no model"),
    ],
)
def test_a_bad_value_through_mlflow_run_fails_its_run_and_says_why(tmp_path, tracking, params, message):
    """`mlflow run` makes its run before fmae reads the parameters (and exits 1 on any failure):
    that run ends FAILED, never RUNNING, with fmae's message as its description."""
    entry = "finetune" if "model_uri" in params else "train_cae"
    result = mlflow_run(entry, {**params, "train_subset": 100}, tmp_path, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr
    (run,) = runs_of()
    assert run.info.status == "FAILED" and message in run.data.tags["mlflow.note.content"]


def test_every_parameter_says_what_it_is_for():
    """`fmae NAME --help` prints each field's why-comment: none may be lost (a formatter that
    wraps a long field line moves its comment off the line the parser reads)."""
    from experiments.config import field_help

    for name in steps():
        cls = step_module(name).Config
        assert not [f.name for f in dataclasses.fields(cls) if f.name not in field_help(cls)], name
