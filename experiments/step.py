"""The one way to be a step: `open_step` loads the data onto the device, opens the step's
MLflow run with its config as params and the data as inputs, seeds every random source, and
closes the run FINISHED, FAILED or KILLED. The step's own code is then its science: what it
trains, and what it logs through `step.run`."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from experiments.config import CommonConfig, config_params
from experiments.data import FashionMNIST, load_fashion_mnist
from experiments.tracking.runs import log_dataset, start_step_run
from experiments.tracking.step_run import StepRun
from experiments.training import seed_everything


@dataclass
class Step:
    name: str
    run: StepRun  # where the step logs
    data: FashionMNIST | None  # train, val and test splits, on `device` unless asked otherwise
    device: torch.device
    experiment_id: str

    @property
    def run_id(self) -> str:
        return self.run.run_id


@contextlib.contextmanager
def open_step(
    name: str,
    config: CommonConfig,
    *,
    data: bool = True,
    data_on_device: bool = True,
    params: dict[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Step]:
    """Everything a step does around its science. The data is read before the run opens, so
    missing or corrupt files leave no run behind."""
    dataset = None
    if data:
        dataset = load_fashion_mnist(config.data_dir, train_subset=config.train_subset, seed=config.seed)
        if data_on_device:
            dataset = dataset.to(config.torch_device)
    with start_step_run(name, params or config_params(config), resume_run_id) as run:
        if dataset is not None:
            log_dataset(dataset)
        seed_everything(config.seed)
        yield Step(
            name,
            StepRun(run.info.run_id, epochs=getattr(config, "epochs", 0)),
            dataset,
            config.torch_device,
            run.info.experiment_id,
        )
