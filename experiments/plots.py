"""Figures fmae logs: matplotlib only, Agg backend, one function per figure."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.data import CLASS_NAMES, Split  # noqa: E402

N_SAMPLES = 32  # generated images in a samples figure
GAP = 4  # white pixels between the images of a grid
GRAY = matplotlib.colormaps["gray"].with_extremes(bad="white")  # NaN (the gaps) drawn white


@torch.no_grad()
def reconstructions_figure(model: torch.nn.Module, test: Split, n: int = 10) -> plt.Figure:
    """The first test image of each class above model's reconstruction of it (model: image -> image)."""
    model.eval()
    labels = test.labels.cpu()
    idx = torch.stack([torch.nonzero(labels == k)[0, 0] for k in range(n)])
    images = test.inputs[idx.to(test.inputs.device)]
    return plot_reconstructions(images, model(images))


def plot_reconstructions(images: torch.Tensor, recon: torch.Tensor, title: str = "") -> plt.Figure:
    """Test images (top row) above their reconstructions (bottom row), as in the seed."""
    fig, ax = plt.subplots(figsize=(1.2 * len(images), 2.8))
    show_tiled(ax, torch.stack([images, recon]), ["original", "reconstructed"])
    fig.suptitle(title or "Test images and their reconstructions")
    fig.tight_layout()
    return fig


def plot_image_grid(images: torch.Tensor, title: str, ncols: int = 8) -> plt.Figure:
    """Images (N, 1, 28, 28) in a grid: generated samples, interpolations."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    blank = torch.full((nrows * ncols - n, *images.shape[1:]), float("nan"), device=images.device)
    fig, ax = plt.subplots(figsize=(1.1 * ncols, 1.1 * nrows + 0.5))
    show_tiled(ax, torch.cat([images, blank]).reshape(nrows, ncols, *images.shape[1:]))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_tiled(ax: plt.Axes, images: torch.Tensor, row_labels: list[str] | None = None, fontsize: float = 10) -> None:
    """Images (R, C, 1, H, W) as one picture on ax, R rows of C, white between them; one image
    per axes took 10 ms each to lay out and draw (a finished trial's figures, 0.5 s of its CPU)."""
    rows, cols, _, h, w = images.shape
    padded = torch.nn.functional.pad(images[:, :, 0].detach().float().cpu(), (0, GAP, 0, GAP), value=float("nan"))
    picture = padded.permute(0, 2, 1, 3).reshape(rows * (h + GAP), cols * (w + GAP))[:-GAP, :-GAP]
    ax.imshow(picture.numpy(), cmap=GRAY, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(
        [r * (h + GAP) + h / 2 for r in range(rows)] if row_labels else [],
        row_labels or [],
        rotation=90,
        va="center",
        fontsize=fontsize,
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_latent_2d(points: np.ndarray, labels: np.ndarray, title: str) -> plt.Figure:
    """2-D codes coloured by class, with the class names in the legend."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(CLASS_NAMES):
        mask = labels == k
        ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(k), label=name, alpha=0.7)
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: np.ndarray, title: str = "Confusion matrix (test set)") -> plt.Figure:
    """Counts with true classes as rows, labelled with the class names."""
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > threshold else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_interpolations(strips: torch.Tensor, row_labels: list[str], title: str) -> plt.Figure:
    """Rows of decoded images (P, S, 1, 28, 28), each walking a straight line in latent space
    from one test image's code (left) to another's (right)."""
    n_rows, n_steps = strips.shape[:2]
    fig, ax = plt.subplots(figsize=(1.0 * n_steps + 1.2, 1.05 * n_rows + 0.5))
    show_tiled(ax, strips, row_labels, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
