"""Step `analyze`: the seed's latent-space study (section 1.3) for the CAE and the VAE, with
numbers behind the pictures: 5-NN accuracy and class silhouette of each latent space.

Either model may be named by any MLflow model URI: a whole autoencoder (`cae`, `vae`) or an
encoder alone (`encoder` of a train_cae/tune run, `encoder` of a vae run). An encoder alone
has no decoder, so samples and interpolations decode with the whole autoencoder its run
logged beside it (`runs:/<source run>/cae` or `/vae`), checked to hold the same encoder.
"""

import sys
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits
from torch import nn

from experiments import plots
from experiments.config import CommonConfig
from experiments.data import CLASS_NAMES, FashionMNIST, Split
from experiments.errors import UserError
from experiments.step import open_step
from experiments.tracking.models import load_module, model_lineage, source_run_id
from experiments.training import predict
from fmae_models import VAEMeanEncoder, sample_fitted_gaussian, sample_prior

STEP = "analyze"
N_NEIGHBOURS = 5  # k of the kNN probe of the latent space
N_STEPS = 10  # images per interpolation strip, both ends included
PAIRS = ((0, 3), (7, 9), (2, 8))  # T-shirt -> Dress, Sneaker -> Ankle boot, Pullover -> Bag
MIN_POINTS = 50  # t-SNE and the silhouette need a few points of each class
# What each logged kind is, and for an encoder alone, the whole model its run logs beside it.
KINDS = {
    "cae": {"cae": None, "encoder": ("cae", "cae")},
    "vae": {"vae": None, "vae_encoder": ("vae", "vae")},
}


@dataclass(frozen=True)
class Config(CommonConfig):
    cae_model_uri: str = "models:/fmae-cae-encoder@champion"  # the CAE: its encoder or whole autoencoder
    vae_model_uri: str = "models:/fmae-vae@champion"  # the VAE (or its mean encoder); the mean is the code
    n_points: int = 2000  # test codes shown by PCA and t-SNE and scored by silhouette; bounds t-SNE's cost

    def __post_init__(self):
        super().__post_init__()
        if self.n_points < MIN_POINTS:
            raise UserError(
                f"n_points={self.n_points} must be at least {MIN_POINTS}: t-SNE and the silhouette "
                "need several test codes of each class."
            )


@dataclass
class Autoencoder:
    """What the analysis needs of one model: image -> code, and code -> image if it can be found."""

    name: str  # "cae" or "vae": prefixes its metrics and artifacts
    uri: str  # the model URI the user gave
    encoder: nn.Module
    decoder: nn.Module | None
    decoder_uri: str  # where the decoder came from, or why there is none


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def find_decoder(encoder: nn.Module, model_uri: str, whole_name: str, whole_kind: str) -> tuple[nn.Module | None, str]:
    """The decoder of the autoencoder whose encoder was logged at model_uri."""
    run_id = source_run_id(model_uri)
    if not run_id:
        return None, f"no source run known for {model_uri}"
    whole_uri = f"runs:/{run_id}/{whole_name}"
    try:
        whole, _, _ = load_module(whole_uri, kinds=(whole_kind,))
    except UserError:
        return None, f"{whole_uri} not found"
    whole_encoder = VAEMeanEncoder(whole) if whole_kind == "vae" else whole.encoder
    if not same_weights(encoder, whole_encoder):
        return None, f"{whole_uri} holds a different encoder"
    return whole.decoder, whole_uri


def load_autoencoder(name: str, model_uri: str) -> Autoencoder:
    module, kind, _ = load_module(model_uri, kinds=tuple(KINDS[name]))
    if kind == "cae":
        return Autoencoder(name, model_uri, module.encoder, module.decoder, model_uri)
    if kind == "vae":
        return Autoencoder(name, model_uri, VAEMeanEncoder(module), module.decoder, model_uri)
    decoder, decoder_uri = find_decoder(module, model_uri, *KINDS[name][kind])
    if decoder is None:
        print(
            f"fmae analyze: warning: no decoder for {name} ({decoder_uri}); skipping {name}_samples.png and "
            f"{name}_interpolation.png. Log the whole autoencoder beside the encoder, or pass it as "
            f"{name}_model_uri.",
            file=sys.stderr,
        )
    return Autoencoder(name, model_uri, module, decoder, decoder_uri)


def knn_accuracy(
    train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray
) -> float:
    """How well the latent space keeps classes apart locally: 5-NN fitted on training codes."""
    knn = KNeighborsClassifier(n_neighbors=min(N_NEIGHBOURS, len(train_codes)))
    return float(knn.fit(train_codes, train_labels).score(test_codes, test_labels))


