"""One training loop for the CAE, the VAE and the classifier.

A step supplies a `loss_fn(model, images, labels) -> scalar` and a `report(epoch, metrics)`
callback; MLflow logging and Ray Tune's `tune.report` both plug in as that callback.
"""

import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from experiments.data import Split, iterate_batches

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Report = Callable[[int, dict[str, float]], None]
# The seed's optimisers. momentum applies to sgd and rmsprop; rmsprop has no fused kernel
# (foreach, the default, batches it).
OPTIMIZERS = {
    "adam": (torch.optim.Adam, False, True),  # (class, takes momentum, has a fused kernel)
    "adamw": (torch.optim.AdamW, False, True),
    "sgd": (torch.optim.SGD, True, True),
    "rmsprop": (torch.optim.RMSprop, True, False),
}
LR_SCHEDULES = ("constant", "cosine")
# Evaluation keeps no gradients, so a GPU takes large batches; on the CPU, batches beyond a few
# hundred images fall out of the cache: at n_channels=32, 2048 images per batch took 1.4x as long
# as 256 on the 2-core machine, and the validation pass is a quarter of every epoch.
EVAL_BATCH = {"cpu": 256, "cuda": 2048}
# Training arithmetic. auto: bf16 autocast on CPUs with AMX tiles, where it measured faster with
# the same loss (an epoch on one thread: c=32 1.61x, c=16 1.26x, c=8 1.08x; the seed's
# configuration's test_loss 0.01386 against 0.01404), fp32 elsewhere (on AVX-512 bf16 without AMX
# it ran 0.90-0.94x; on CUDA it was never measured). Validation follows the training's precision:
# in bf16 a third of a 10,000-image search epoch costs half (1.7-2.1x on one thread), and val_loss
# reads 0.02-0.13% above fp32's, far inside what one configuration's seeds move (4%). Test passes
# (test_loss, which picks champions) always run in fp32.
PRECISIONS = ("auto", "fp32", "bf16")


def training_precision(precision: str, device: torch.device) -> str:
    """What precision="auto" (or an explicit choice) trains in on device: "bf16" or "fp32"."""
    if precision == "auto":
        # PyTorch's own check (private; a PyTorch without it trains in fp32, which is always right)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return "bf16" if device.type == "cpu" and amx() else "fp32"
    return precision


def eval_batch(device: torch.device) -> int:
    return EVAL_BATCH.get(device.type, EVAL_BATCH["cpu"])


