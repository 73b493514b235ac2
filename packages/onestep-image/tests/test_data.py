"""Image data: digits, IDX (MNIST / Fashion-MNIST), CIFAR-10 batches, image folders, the front
door, and one-line errors for malformed files. Every file is written small in tmp_path."""

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onestep.image import data as D


def _scaled(u8):
    """The loaders' map of uint8 to [-1, 1]."""
    return np.asarray(u8, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _raises(exc, *parts):
    """pytest.raises whose message must contain every part (in any order)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(str(p))})" for p in parts))


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


# --- IDX writers


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _mnist_folder(folder: Path, n_train=5, n_test=3, gz=True, seed=0):
    """Standard MNIST names: the train split gzipped (gz), the test split plain."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    out = {}
    splits = (("train", "train", n_train, gz), ("test", "t10k", n_test, False))
    for split, prefix, n, zipped in splits:
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if zipped else ""
        _write(folder / f"{prefix}-images-idx3-ubyte{ext}", _idx_bytes(x), zipped)
        _write(folder / f"{prefix}-labels-idx1-ubyte{ext}", _idx_bytes(y), zipped)
        out[split] = (x, y)
    return out


# --- ImageData


def test_image_data_container():
    x = torch.linspace(-1, 1, 5 * 3 * 2 * 2).reshape(5, 3, 2, 2)
    d = D.ImageData(x, torch.tensor([0, 1, 2, 1, 0]), 3, "toy")
    assert len(d) == 5 and d.shape == (3, 2, 2)
    assert "toy" in repr(d) and len(repr(d)) < 80  # never the tensor itself
    sub = d.subset([4, 1])
    assert torch.equal(sub.images, x[[4, 1]]) and sub.labels.tolist() == [0, 1]
    assert sub.subset(torch.tensor([True, False])).labels.tolist() == [0]
    train, val = d.split(0.4, seed=3)
    assert len(train) == 3 and len(val) == 2
    rows = sorted(train.images[:, 0, 0, 0].tolist() + val.images[:, 0, 0, 0].tolist())
    assert rows == sorted(x[:, 0, 0, 0].tolist())  # a partition of the rows
    with pytest.raises(ValueError, match="labels must lie in"):
        D.ImageData(x, torch.tensor([0, 1, 2, 1, 3]), 3)
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        D.ImageData(x, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="floating"):
        D.ImageData(x[0])


# --- digits


def test_digits():
    d = D.load_digits()
    assert d.images.dtype == torch.float32 and d.images.shape == (1797, 1, 8, 8)
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert d.labels.dtype == torch.int64 and d.num_classes == 10
    assert sorted(set(d.labels.tolist())) == list(range(10))
    from sklearn.datasets import load_digits

    sk = load_digits()
    np.testing.assert_array_equal(d.images[:, 0].numpy(), sk.images / 8.0 - 1.0)
    np.testing.assert_array_equal(d.labels.numpy(), sk.target)


# --- IDX


@pytest.mark.parametrize("gz,suffix", [(False, ""), (True, ".gz"), (True, "")])
def test_idx_round_trip(tmp_path, gz, suffix):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    y = np.array([3, 0, 1, 2, 3, 1, 0], dtype=np.uint8)
    img = _write(tmp_path / f"imgs{suffix}", _idx_bytes(x), gz)  # gz without .gz: by content
    lab = _write(tmp_path / f"labs{suffix}", _idx_bytes(y), gz)
    d = D.load_idx(img, lab)
    assert d.images.shape == (7, 1, 5, 4) and d.images.dtype == torch.float32
    np.testing.assert_array_equal(d.images[:, 0].numpy(), _scaled(x))
    assert d.images[0, 0, 0, 0] == -1.0 and d.images[0, 0, 0, 1] == 1.0
    assert d.labels.tolist() == y.tolist() and d.num_classes == 4
    assert d.name == "imgs"
    unlabelled = D.load_idx(str(img))
    assert unlabelled.labels is None and unlabelled.num_classes == 0


def test_load_mnist_standard_names(tmp_path):
    want = _mnist_folder(tmp_path / "mnist")
    for split in ("train", "test"):
        d = D.load_mnist(tmp_path / "mnist", split)
        x, y = want[split]
        assert d.images.shape == (len(x), 1, 28, 28) and d.name == f"mnist/{split}"
        np.testing.assert_array_equal(d.images[:, 0].numpy(), _scaled(x))
        assert d.labels.tolist() == y.tolist()
    with _raises(ValueError, "split", "'val'"):
        D.load_mnist(tmp_path / "mnist", "val")


def test_load_mnist_missing(tmp_path):
    with _raises(FileNotFoundError, tmp_path / "nowhere", "no such folder"):
        D.load_mnist(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    _write(tmp_path / "half" / "train-images-idx3-ubyte", _idx_bytes(np.zeros((1, 2, 2))), False)
    with _raises(FileNotFoundError, tmp_path / "half", "train-labels-idx1-ubyte"):
        D.load_mnist(tmp_path / "half")


@pytest.mark.skipif(not D.FASHION_MNIST_DIR.is_dir(), reason="no dataset-fashion-mnist here")
def test_fashion_mnist_default_folder():
    d = D.load_images("fashion-mnist", split="test")
    assert d.images.shape == (10000, 1, 28, 28) and d.num_classes == 10
    assert torch.bincount(d.labels).tolist() == [1000] * 10


def test_idx_wrong_magic(tmp_path):
    labels = _write(tmp_path / "labels.bin", _idx_bytes(np.zeros(3)), False)
    with _raises(ValueError, labels, "wrong magic number", "0x00000801", "0x00000803",
                 "labels") as e:
        D.load_idx(labels)
    _one_line(e)
    png = tmp_path / "fake.gz"
    Image.new("L", (4, 4)).save(png, format="PNG")
    with _raises(ValueError, png, "wrong magic number 0x89504e47", "not gzip-compressed"):
        D.load_idx(png)


def test_idx_truncated_and_trailing(tmp_path):
    full = _idx_bytes(np.ones((4, 3, 3)))  # 16 + 36 bytes
    cut = _write(tmp_path / "cut", full[:-5], False)
    with _raises(ValueError, cut, "truncated", "expected 52 bytes", "found 47") as e:
        D.load_idx(cut)
    _one_line(e)
    cutgz = _write(tmp_path / "cut.gz", full[:-5], True)
    with _raises(ValueError, cutgz, "truncated", "expected 52 bytes (after gunzip)", "found 47"):
        D.load_idx(cutgz)
    head = _write(tmp_path / "head", full[:10], False)
    with _raises(ValueError, head, "truncated", "header needs 16 bytes", "found 10"):
        D.load_idx(head)
    long = _write(tmp_path / "long", full + b"xx", False)
    with _raises(ValueError, long, "trailing bytes", "expected 52", "found 54"):
        D.load_idx(long)
    badgz = tmp_path / "bad.gz"
    badgz.write_bytes(gzip.compress(full)[:-12])
    with _raises(ValueError, badgz, "gzip") as e:
        D.load_idx(badgz)
    _one_line(e)
    empty = _write(tmp_path / "empty", _idx_bytes(np.zeros((0, 3, 3))), False)
    with _raises(ValueError, empty, "empty"):
        D.load_idx(empty)
    with _raises(FileNotFoundError, tmp_path / "absent", "no such file"):
        D.load_idx(tmp_path / "absent")


def test_idx_label_count_mismatch(tmp_path):
    img = _write(tmp_path / "i.gz", _idx_bytes(np.zeros((4, 2, 2))), True)
    lab = _write(tmp_path / "l", _idx_bytes(np.zeros(3)), False)
    with _raises(ValueError, lab, "3 labels", img, "4 images") as e:
        D.load_idx(img, lab)
    _one_line(e)


# --- CIFAR-10


def _cifar_rows(rng, n):
    """n random images (n, 3, 32, 32) and their CIFAR rows: all R, then all G, then all B."""
    planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    rows = np.concatenate([planes[:, c].reshape(n, 1024) for c in range(3)], axis=1)
    return planes, rows


def _cifar_folder(folder: Path, per_batch=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        planes, rows = _cifar_rows(rng, per_batch)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"data": rows, b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(planes)
        out[split][1].extend(labels)
    return {k: (np.concatenate(p), y) for k, (p, y) in out.items()}


def test_cifar10_round_trip_and_channel_order(tmp_path):
    want = _cifar_folder(tmp_path / "cifar-10-batches-py")
    for folder in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        for split, n in (("train", 10), ("test", 2)):
            d = D.load_cifar10(folder, split)
            planes, labels = want[split]
            assert d.images.shape == (n, 3, 32, 32) and d.num_classes == 10
            np.testing.assert_array_equal(d.images.numpy(), _scaled(planes))
            assert d.labels.tolist() == labels and d.name == f"cifar10/{split}"
    # One hand-made row: pixel (row 1, col 2) is (10, 20, 30); everything else is 0.
    row = np.zeros(3072, dtype=np.uint8)
    row[1 * 32 + 2], row[1024 + 1 * 32 + 2], row[2048 + 1 * 32 + 2] = 10, 20, 30
    one = tmp_path / "one"
    one.mkdir()
    (one / "test_batch").write_bytes(pickle.dumps({b"data": row[None], b"labels": [7]}))
    d = D.load_cifar10(one, "test")
    np.testing.assert_array_equal(d.images[0, :, 1, 2].numpy(), _scaled([10, 20, 30]))
    assert (d.images[0] == -1.0).sum() == 3 * 1024 - 3 and d.labels.tolist() == [7]


@pytest.mark.parametrize(
    "batch,parts",
    [
        ({b"labels": [1]}, ["no b'data' entry", "b'labels'"]),
        ({b"data": np.zeros((1, 3072), np.uint8)}, ["no b'labels' entry"]),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]},
         ["b'data' has shape (2, 3000)", "3072"]),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]},
         ["1 labels", "2 images"]),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, ["0..9"]),
        ([1, 2], ["expected a pickled dict", "list"]),
    ],
)
def test_cifar10_malformed_batch(tmp_path, batch, parts):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with _raises(ValueError, tmp_path / "test_batch", *parts) as e:
        D.load_cifar10(tmp_path, "test")
    _one_line(e)


