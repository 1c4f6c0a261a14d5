"""The loader on the real files, and what a user sees when the files are missing or broken."""

import gzip
import shutil

import numpy as np
import pytest
import torch

from experiments import cli
from experiments.data import FILES, iterate_batches, load_fashion_mnist
from experiments.errors import UserError


def test_real_files_load_with_the_expected_counts_and_range(small_data):
    d = small_data
    assert len(d.train) == 2000 and len(d.val) == 10_000 and len(d.test) == 10_000
    assert d.train.inputs.shape == (2000, 1, 28, 28)
    assert d.train.inputs.dtype == torch.float32 and d.train.labels.dtype == torch.int64
    assert 0.0 <= float(d.test.inputs.min()) and float(d.test.inputs.max()) <= 1.0
    assert set(d.test.labels.tolist()) == set(range(10))
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10  # FashionMNIST's test set is balanced


def test_packed_data_unpacks_to_exactly_the_same_tensors(small_data):
    """What the search sends to its trials (uint8, a quarter of the bytes) loses nothing."""
    packed = small_data.pack()
    assert packed.train.images.dtype == np.uint8 and packed.train.images.shape == (2000, 28, 28)
    assert packed.train.images.nbytes == small_data.train.inputs.numel()  # one byte a pixel, not four
    packed.test.images.setflags(write=False)  # as Ray's object store hands it over
    unpacked = packed.unpack("cpu")
    for name in ("train", "val", "test"):
        a, b = getattr(small_data, name), getattr(unpacked, name)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
        assert b.inputs.dtype == torch.float32 and b.labels.dtype == torch.int64


def test_full_split_sizes_and_seeded_split():
    a = load_fashion_mnist(seed=3)
    assert len(a.train) == 50_000 and len(a.val) == 10_000
    b = load_fashion_mnist(seed=3)
    c = load_fashion_mnist(seed=4)
    assert torch.equal(a.val.inputs, b.val.inputs)
    assert not torch.equal(a.val.inputs, c.val.inputs)


def test_subset_is_a_prefix_of_the_same_split():
    full = load_fashion_mnist(seed=1)
    small = load_fashion_mnist(train_subset=500, seed=1)
    assert torch.equal(small.train.inputs, full.train.inputs[:500])
    assert torch.equal(small.val.labels, full.val.labels)


def test_batches_cover_every_example_once(small_data):
    seen = torch.cat([y for _, y in iterate_batches(small_data.train, 300, torch.Generator().manual_seed(0))])
    assert len(seen) == 2000
    assert torch.equal(seen.sort().values, small_data.train.labels.sort().values)


@pytest.fixture
def data_copy(tmp_path, small_data):
    folder = tmp_path / "fm"
    shutil.copytree(small_data.source, folder)
    return folder


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not hold the four FashionMNIST files"):
        load_fashion_mnist(data_dir=str(tmp_path / "nowhere"))


def test_corrupt_file_is_a_user_error(data_copy):
    (data_copy / FILES["test_labels"]).write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="not a readable gzip"):
        load_fashion_mnist(data_dir=str(data_copy))


def test_wrong_magic_and_truncation_are_user_errors(data_copy):
    path = data_copy / FILES["test_images"]
    raw = gzip.open(path).read()
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(UserError, match="truncated"):
        load_fashion_mnist(data_dir=str(data_copy))
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    with pytest.raises(UserError, match="magic number"):
        load_fashion_mnist(data_dir=str(data_copy))


def test_command_line_reports_missing_data_with_exit_2(tmp_path, tracking, capsys):
    assert cli.main(["train_cae", "--data_dir", str(tmp_path / "nowhere"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not hold the four FashionMNIST files" in err and "Traceback" not in err
