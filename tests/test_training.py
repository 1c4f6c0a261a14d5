"""The shared training loop: its guard against denormal weights (which x86 CPUs compute ~100x
slower on the intra-op worker threads that torch.set_flush_denormal does not reach), its bf16
training, and its hooks for a trial."""

from types import SimpleNamespace

import mlflow
import pytest
import torch

from experiments.tracking.models import load_module, log_module
from experiments.training import flush_denormals_
from fmae_models import CAEConfig, Encoder
from tests.helpers import images

DENORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38


def encoder_with_denormals() -> tuple[Encoder, int]:
    # fit() turns on flush-to-zero for its thread; a test that trained in this process earlier
    # would leave it on, and the planted denormals would be zeros before they are counted.
    torch.set_flush_denormal(False)
    encoder = Encoder(CAEConfig(n_channels=4, encoded_space_dim=6))
    with torch.no_grad():
        encoder.fc[0].weight[:, :10] = DENORMAL
        encoder.conv[2].weight[0] = -DENORMAL
    return encoder, encoder.fc[0].weight[:, :10].numel() + encoder.conv[2].weight[0].numel()


def test_flush_zeroes_denormal_weights_only():
    encoder, planted = encoder_with_denormals()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = images(5)
    expected = encoder.eval()(x)
    assert flush_denormals_(encoder) == planted
    assert flush_denormals_(encoder) == 0  # nothing left; zeros are not counted
    tiny = torch.finfo(torch.float32).tiny
    for name, value in encoder.state_dict().items():
        normal = before[name].abs() >= tiny
        assert torch.equal(value[normal], before[name][normal]), name  # normal weights untouched
        assert not ((value != 0) & (value.abs() < tiny)).any(), name
    assert torch.allclose(encoder(x), expected)  # the function is the same


def test_logged_modules_hold_no_denormals(tracking):
    encoder, _ = encoder_with_denormals()
    with mlflow.start_run():
        info = log_module(encoder, "encoder", "encoder", {"n_channels": 4, "encoded_space_dim": 6})
    loaded, kind, _ = load_module(info.model_uri)
    assert kind == "encoder"
    tiny = torch.finfo(torch.float32).tiny
    assert all(not ((p != 0) & (p.abs() < tiny)).any() for p in loaded.parameters())


def test_a_loss_that_turns_nan_stops_training_at_once(small_data):
    from experiments.train_cae import reconstruction_loss
    from experiments.training import Diverged, fit, make_optimizer
    from fmae_models import CAE

    model = CAE(CAEConfig(n_channels=4, encoded_space_dim=4))
    seen = []
    with pytest.raises(Diverged) as caught:
        fit(
            model,
            reconstruction_loss,
            make_optimizer("sgd", model.parameters(), 1e20, momentum=0.9),
            small_data.train,
            small_data.val,
            3,
            256,
            0,
            report=lambda epoch, metrics: seen.append(epoch),
        )
    assert caught.value.epoch == 1 and "train_loss became nan" in caught.value.cause
    assert seen == []  # the diverged epoch is never reported


def test_every_second_runs_between_batches_once_a_second_and_before_validation(small_data, monkeypatch):
    """A trial takes the cores other trials leave from the next batch on (tune.trainable): an
    epoch calls every_second between batches once a second has passed, and before validating."""
    from experiments import training
    from experiments.train_cae import reconstruction_loss
    from fmae_models import CAE

    clock = iter(range(10_000))  # each reading of fit's clock is 0.4 s after the one before
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(clock) * 0.4))
    model = CAE(CAEConfig(n_channels=4, encoded_space_dim=4))
    calls, batches = [], len(small_data.train) // 250
    training.fit(
        model,
        reconstruction_loss,
        training.make_optimizer("adam", model.parameters(), 1e-3),
        small_data.train,
        small_data.val,
        1,
        250,
        0,
        report=lambda epoch, metrics: calls.append("report"),
        every_second=lambda: calls.append("tick"),
    )
    assert calls[-2:] == ["tick", "report"], calls  # one after the last batch, before validating
    between = calls[:-2]
    # a reading per batch, and one more after each call: at 0.4 s a reading, a call every
    # third batch, not every batch
    assert set(between) == {"tick"} and 1 <= len(between) <= batches // 2, calls


def test_precision_auto_is_bf16_on_cpus_with_amx_only():
    from experiments.training import training_precision

    amx = torch.cpu._is_amx_tile_supported()
    assert training_precision("auto", torch.device("cpu")) == ("bf16" if amx else "fp32")
    assert training_precision("auto", torch.device("cuda")) == "fp32"  # never measured there
    assert [training_precision(p, torch.device("cpu")) for p in ("fp32", "bf16")] == ["fp32", "bf16"]


def test_bf16_trains_in_bf16_and_learns_as_fp32_does(small_data):
    """precision="bf16": the forward pass runs in bfloat16 (autocast), the weights stay float32,
    and an epoch lowers the loss about as much as fp32's. Validation runs as training did; a
    test pass (evaluate's default) is fp32 either way, and bf16 reads the same loss within 1%."""
    from experiments import training
    from experiments.train_cae import reconstruction_loss
    from fmae_models import CAE

    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = CAE(CAEConfig(n_channels=8, encoded_space_dim=6))
        dtypes, metrics = set(), []
        model.decoder.register_forward_hook(lambda m, i, out, seen=dtypes: seen.add((m.training, out.dtype)))
        training.fit(
            model,
            reconstruction_loss,
            training.make_optimizer("adam", model.parameters(), 3e-3),
            small_data.train,
            small_data.val,
            2,
            128,
            0,
            report=lambda epoch, m, seen=metrics: seen.append(m),
            precision=precision,
        )
        trained_in = torch.bfloat16 if precision == "bf16" else torch.float32
        assert dtypes == {(True, trained_in), (False, trained_in)}, dtypes
        assert all(p.dtype == torch.float32 for p in model.parameters())
        dtypes.clear()
        test_loss = training.evaluate(model, reconstruction_loss, small_data.test)
        assert dtypes == {(False, torch.float32)}, dtypes
        in_bf16 = training.evaluate(model, reconstruction_loss, small_data.test, precision="bf16")
        assert in_bf16 == pytest.approx(test_loss, rel=0.01)
        results[precision] = [m["val_loss"] for m in metrics]
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16[1] < bf16[0] and abs(bf16[1] - fp32[1]) < 0.1 * fp32[1], results
