"""Training throughput, side by side in one process: the seed's DataLoader loop, fmae's loop as
it was (contiguous weights, foreach optimiser), fmae's loop now (channels-last weights, fused
optimiser), and bf16 autocast for reference. Images per second of one Adam epoch."""

import gzip
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from experiments.data import FILES, find_data_dir, load_fashion_mnist
from experiments.training import (
    EVAL_BATCH,
    epoch_generator,
    evaluate,
    make_optimizer,
    train_epoch,
    training_precision,
)
from fmae_models import CAE, CAEConfig

BEFORE = "fp32, contiguous, foreach Adam (fmae before)"
FP32 = "fp32, channels-last, fused Adam"
BF16 = "bf16 autocast, channels-last, fused Adam"
VARIANTS = {  # name -> (channels-last weights, fused optimiser, bf16 autocast)
    BEFORE: (False, False, False),
    FP32: (True, True, False),
    BF16: (True, True, True),
}
# The validation pass of an epoch as it was (contiguous weights, 2048 images a batch) and as it
# is on the CPU (channels-last, EVAL_BATCH, in the precision fmae trains with): with it, a trial's
# epoch as a search meets it.
VALIDATION = {"before": (False, 2048), "now": (True, EVAL_BATCH["cpu"])}
SEED = "seed-style DataLoader (torchvision)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_and_optimizer(c: int, device: torch.device, channels_last: bool, fused: bool):
    torch.manual_seed(0)
    model = CAE(CAEConfig(n_channels=c, encoded_space_dim=14)).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if fused:
        return model, make_optimizer("adam", model.parameters(), 1e-3, 1e-5)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, foreach=True)


def fmae_epoch(data, c: int, device: torch.device, channels_last: bool, fused: bool, bf16: bool) -> float:
    """Images per second of one epoch of fmae's loop (experiments.training.train_epoch), after a warm-up."""
    model, optimizer = model_and_optimizer(c, device, channels_last, fused)

    def loss(model, images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return F.mse_loss(model(images).float(), images)

    warm = type(data)(data.inputs[:2048], data.labels[:2048])
    train_epoch(model, loss, optimizer, warm, 256, epoch_generator(0, 0))  # allocator, oneDNN/cuDNN choices
    sync(device)
    started = time.perf_counter()
    train_epoch(model, loss, optimizer, data, 256, epoch_generator(0, 1))
    sync(device)
    return len(data) / (time.perf_counter() - started)


def validation_seconds(val, c: int, device: torch.device, channels_last: bool, batch: int, precision: str) -> float:
    """Seconds of one validation pass (experiments.training.evaluate) over val, after a warm-up."""
    model, _ = model_and_optimizer(c, device, channels_last, False)

    def loss(model, images, labels):
        return F.mse_loss(model(images), images)

    evaluate(model, loss, type(val)(val.inputs[:2048], val.labels[:2048]), batch, precision)
    sync(device)
    started = time.perf_counter()
    evaluate(model, loss, val, batch, precision)
    sync(device)
    return time.perf_counter() - started


def seed_style_epoch(c: int, device: torch.device, n_images: int) -> float:
    """The notebook's loop: torchvision's dataset decoded image by image through a DataLoader."""
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        raw = Path(root, "FashionMNIST", "raw")
        raw.mkdir(parents=True)
        for name in FILES.values():
            (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((find_data_dir() / name).read_bytes()))
        dataset = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n_images)), 256, shuffle=True)
        model, optimizer = model_and_optimizer(c, device, False, False)
        sync(device)
        started = time.perf_counter()
        for images, _ in loader:
            images = images.to(device)
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the notebook logs each batch's loss
        sync(device)
    return n_images / (time.perf_counter() - started)


def fmae_now(device: torch.device) -> str:
    """The variant fmae trains with on device (precision=auto: bf16 on CPUs with AMX)."""
    return BF16 if training_precision("auto", device) == "bf16" else FP32


def epoch_path(when: str, n_val: int) -> str:
    return f"epoch with validation on {n_val:,}: {when}"


def label(name: str, now: str) -> str:
    return f"{name} (fmae now)" if name == now else name


def measure(device: torch.device, n_images: int, widths=(8, 32), repeats: int = 5) -> list[dict]:
    """Each variant at each width, interleaved `repeats` times: rows with the median images/s and
    the median of the ratios to fmae's loop as it was, each taken within one repeat (this
    machine's speed drifts between minutes more than between neighbouring epochs)."""
    splits = load_fashion_mnist(train_subset=n_images).to(device)
    data, val = splits.train, splits.val
    now, rows = fmae_now(device), []
    trains_with = {"before": BEFORE, "now": now}
    for c in widths:
        epochs = [epoch_path(v, len(val)) for v in VALIDATION]
        runs = {name: [] for name in (SEED, *VARIANTS, *epochs)}
        for _ in range(repeats):
            runs[SEED].append(seed_style_epoch(c, device, n_images))
            for name, (channels_last, fused, bf16) in VARIANTS.items():
                runs[name].append(fmae_epoch(data, c, device, channels_last, fused, bf16))
            for when, (channels_last, batch) in VALIDATION.items():  # the epoch: training, then validation
                training = n_images / runs[trains_with[when]][-1]
                precision = "bf16" if trains_with[when] == BF16 else "fp32"  # fit validates as it trains
                seconds = training + validation_seconds(val, c, device, channels_last, batch, precision)
                runs[epoch_path(when, len(val))].append(n_images / seconds)
        for name, speeds in runs.items():
            # an epoch's row compares with the epoch as it was, a training row with training as it was
            baseline = runs[epoch_path("before", len(val)) if name in epochs else BEFORE]
            ratios = [speed / before for speed, before in zip(speeds, baseline)]
            speed, ratio = statistics.median(speeds), statistics.median(ratios)
            rows.append({"c": c, "path": label(name, now), "images_per_s": speed, "ratio": ratio})
    return rows
