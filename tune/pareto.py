"""The size–quality front of a search: each finished trial's test loss against its encoder's
size (parameters) and speed (CPU milliseconds per image); the trials no other trial beats on
both counts of either pair are on the front."""

import time

import pandas as pd
import torch

from fmae_models import CAEConfig, Encoder

TIMED_BATCH = 256  # images per timed forward pass
TIMED_REPEATS = 7  # passes timed; the median is kept


def encoder_params(config: dict) -> int:
    return sum(p.numel() for p in Encoder(CAEConfig(**config)).parameters())


@torch.no_grad()
def cpu_ms_per_image(config: dict) -> float:
    """One CPU thread, a batch of TIMED_BATCH: an untrained encoder of the same architecture runs
    as fast as the trained one (fmae flushes denormal weights), so no checkpoint is needed."""
    encoder, images = Encoder(CAEConfig(**config)).eval(), torch.rand(TIMED_BATCH, 1, 28, 28)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder(images)  # warm-up: first-call allocations
        times = []
        for _ in range(TIMED_REPEATS):
            started = time.perf_counter()
            encoder(images)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return sorted(times)[TIMED_REPEATS // 2] * 1000 / TIMED_BATCH


def non_dominated(losses: list[float], costs: list[float]) -> list[bool]:
    """For each point, whether no other point is at least as good on both and better on one."""
    return [
        not any(l2 <= l1 and c2 <= c1 and (l2 < l1 or c2 < c1) for l2, c2 in zip(losses, costs))
        for l1, c1 in zip(losses, costs)
    ]


def size_quality_front(trials: list[dict]) -> pd.DataFrame:
    """trials: {"trial", "mlflow_run_id", "test_loss", "config"} of each trial that ran to the end.
    One row per trial, with on_front (of test loss against size, or against speed)."""
    architecture = ("n_channels", "encoded_space_dim", "batch_norm")
    rows = [
        {
            "trial": t["trial"],
            "mlflow_run_id": t["mlflow_run_id"],
            "test_loss": t["test_loss"],
            **{k: t["config"][k] for k in architecture},
            "encoder_params": encoder_params({k: t["config"][k] for k in architecture}),
            "cpu_ms_per_image": cpu_ms_per_image({k: t["config"][k] for k in architecture}),
        }
        for t in trials
    ]
    table = pd.DataFrame(
        rows, columns=["trial", "mlflow_run_id", "test_loss", *architecture, "encoder_params", "cpu_ms_per_image"]
    )
    losses = table["test_loss"].tolist()
    by_size = non_dominated(losses, table["encoder_params"].tolist())
    by_speed = non_dominated(losses, table["cpu_ms_per_image"].tolist())
    table["on_front"] = [a or b for a, b in zip(by_size, by_speed)]
    return table.sort_values("encoder_params", ignore_index=True)


def smallest_within(table: pd.DataFrame, tolerance: float = 0.05) -> pd.Series | None:
    """The trial with the smallest encoder whose test loss is within tolerance of the best."""
    if table.empty:
        return None
    near = table[table["test_loss"] <= (1 + tolerance) * table["test_loss"].min()]
    return near.sort_values(["encoder_params", "test_loss"]).iloc[0]
