"""Data layer: files, splits, statistics and downloads on the genuine datasets (slow); the CSV
form, device batches and bad input on small generated files (tests/small_data.py)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from fmnist_lab.data import DeviceBatches, idx_intact, load_splits, read_csv, stratified_split
from fmnist_lab.datasets import DATA_ENV
from fmnist_lab.errors import UserError

from . import small_data as small
from .conftest import run_cli

FMNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full_fmnist(data_root, cache_dir):
    """Fashion-MNIST with no validation split: all 60,000 training images."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(_target_="fmnist_lab.data.IdxData", name="fashion_mnist",
                                root=str(data_root),
                                cache_dir=str(cache_dir), val_size=0, split_seed=0,
                                train_fraction=1.0))  # fmt: skip
    return load_splits(cfg)


@pytest.mark.slow
def test_fashion_mnist_files_shapes_and_statistics(data_root, cache_dir, full_fmnist):
    for name, digest in FMNIST_GZ_MD5.items():
        assert md5(data_root / "fashion-mnist" / name) == digest
    # torchvision extracted the real files into the cache; their MD5s are the published ones.
    raw = cache_dir / "FashionMNIST" / "raw"
    assert md5(raw / "train-images-idx3-ubyte") == "f4a8712d7a061bf5bd6d2ca38dc4d50a"
    assert md5(raw / "t10k-images-idx3-ubyte") == "8181f5470baa50b63fa0f6fddb340f0a"

    s = full_fmnist
    assert s.train_x.shape == (60000, 1, 28, 28) and s.train_x.dtype == torch.uint8
    assert s.test_x.shape == (10000, 1, 28, 28) and s.test_y.shape == (10000,)
    assert len(s.val_y) == 0
    assert torch.equal(s.train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(s.test_y.bincount(), torch.full((10,), 1000))
    assert s.mean == pytest.approx(0.2860, abs=1e-4)
    assert s.std == pytest.approx(0.3530, abs=1e-4)
    test_pixels = s.test_x.float() / 255
    assert test_pixels.mean().item() == pytest.approx(0.2868, abs=1e-4)
    assert (
        s.classes[0] == "T-shirt/top" and s.classes[6] == "Shirt" and s.classes[9] == "Ankle boot"
    )


@pytest.mark.slow
def test_mnist_loads_with_its_statistics(make_real_cfg):
    s = load_splits(make_real_cfg("data=mnist", "data.val_size=0").data)
    assert s.train_x.shape == (60000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert s.mean == pytest.approx(0.1307, abs=1e-4)
    assert s.std == pytest.approx(0.3081, abs=1e-4)


@pytest.mark.slow
def test_validation_split_is_stratified_disjoint_and_fixed(make_real_cfg, full_fmnist):
    s = load_splits(make_real_cfg().data)
    assert len(s.val_y) == 5000 and len(s.train_y) == 55000
    assert torch.equal(s.val_y.bincount(), torch.full((10,), 500))
    # Every training image lands in exactly one of the two parts.
    merged = torch.cat([s.train_x, s.val_x]).view(60000, -1)
    full = full_fmnist.train_x.view(60000, -1)
    assert torch.equal(merged.sum(0, dtype=torch.int64), full.sum(0, dtype=torch.int64))

    again = load_splits(make_real_cfg().data)
    assert torch.equal(again.val_x, s.val_x)
    other = load_splits(make_real_cfg("data.split_seed=1").data)
    assert not torch.equal(other.val_x, s.val_x)
    custom = load_splits(make_real_cfg("data.val_size=1234").data)
    assert len(custom.val_y) == 1234 and len(custom.train_y) == 60000 - 1234


def test_stratified_split_keeps_class_shares_and_exact_size():
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    keep, held = stratified_split(y, 33, seed=3)
    assert len(held) == 33 and len(keep) == 67
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert y[held].bincount().tolist() == [23, 7, 3]


@pytest.mark.slow
def test_train_fraction_takes_a_stratified_subset(make_real_cfg):
    s = load_splits(make_real_cfg("data.train_fraction=0.1").data)
    assert len(s.train_y) == 5500
    assert torch.equal(s.train_y.bincount(), torch.full((10,), 550))
    assert len(s.val_y) == 5000  # validation is never shrunk


def test_device_batches_cover_every_image_in_a_new_order_each_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 28, 28).contiguous()
    y = torch.arange(10)
    batches = DeviceBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 2  # the ragged last batch is dropped in training
    epochs = [torch.cat([yb for _, yb in batches]) for _ in range(3)]
    assert all(len(e) == 8 and len(set(e.tolist())) == 8 for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    for xb, yb in batches:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # images stay with their labels
    ordered = DeviceBatches(x, y, batch_size=4)
    assert len(ordered) == 3
    assert torch.equal(torch.cat([yb for _, yb in ordered]), y)


# --- the Kaggle CSV form: small_data writes its first 600 training and 200 test images as CSV


@pytest.fixture
def csv_dir(small_data) -> Path:
    return small_data.root


def test_csv_loader_reads_what_the_idx_files_hold(make_cfg, csv_dir):
    s = load_splits(make_cfg("data=fashion_mnist_csv", f"data.root={csv_dir}",
                             "data.val_size=100").data)  # fmt: skip
    idx = load_splits(make_cfg("data.val_size=0").data)  # the same images, as IDX files
    assert (small.N_CSV_TRAIN, small.N_CSV_TEST) == (600, 200)
    assert len(s.train_y) == 500 and len(s.val_y) == 100
    assert torch.equal(s.val_y.bincount(minlength=10).sum(), torch.tensor(100))
    assert torch.equal(s.test_x, idx.test_x[:200])
    assert torch.equal(s.test_y, idx.test_y[:200])
    merged = torch.cat([s.train_x, s.val_x]).view(600, -1).sum(0, dtype=torch.int64)
    assert torch.equal(merged, idx.train_x[:600].view(600, -1).sum(0, dtype=torch.int64))


def corrupt_csv(csv_dir: Path, tmp_path: Path, line: int, column: int, value: str | None) -> Path:
    """Copy the CSVs to tmp_path with one cell of the train file replaced (None: removed)."""
    shutil.copy(csv_dir / "fashion-mnist_test.csv", tmp_path)
    lines = (csv_dir / "fashion-mnist_train.csv").read_text().splitlines()
    cells = lines[line - 1].split(",")
    if value is None:
        del cells[column]
    else:
        cells[column] = value
    lines[line - 1] = ",".join(cells)
    (tmp_path / "fashion-mnist_train.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (5, 100, None, "line 5: 784 columns, expected 785"),
        (7, 12, "abc", "line 7, column pixel12: 'abc' is not an integer"),
        (9, 300, "256", "line 9, column pixel300: pixel value 256 is outside 0..255"),
        (4, 1, "-1", "line 4, column pixel1: pixel value -1 is outside 0..255"),
        (11, 0, "10", "line 11, column label: label 10 is outside 0..9"),
    ],
)
def test_csv_errors_name_the_row_and_column(make_cfg, csv_dir, tmp_path, line, column, value,
                                            message):  # fmt: skip
    root = corrupt_csv(csv_dir, tmp_path, line, column, value)
    with pytest.raises(UserError, match=message):
        load_splits(make_cfg("data=fashion_mnist_csv", f"data.root={root}").data)


def test_bad_csv_exits_2_with_one_sentence(csv_dir, tmp_path):
    root = corrupt_csv(csv_dir, tmp_path, 3, 5, "x7")
    result = run_cli("fmnist_lab.train", "data=fashion_mnist_csv", f"data.root={root}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {root / 'fashion-mnist_train.csv'} line 3, column pixel5: 'x7' is not an integer"
    )


def write_test_csv(tmp_path: Path, csv_dir: Path, content: bytes) -> Path:
    """The small train CSV, and `content` as the test CSV, in a folder of their own."""
    shutil.copy(csv_dir / "fashion-mnist_train.csv", tmp_path)
    (tmp_path / "fashion-mnist_test.csv").write_bytes(content)
    return tmp_path / "fashion-mnist_test.csv"


def csv_rows(csv_dir: Path, n: int) -> list[str]:
    return (csv_dir / "fashion-mnist_test.csv").read_text().splitlines()[: n + 1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda rows: "\n".join(rows[1:]).encode(),
         "line 1: this is an image, not the header; add the header line"),
        (lambda rows: (rows[0] + "\n").encode(), "has the header but no images"),
        (lambda rows: rows[0].replace("pixel7,", "pixel07,").encode() + b"\n" + rows[1].encode(),
         "line 1: header column 8 is 'pixel07', expected 'pixel7'"),
        (lambda rows: "\n".join(rows).encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
        (lambda rows: gzip.compress("\n".join(rows).encode()), "is gzip-compressed, not a CSV"),
        (lambda rows: bytes(range(256)) * 8, "is binary data, not a CSV text file"),
        (lambda rows: ("\n".join(rows[:2]) + "\n").encode() + b"\xe9t\xe9\n",
         "line 3: byte 0xe9 is not UTF-8 text"),
        (lambda rows: "\n".join([rows[0], rows[1], "", rows[2]]).encode(),
         "line 3 is blank; only the end may have blank lines"),
    ],
)  # fmt: skip
def test_a_csv_of_the_wrong_structure_is_refused_naming_file_and_line(
    csv_dir, tmp_path, make, message
):  # fmt: skip
    path = write_test_csv(tmp_path, csv_dir, make(csv_rows(csv_dir, 3)))
    with pytest.raises(UserError) as err:
        read_csv(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_a_csv_with_blank_lines_at_its_end_and_a_byte_order_mark_reads(csv_dir, tmp_path):
    rows = csv_rows(csv_dir, 3)
    path = write_test_csv(tmp_path, csv_dir, ("\ufeff" + "\r\n".join(rows) + "\r\n\n \n").encode())
    images, labels = read_csv(path)
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [
        int(r.split(",")[0]) for r in rows[1:]
    ]


@pytest.mark.slow  # real data: a fresh cache extracts the real files
def test_a_truncated_extraction_in_the_cache_is_extracted_again(
    make_real_cfg, data_root, tmp_path, capfd
):  # fmt: skip
    cfg = make_real_cfg(f"data.root={data_root}", f"data.cache_dir={tmp_path}").data
    expected = load_splits(cfg)
    extracted = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    assert idx_intact(extracted)
    with open(extracted, "r+b") as f:  # a process killed during the first extraction
        f.truncate(extracted.stat().st_size // 3)
    assert not idx_intact(extracted)
    healed = load_splits(cfg)
    assert "is damaged (truncated or not IDX); extracting it again" in capfd.readouterr().err
    assert idx_intact(extracted) and torch.equal(healed.train_x, expected.train_x)
    extracted.write_bytes(b"not an IDX file at all")  # garbage of another kind
    assert torch.equal(load_splits(cfg).train_x, expected.train_x)


# --- locating, checking and downloading the IDX files ------------------------------------


def test_missing_files_name_the_files_and_the_variable(make_cfg, tmp_path):
    with pytest.raises(UserError) as err:
        load_splits(make_cfg(f"data.root={tmp_path}").data)
    text = str(err.value)
    assert all(name in text for name in FMNIST_GZ_MD5) and DATA_ENV in text


def test_missing_files_exit_2_without_traceback(tmp_path):
    result = run_cli("fmnist_lab.train", f"data.root={tmp_path}",
                     f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte.gz" in result.stderr and DATA_ENV in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-recorded


@pytest.mark.slow
def test_md5_mismatch_names_the_file(make_real_cfg, data_root, tmp_path):
    for name in FMNIST_GZ_MD5:
        shutil.copy(data_root / "fashion-mnist" / name, tmp_path)
    with open(tmp_path / "t10k-labels-idx1-ubyte.gz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz fails its MD5 check"):
        load_splits(make_real_cfg(f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'c'}").data)


@pytest.mark.slow
def test_environment_variable_points_at_the_data(make_real_cfg, data_root, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(data_root / "fashion-mnist"))
    s = load_splits(make_real_cfg("data.root=null").data)
    assert len(s.test_y) == 10000


@pytest.fixture
def mirror(data_root):
    """A real HTTP server on 127.0.0.1 serving the .gz files, standing in for the internet."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(data_root / "fashion-mnist")
    )
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.slow
def test_without_local_files_torchvision_downloads_them(make_real_cfg, mirror, tmp_path,
                                                         monkeypatch):  # fmt: skip
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(FashionMNIST, "mirrors", [mirror])
    s = load_splits(make_real_cfg("data.root=null", f"data.cache_dir={tmp_path}").data)
    assert len(s.train_y) + len(s.val_y) == 60000
    assert (
        md5(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz")
        == (FMNIST_GZ_MD5["train-images-idx3-ubyte.gz"])
    )


def test_offline_without_local_files_says_what_to_set(make_cfg, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(FashionMNIST, "mirrors", [dead])
    with pytest.raises(UserError, match=f"could not download Fashion-MNIST.*set {DATA_ENV}"):
        load_splits(make_cfg("data.root=null", f"data.cache_dir={tmp_path}").data)