class Diverged(ArithmeticError):
    """A loss turned NaN or infinite: the training diverged, and more epochs will not mend it."""

    def __init__(self, epoch: int, metrics: dict[str, float]):
        self.epoch = epoch
        self.cause = ", ".join(f"{k} became {v}" for k, v in metrics.items() if not math.isfinite(v))
        super().__init__(f"{self.cause} at epoch {epoch}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def flush_denormals_(module: nn.Module) -> int:
    """Set module's denormal parameters (0 < |w| < 1.2e-38) to 0; returns how many there were.

    Weight decay drives dead weights toward 0 until they are denormal floats, which x86 CPUs
    compute with ~100x slower microcode. torch.set_flush_denormal only covers the calling
    thread, not the intra-op worker threads: one step of the tuned search champion's encoder
    took 70 ms on 2 threads against 13 ms for the same encoder with fresh weights.
    """
    flushed = 0
    for param in module.parameters():
        denormal = (param != 0) & (param.abs() < torch.finfo(param.dtype).tiny)
        param.masked_fill_(denormal, 0.0)
        flushed += int(denormal.sum())
    return flushed


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """One of OPTIMIZERS (names are checked where configs are parsed)."""
    cls, takes_momentum, has_fused = OPTIMIZERS[name]
    params = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    options = {"momentum": momentum} if takes_momentum else {}
    if has_fused and (first.is_cuda or first.device.type == "cpu"):
        # A step of these small models is bound by per-tensor overheads: fused optimisers update
        # every tensor in one kernel (on the 2-core CPU, with channels-last: c=32 1.43x, c=8 1.38x
        # the images per second of foreach; benchmarks/performance.py measures it).
        options["fused"] = True
    return cls(params, lr=lr, weight_decay=weight_decay, **options)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    """Per-epoch learning-rate schedule, one of LR_SCHEDULES: cosine annealing lets the last
    epochs settle the weights (Loshchilov & Hutter, SGDR, 2017); constant keeps lr throughout."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs) if name == "cosine" else None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling order depends on (seed, epoch) only, so a resumed run sees the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    every_second: Callable[[], None] | None = None,
    precision: str = "fp32",
) -> float:
    """One pass over split; the mean loss per example. every_second, if given, runs between
    batches at most once a second, and after the last one (the validation pass that follows
    runs with what it set: a trial's thread count follows the cores it may use). precision
    "bf16": the forward pass and loss under bf16 autocast (the backward pass follows it)."""
    model.train()
    device = split.inputs.device
    total, seen = torch.zeros((), device=device), 0
    due = time.perf_counter() + 1.0
    for inputs, labels in iterate_batches(split, batch_size, generator):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(labels)  # stays on the device: no sync per batch
        seen += len(labels)
        if every_second is not None and time.perf_counter() >= due:
            every_second()
            due = time.perf_counter() + 1.0
    if every_second is not None:
        every_second()
    return float(total) / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, split: Split, batch_size: int = 0, precision: str = "fp32") -> float:
    """Mean of loss_fn per example over split, in eval mode; precision "bf16" computes the model
    under bf16 autocast (the loss itself, mse_loss or nll_loss, autocast keeps in fp32)."""
    model.eval()
    device = split.inputs.device
    total = torch.zeros((), device=device)
    for inputs, labels in iterate_batches(split, batch_size or eval_batch(device)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            total += loss_fn(model, inputs, labels) * len(labels)
    return float(total) / max(len(split), 1)


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 0) -> torch.Tensor:
    """model's outputs for all of split, in eval mode, batched: codes, log-probabilities, images."""
    model.eval()
    batches = iterate_batches(split, batch_size or eval_batch(split.inputs.device))
    return torch.cat([model(inputs) for inputs, _ in batches])


def correct_fraction(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of a batch a log-probability model labels correctly; evaluate() makes it an accuracy."""
    return (model(inputs).argmax(1) == labels).float().mean()


def accuracy(model: nn.Module, split: Split) -> float:
    return evaluate(model, correct_fraction, split)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    train: Split,
    val: Split,
    epochs: int,
    batch_size: int,
    seed: int,
    report: Report,
    start_epoch: int = 1,
    val_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_name: str = "loss",
    every_second: Callable[[], None] | None = None,
    precision: str = "fp32",
) -> None:
    """Train for epochs start_epoch..epochs, calling report(epoch, metrics) after each.

    metrics: train_<loss_name>, val_<loss_name>, epoch_seconds, and whatever val_metrics adds;
    one name per kind of loss (the CAE's "loss" is MSE per pixel, the VAE's "elbo" nats per
    image, the classifier's "nll"), so MLflow's charts never mix units. A scheduler steps once
    per epoch (resuming, pass one already stepped start_epoch - 1 times). A loss that turns NaN
    or infinite raises Diverged at once, before that epoch is reported. every_second and precision
    ("fp32" or "bf16", from training_precision): train_epoch, and the validation pass's.
    """
    on_cuda = next(model.parameters()).is_cuda
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # shapes repeat every step: let cuDNN pick its fastest kernels
    else:
        # oneDNN's convolutions run faster on channels-last weights (NHWC): +20% images per second
        # at c=8, +25% at c=32 on this CPU. In place, so the optimiser keeps its parameters.
        model.to(memory_format=torch.channels_last)
    torch.set_flush_denormal(True)  # this thread's arithmetic; flush_denormals_ covers the weights
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        if not on_cuda:  # GPUs run denormals at full speed; counting them would sync every epoch
            flush_denormals_(model)
        train_loss = train_epoch(
            model, loss_fn, optimizer, train, batch_size, epoch_generator(seed, epoch), every_second, precision
        )
        if scheduler is not None:
            scheduler.step()
        metrics = {f"train_{loss_name}": train_loss, f"val_{loss_name}": evaluate(model, loss_fn, val, 0, precision)}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise Diverged(epoch, metrics)
        if val_metrics is not None:
            metrics.update(val_metrics(model))
        metrics["epoch_seconds"] = time.perf_counter() - started
        report(epoch, metrics)
