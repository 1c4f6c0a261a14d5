"""How a step (or a search trial) writes to its run: metrics per epoch and at the end, params,
tags, tables, figures and models. Steps reach MLflow only through StepRun."""

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from experiments.tracking.models import log_module
from experiments.tracking.registry import register_model
from experiments.tracking.runs import NOTE, log_new_params


def log_figures(client: MlflowClient, run_id: str, figures: dict) -> None:
    """Log each matplotlib figure as a PNG artifact of run_id and close it."""
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        client.log_figure(run_id, figure, name)
        plt.close(figure)


class StepRun:
    """One MLflow run, as fmae's steps and trials write to it."""

    ECHOED_EPOCHS = 20  # a long run's console shows about this many epoch lines; MLflow holds them all

    def __init__(self, run_id: str, echo: bool = True, epochs: int = 0):
        self.run_id, self.echo = run_id, echo
        self.echo_every = max(1, -(-epochs // self.ECHOED_EPOCHS))  # ceil: 100 epochs -> every 5th
        self.client = MlflowClient()

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @property
    def name(self) -> str:
        return self.client.get_run(self.run_id).info.run_name

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One batch; echoed as one line (an epoch's: `epoch   3  train_loss ...`)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])
        if self.echo and (step is None or step == 1 or step % self.echo_every == 0):
            prefix = f"epoch {step:3d}  " if step is not None else ""
            suffix = (
                f"  (one epoch in {self.echo_every} echoed here; MLflow holds them all)"
                if step == 1 and self.echo_every > 1
                else ""
            )
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
        self.client.set_tag(self.run_id, NOTE, markdown)

    def log_table(self, table: dict[str, list], name: str) -> None:
        self.client.log_table(self.run_id, table, name)

    def log_dict(self, values: dict, name: str) -> None:
        self.client.log_dict(self.run_id, values, name)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_figures(self, figures: dict) -> None:
        log_figures(self.client, self.run_id, figures)

    def log_model(self, model: nn.Module, name: str, kind: str, config: dict[str, Any]):
        return log_module(model, name, kind, config, run_id=self.run_id)

    def register(self, model_uri: str, name: str, score: tuple[str, float], **options):
        """registry.register_model, made by this run (options: higher_is_better, tags, about)."""
        return register_model(model_uri, name, self.run_id, score, **options)