def embed_2d(codes: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The seed's two views of the codes: PCA (linear) and t-SNE (neighbourhoods)."""
    perplexity = min(30.0, (len(codes) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: on a busy machine its spinning threads made 300 points take a minute;
    # alone, thousands of points take seconds.
    with threadpool_limits(limits=1, user_api="openmp"):
        points = tsne.fit_transform(codes)
    return {"PCA": PCA(n_components=2, random_state=seed).fit_transform(codes), "t-SNE": points}


@torch.no_grad()
def interpolation_strips(model: Autoencoder, test: Split) -> tuple[torch.Tensor, list[str]]:
    """Decode evenly spaced points on the segment between the codes of two test images, per PAIRS."""
    model.encoder.eval()
    model.decoder.eval()
    labels = test.labels.cpu()
    first = {
        k: int(torch.nonzero(labels == k)[0, 0]) for k in {k for pair in PAIRS for k in pair} if (labels == k).any()
    }
    pairs = [(a, b) for a, b in PAIRS if a in first and b in first]
    t = torch.linspace(0, 1, N_STEPS, device=test.inputs.device)[:, None]  # (S, 1)
    strips = []
    for a, b in pairs:
        z = model.encoder(test.inputs[[first[a], first[b]]])  # (2, d)
        strips.append(model.decoder((1 - t) * z[0] + t * z[1]))  # (S, d) -> (S, 1, 28, 28)
    return torch.stack(strips), [f"{CLASS_NAMES[a]}\n-> {CLASS_NAMES[b]}" for a, b in pairs]


def analyze_model(model: Autoencoder, data: FashionMNIST, subset: np.ndarray, seed: int):
    """One model's metrics and figures, keyed as they are logged."""
    name, label = model.name, model.name.upper()
    train_codes, test_codes = predict(model.encoder, data.train).cpu(), predict(model.encoder, data.test).cpu().numpy()
    train_labels, test_labels = data.train.labels.cpu().numpy(), data.test.labels.cpu().numpy()
    codes, labels = test_codes[subset], test_labels[subset]
    metrics = {
        f"{name}_knn_accuracy": knn_accuracy(train_codes.numpy(), train_labels, test_codes, test_labels),
        f"{name}_silhouette": float(silhouette_score(codes, labels)),
    }
    figures = {}
    for method, points in embed_2d(codes, seed).items():
        slug = method.lower().replace("-", "")
        figures[f"{name}_{slug}.png"] = plots.plot_latent_2d(
            points, labels, f"{label} latent space ({len(codes)} test images, {method})"
        )
    if model.decoder is not None:
        generator = torch.Generator().manual_seed(seed)
        if name == "vae":
            samples = sample_prior(model.decoder, plots.N_SAMPLES, generator)
            title = "VAE samples: decoded draws from the prior N(0, I)"
        else:
            samples = sample_fitted_gaussian(model.decoder, train_codes, plots.N_SAMPLES, generator)
            title = "CAE samples: decoded draws from a Gaussian fitted to its training codes"
        figures[f"{name}_samples.png"] = plots.plot_image_grid(samples, title)
        strips, row_labels = interpolation_strips(model, data.test)
        figures[f"{name}_interpolation.png"] = plots.plot_interpolations(
            strips, row_labels, f"{label}: decoding a straight line between two test images' codes"
        )
    return metrics, figures


def lineage_tags(model: Autoencoder) -> dict[str, str]:
    tags = {k.replace("fmae.", f"fmae.{model.name}_", 1): v for k, v in model_lineage(model.uri).items()}
    tags[f"fmae.{model.name}_decoder"] = model.decoder_uri
    return tags


def run(config: Config) -> str:
    models = [load_autoencoder("cae", config.cae_model_uri), load_autoencoder("vae", config.vae_model_uri)]
    with open_step(STEP, config) as step:
        n = min(config.n_points, len(step.data.test))
        subset = np.sort(
            np.random.default_rng(config.seed).permutation(len(step.data.test))[:n]
        )  # same points for both
        found = {}
        for model in models:
            model.encoder.to(step.device)
            if model.decoder is not None:
                model.decoder.to(step.device)
            step.run.set_tags(lineage_tags(model))
            metrics, figures = analyze_model(model, step.data, subset, config.seed)
            step.run.log_metrics(metrics)
            step.run.log_figures(figures)
            found.update(metrics)
        step.run.describe(
            f"**Both latent spaces compared** on {n:,} test images: 5-NN accuracy "
            f"CAE **{found['cae_knn_accuracy']:.3f}**, "
            f"VAE **{found['vae_knn_accuracy']:.3f}**; class silhouette CAE {found['cae_silhouette']:.3f}, VAE "
            f"{found['vae_silhouette']:.3f}. CAE from `{config.cae_model_uri}`, VAE from `{config.vae_model_uri}`. "
            "Figures: *_pca.png, *_tsne.png, *_samples.png, *_interpolation.png."
        )
        return step.run_id
