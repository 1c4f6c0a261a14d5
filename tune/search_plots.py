"""The search's figures: parallel coordinates, learning curves, parameter importances, the
size–quality front."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG_SCALE = {"lr", "weight_decay"}


def plot_parallel_coordinates(results: pd.DataFrame, params: list[str], metric: str = "best_val_loss") -> plt.Figure:
    """One line per trial across the hyperparameters, coloured by its best val_loss; dashed lines
    are trials the scheduler stopped early. A hyperparameter a trial did not use (momentum for
    adam) is left empty: its line breaks there rather than show a value that did nothing."""
    fig, ax = plt.subplots(figsize=(11, 5))
    columns = params + [metric]
    scaled, ticks = {}, {}
    for col in columns:
        values = results[col]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):  # categorical
            levels = sorted(values.dropna().astype(str).unique())
            pos = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
            scaled[col] = np.array([pos.get(str(v), np.nan) if pd.notna(v) else np.nan for v in values], float)
            ticks[col] = [(pos[v], v) for v in levels]
        else:
            x = values.astype(float).to_numpy()
            x = np.log10(x) if col in LOG_SCALE else x
            if not np.isfinite(x).any():  # no trial used it
                scaled[col], ticks[col] = x, []
                continue
            lo, hi = np.nanmin(x), np.nanmax(x)
            scaled[col] = (x - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(x), 0.5, np.nan)
            raw_lo, raw_hi = values.min(), values.max()
            ticks[col] = [(0, f"{raw_lo:.3g}"), (1, f"{raw_hi:.3g}")] if hi > lo else [(0.5, f"{raw_lo:.3g}")]
    score = results[metric].astype(float).to_numpy()
    norm = plt.Normalize(np.nanmin(score), np.nanmax(score))
    cmap = plt.get_cmap("viridis_r")
    xs = np.arange(len(columns))
    for i in np.argsort(-score):  # best trials drawn last, on top
        ys = np.array([scaled[c][i] for c in columns])
        used = np.isfinite(ys)  # the line passes by an axis the trial did not use
        style = "--" if results["pruned"].iloc[i] else "-"
        ax.plot(xs[used], ys[used], style, color=cmap(norm(score[i])), alpha=0.85, linewidth=1.6)
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


def plot_param_importances(importances: dict[str, float], n_trials: int, minimum: int) -> plt.Figure:
    """Horizontal bars, most important on top (PED-ANOVA), saying how many finished trials they
    rest on; below `minimum` they are greyed and the title says the ranking is not yet meaningful."""
    fig, ax = plt.subplots(figsize=(7, 4))
    enough = n_trials >= minimum
    if importances:
        names = list(importances)[::-1]
        ax.barh(
            names,
            [importances[n] for n in names],
            color="tab:blue" if enough else "lightgrey",
            hatch=None if enough else "//",
            edgecolor="grey",
        )
        ax.set_xlabel(f"importance for val_loss (PED-ANOVA on {n_trials} finished trials)")
    else:
        ax.text(0.5, 0.5, f"{n_trials} finished trial(s): too few to rank hyperparameters", ha="center", va="center")
        ax.axis("off")
    if enough:
        ax.set_title(f"Hyperparameter importances ({n_trials} finished trials)")
    else:
        ax.set_title(f"Not yet meaningful: {n_trials} finished trials (needs {minimum})", color="darkred")
    fig.tight_layout()
    return fig


def plot_pareto_front(front: pd.DataFrame) -> plt.Figure:
    """Test loss against encoder parameters and against CPU ms per image, one point per trial
    that ran to the end; the trials on the front are labelled and joined."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (col, label) in zip(
        axes,
        (("encoder_params", "encoder parameters"), ("cpu_ms_per_image", "CPU ms per image (one thread, batch 256)")),
    ):
        ax.scatter(front[col], front["test_loss"], color="lightgrey", edgecolor="grey", zorder=2)
        on = front[front["on_front"]].sort_values(col)
        ax.plot(on[col], on["test_loss"], "o-", color="tab:red", zorder=3)
        for row in on.itertuples():
            ax.annotate(
                str(row.trial).split("-")[0],
                (getattr(row, col), row.test_loss),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("test_loss (MSE per pixel)")
    fig.suptitle(f"Size–quality front: {int(front['on_front'].sum())} of {len(front)} finished trials (red)")
    fig.tight_layout()
    return fig
