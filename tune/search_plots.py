"""The search's figures: parallel coordinates, learning curves, parameter importances."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG_SCALE = {"lr", "weight_decay"}


def plot_parallel_coordinates(results: pd.DataFrame, params: list[str], metric: str = "best_val_loss") -> plt.Figure:
    """One line per trial across the hyperparameters, coloured by its best val_loss;
    dashed lines are trials the scheduler stopped early."""
    fig, ax = plt.subplots(figsize=(11, 5))
    columns = params + [metric]
    scaled, ticks = {}, {}
    for col in columns:
        values = results[col]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):  # categorical
            levels = sorted(values.astype(str).unique())
            pos = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
            scaled[col] = values.astype(str).map(pos).to_numpy(float)
            ticks[col] = [(pos[v], v) for v in levels]
        else:
            x = np.log10(values.astype(float)) if col in LOG_SCALE else values.astype(float).to_numpy()
            lo, hi = np.nanmin(x), np.nanmax(x)
            scaled[col] = (x - lo) / (hi - lo) if hi > lo else np.full(len(x), 0.5)
            raw_lo, raw_hi = values.min(), values.max()
            ticks[col] = [(0, f"{raw_lo:.3g}"), (1, f"{raw_hi:.3g}")] if hi > lo else [(0.5, f"{raw_lo:.3g}")]
    score = results[metric].astype(float).to_numpy()
    norm = plt.Normalize(np.nanmin(score), np.nanmax(score))
    cmap = plt.get_cmap("viridis_r")
    xs = np.arange(len(columns))
    for i in np.argsort(-score):  # best trials drawn last, on top
        ys = [scaled[c][i] for c in columns]
        style = "--" if results["pruned"].iloc[i] else "-"
        ax.plot(xs, ys, style, color=cmap(norm(score[i])), alpha=0.85, linewidth=1.6)
    for x, col in zip(xs, columns):
        ax.axvline(x, color="grey", linewidth=0.8)
        for y, label in ticks[col]:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(xs, columns, rotation=20)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    ax.set_title("Search: hyperparameters of every trial (dashed: stopped early)")
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: dict[str, pd.Series], title: str) -> plt.Figure:
    """val_loss per epoch, one line per trial."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, series in curves.items():
        ax.plot(series.index, series.values, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_loss (MSE per pixel)")
    ax.set_yscale("log")
    ax.set_title(title)
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_param_importances(importances: dict[str, float], note: str = "") -> plt.Figure:
    """Horizontal bars, most important on top (Optuna's fANOVA importances)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance for val_loss (fANOVA)")
    else:
        ax.text(0.5, 0.5, note or "not enough finished trials", ha="center", va="center")
        ax.axis("off")
    ax.set_title("Hyperparameter importances")
    fig.tight_layout()
    return fig
