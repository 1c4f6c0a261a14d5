"""FashionMNIST from its four original idx files, held in memory as tensors."""

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.errors import UserError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
DOWNLOAD_DIR = Path("data")
N_TRAIN, N_TEST = 60_000, 10_000
VAL_SIZE = 10_000  # the seeded hold-out of the training set
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # the idx headers of uint8 3-D and 1-D arrays


@dataclass
class Split:
    """Inputs and labels (N,) int64, on one device. The inputs are images (N, 1, 28, 28)
    float32 in [0, 1], or, for a frozen encoder's head, their codes (N, d)."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.inputs.to(device), self.labels.to(device))


@dataclass
class FashionMNIST:
    train: Split
    val: Split
    test: Split
    source: str  # folder the files were read from

    def to(self, device: torch.device | str) -> "FashionMNIST":
        return FashionMNIST(self.train.to(device), self.val.to(device), self.test.to(device), self.source)

    def pack(self) -> "PackedFashionMNIST":
        return PackedFashionMNIST(pack_split(self.train), pack_split(self.val), pack_split(self.test), self.source)


@dataclass(frozen=True)
class PackedSplit:
    """A split as the idx files hold it: uint8 numpy arrays, a quarter of the float32 bytes,
    which Ray's object store hands to every trial on a node without a copy (numpy is
    zero-copy there; torch tensors are pickled and copied into each trial)."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8

    def unpack(self, device: torch.device | str) -> Split:
        with warnings.catch_warnings():  # object-store arrays are read-only; we only read them
            warnings.simplefilter("ignore", UserWarning)
            images, labels = torch.from_numpy(self.images), torch.from_numpy(self.labels)
        # uint8 travels to the device, the float copy is made there: (N, 28, 28) -> (N, 1, 28, 28)
        return Split(images.to(device).unsqueeze(1).float().div_(255.0), labels.to(device).long())


@dataclass(frozen=True)
class PackedFashionMNIST:
    train: PackedSplit
    val: PackedSplit
    test: PackedSplit
    source: str

    def unpack(self, device: torch.device | str) -> FashionMNIST:
        return FashionMNIST(self.train.unpack(device), self.val.unpack(device), self.test.unpack(device), self.source)


def pack_split(split: Split) -> PackedSplit:
    """Exact: every pixel is k/255 for a whole k."""
    images = split.inputs.squeeze(1).mul(255.0).round_().to(torch.uint8)  # (N, 1, 28, 28) -> (N, 28, 28)
    return PackedSplit(images.cpu().numpy(), split.labels.to(torch.uint8).cpu().numpy())


def has_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES.values())


def find_data_dir(data_dir: str = "") -> Path:
    """data_dir, else $FMAE_DATA_DIR, else the Debian package's folder, else a download."""
    if data_dir:
        folder = Path(data_dir).expanduser()
        if not has_files(folder):
            raise UserError(
                f"data_dir={data_dir!r} does not hold the four FashionMNIST files "
                f"({', '.join(FILES.values())}). Point data_dir at the folder that has them, or "
                "leave it empty to use $FMAE_DATA_DIR or the Debian package "
                "(apt-get install dataset-fashion-mnist)."
            )
        return folder
    candidates = [Path(p) for p in [os.environ.get("FMAE_DATA_DIR", "")] if p]
    candidates += [DEBIAN_DIR, DOWNLOAD_DIR, DOWNLOAD_DIR / "FashionMNIST" / "raw"]
    for folder in candidates:
        if has_files(folder):
            return folder
    return download(DOWNLOAD_DIR)


def download(root: Path) -> Path:
    """torchvision's downloader: the fallback on a machine with internet."""
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        TorchvisionFashionMNIST(str(root), train=True, download=True)
        TorchvisionFashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no data"
        raise UserError(
            "FashionMNIST was not found (data_dir empty, $FMAE_DATA_DIR unset, nothing in "
            f"{DEBIAN_DIR}) and downloading it failed ({exc}). Install the Debian package "
            "(apt-get install dataset-fashion-mnist) or pass data_dir=FOLDER holding the four "
            "*-ubyte.gz files."
        ) from exc
    return root / "FashionMNIST" / "raw"


def read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """One idx file, checked against the header FashionMNIST must have."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable gzip file ({exc}). Replace it with an intact copy.") from exc
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise UserError(
            f"{path} does not start with the idx magic number {magic}: "
            "it is not the FashionMNIST file it is named after."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = (count, 28, 28) if ndim == 3 else (count,)
    if dims != expected or len(raw) != header + int(np.prod(dims)):
        raise UserError(
            f"{path} holds an array of shape {dims} in {len(raw) - header} bytes; FashionMNIST's is "
            f"{expected}. The file is truncated or not FashionMNIST: replace it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(folder: Path, kind: str, count: int) -> Split:
    images = read_idx(folder / FILES[f"{kind}_images"], IMAGES_MAGIC, count)
    labels = read_idx(folder / FILES[f"{kind}_labels"], LABELS_MAGIC, count)
    if labels.max() > 9:
        raise UserError(f"{folder / FILES[f'{kind}_labels']} has labels above 9: it is not FashionMNIST.")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)  # (N, 28, 28) -> (N, 1, 28, 28)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def check_train_subset(train_subset: int, val_size: int = VAL_SIZE) -> None:
    if train_subset < 0:
        raise UserError(f"train_subset={train_subset} must be 0 (all) or a positive number of images.")
    if train_subset > N_TRAIN - val_size:
        raise UserError(
            f"train_subset={train_subset} is more than the {N_TRAIN - val_size:,} training images "
            f"left beside the {val_size:,} held out for validation. Pass at most {N_TRAIN - val_size}, "
            "or 0 for all of them."
        )


def load_fashion_mnist(
    data_dir: str = "", val_size: int = VAL_SIZE, train_subset: int = 0, seed: int = 0
) -> FashionMNIST:
    """Train, validation (a seeded hold-out of the training set) and test splits.

    train_subset > 0 keeps only that many training images (validation stays as large, up to
    what the training set leaves); the test split is always the full 10,000.
    """
    check_train_subset(train_subset, val_size)
    folder = find_data_dir(data_dir)
    full = read_split(folder, "train", N_TRAIN)
    test = read_split(folder, "test", N_TEST)
    order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_subset:
        train_idx = train_idx[:train_subset]
    pick = lambda idx: Split(full.inputs[idx], full.labels[idx])  # noqa: E731
    return FashionMNIST(pick(train_idx), pick(val_idx), test, str(folder))


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Batches cut from tensors already in memory; shuffled when a generator is given."""
    n = len(split)
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(split.inputs.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield split.inputs[idx], split.labels[idx]
    else:
        for start in range(0, n, batch_size):
            yield split.inputs[start : start + batch_size], split.labels[start : start + batch_size]