def test_cifar10_not_a_pickle_and_missing(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"\x80\x04not a pickle at all")
    with _raises(ValueError, tmp_path / "test_batch", "cannot unpickle") as e:
        D.load_cifar10(tmp_path, "test")
    _one_line(e)
    full = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})
    (tmp_path / "test_batch").write_bytes(full[: len(full) // 2])
    with _raises(ValueError, tmp_path / "test_batch", "cannot unpickle"):
        D.load_cifar10(tmp_path, "test")
    with _raises(FileNotFoundError, tmp_path / "data_batch_1", "no such file"):
        D.load_cifar10(tmp_path, "train")


# --- image folders


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def test_image_folder_sizes_crop_and_skips(tmp_path):
    # a: exactly 10x10 RGB; b: 10 wide, 30 tall (rows 10..19 survive the crop);
    # c: 40x20 uniform (downscaled to 20x10, then cropped); e: 40x20 white with a black frame
    # 4 wide, which the downscale halves, so it stays at the top/bottom edge of the crop.
    a = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    b = np.zeros((30, 10, 3), np.uint8)
    b[10:20] = (200, 100, 50)
    _png(tmp_path / "a.png", a)
    _png(tmp_path / "b.png", b)
    Image.new("RGB", (40, 20), (30, 60, 90)).save(tmp_path / "c.jpg", quality=100)
    e = np.zeros((20, 40, 3), np.uint8)
    e[4:16, 4:36] = 255
    _png(tmp_path / "e.png", e)
    (tmp_path / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden.png", a)  # hidden: skipped
    d = D.load_image_folder(tmp_path, 10)
    assert d.images.shape == (4, 3, 10, 10) and d.labels is None and d.num_classes == 0
    np.testing.assert_array_equal(d.images[0].numpy(), _scaled(a.transpose(2, 0, 1)))
    np.testing.assert_array_equal(d.images[1].numpy(), _scaled(np.full((10, 10, 3),
                                  (200, 100, 50)).transpose(2, 0, 1)))
    np.testing.assert_allclose(d.images[2].mean((1, 2)).numpy(), _scaled([30, 60, 90]),
                               atol=2 / 127.5)
    frame = d.images[3].mean(0)  # (10, 10): rows 0-1 and 8-9 are the halved frame
    assert frame[[0, 9], 5].max() < -0.9 and frame[2:8, 5].min() > 0.5
    grey = D.load_image_folder(tmp_path, 4, channels=1)
    assert grey.images.shape == (4, 1, 4, 4)


def test_image_folder_transparency_on_white(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)  # fully transparent black
    rgba[:3, :, :] = (255, 0, 0, 255)  # top half opaque red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    d = D.load_image_folder(tmp_path, 6)
    np.testing.assert_array_equal(d.images[0, :, 0, 0].numpy(), [1.0, -1.0, -1.0])
    np.testing.assert_array_equal(d.images[0, :, 5, 0].numpy(), [1.0, 1.0, 1.0])


def test_image_folder_class_subfolders(tmp_path):
    # created out of order; labels follow the sorted names; images anywhere below a class
    _png(tmp_path / "dog" / "d1.png", np.full((12, 8), 255))
    _png(tmp_path / "cat" / "c1.png", np.zeros((5, 5)))
    _png(tmp_path / "cat" / "deeper" / "c2.png", np.zeros((9, 7)))
    (tmp_path / "empty").mkdir()  # no images: not a class
    d = D.load_image_folder(tmp_path, 5, channels=1)
    assert d.images.shape == (3, 1, 5, 5)
    assert d.class_names == ("cat", "dog") and d.num_classes == 2
    assert d.labels.tolist() == [0, 0, 1]
    assert d.images[2].eq(1.0).all() and d.images[0].eq(-1.0).all()


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with _raises(ValueError, tmp_path / "empty", "no images found") as e:
        D.load_image_folder(tmp_path / "empty", 8)
    _one_line(e)
    bad = tmp_path / "bad"
    _png(bad / "ok.png", np.zeros((4, 4)))
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with _raises(ValueError, bad / "broken.png", "cannot read as an image") as e:
        D.load_image_folder(bad, 4)
    _one_line(e)
    mixed = tmp_path / "mixed"
    _png(mixed / "top.png", np.zeros((4, 4)))
    _png(mixed / "cls" / "x.png", np.zeros((4, 4)))
    with _raises(ValueError, mixed, "both", "top.png", "cls/"):
        D.load_image_folder(mixed, 4)
    with _raises(FileNotFoundError, tmp_path / "nope", "no such folder"):
        D.load_image_folder(tmp_path / "nope", 4)
    with _raises(ValueError, "channels must be 1 or 3"):
        D.load_image_folder(bad, 4, channels=2)


# --- the front door


def test_load_images_dispatch(tmp_path):
    assert D.load_images("digits").name == "digits"
    _mnist_folder(tmp_path / "m")
    assert D.load_images("mnist", root=tmp_path / "m", split="test").name == "mnist/test"
    fm = D.load_images("Fashion_MNIST", root=tmp_path / "m")
    assert fm.name == "fashion-mnist/train" and len(fm) == 5
    assert len(D.load_images(tmp_path / "m", split="test")) == 3  # an MNIST folder by path
    idx = D.load_images(str(tmp_path / "m" / "t10k-images-idx3-ubyte"))  # an IDX file
    assert len(idx) == 3 and idx.labels is None
    _cifar_folder(tmp_path / "c" / "cifar-10-batches-py")
    assert D.load_images("cifar-10", root=tmp_path / "c").images.shape == (10, 3, 32, 32)
    assert D.load_images(tmp_path / "c", split="test").name == "cifar10/test"
    _png(tmp_path / "f" / "x.png", np.zeros((6, 9, 3)))
    assert D.load_images(tmp_path / "f", size=4).images.shape == (1, 3, 4, 4)
    assert D.load_images(tmp_path / "f", size=4, channels=1).images.shape == (1, 1, 4, 4)


def test_load_images_errors(tmp_path):
    with _raises(ValueError, "imagenet", "digits, mnist, fashion-mnist, cifar10") as e:
        D.load_images("imagenet")
    _one_line(e)
    with _raises(ValueError, "mnist", "root="):
        D.load_images("mnist")
    with _raises(ValueError, "cifar10", "root="):
        D.load_images("cifar10")
    with _raises(ValueError, "digits", "size"):
        D.load_images("digits", size=8)
    with _raises(ValueError, "digits", "split"):
        D.load_images("digits", split="test")
    _png(tmp_path / "f" / "x.png", np.zeros((6, 9, 3)))
    with _raises(ValueError, tmp_path / "f", "needs size="):
        D.load_images(tmp_path / "f")
