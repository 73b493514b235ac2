"""Feature net and sample evaluation: a FeatureNet trained once on digits (module fixture) must
classify held-out digits, survive a save/load round trip bit for bit, and give metrics that rank
real data above corrupted or mode-collapsed data; inputs and files that are wrong are one-line
errors."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onestep.image.data import ImageData, ImageDataError, load_images
from onestep.image.evaluate import evaluate, load_samples, noise_floor, sample_features
from onestep.image.features import (
    FeatureNet,
    FeatureNetError,
    accuracy,
    feature_net_name,
    load_features,
    save_features,
    train_features,
)

FAST = {"kid_subsets": 5}  # KID over few subsets: the tests compare orders of magnitude


def _raises(exc, *parts):
    """pytest.raises whose one-line message contains every part."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(str(p))})" for p in parts))


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """(folder, info returned by train_features, loaded net, loaded info): a short run."""
    folder = tmp_path_factory.mktemp("features")
    torch.manual_seed(0)
    info = train_features(digits, folder, steps=300, progress=False)
    net, loaded = load_features(folder)
    return folder, info, net, loaded


@pytest.fixture(scope="module")
def halves(digits):
    """Two disjoint random halves of digits (ImageData)."""
    return digits.split(0.5, seed=1)


@pytest.fixture(scope="module")
def ref_feats(trained, halves):
    return sample_features(trained[2], halves[1].images)


def _eval(samples, trained, halves, ref_feats, **kw):
    return evaluate(samples, halves[1].images, trained[2], reference_features=ref_feats,
                    **FAST, **kw)


# ----------------------------------------------------------------------------------------------
# Training, saving, loading


def test_train_features_accuracy_and_files(trained, digits):
    folder, info, net, loaded = trained
    assert info["test_accuracy"] >= 0.95, info
    assert info["test_size"] == round(0.2 * len(digits))
    assert info["train_size"] + info["test_size"] == len(digits)
    assert info["name"] == "digits-cnn" and info["fd_label"] == "FD-digits-cnn"
    assert info["image_shape"] == [1, 8, 8] and info["num_classes"] == 10
    assert info["dataset"] == "digits" and info["training"]["steps"] == 300
    assert loaded == info  # features.json holds exactly what train_features returned
    assert (folder / "features.safetensors").is_file()
    assert (folder / "log.jsonl").is_file() and (folder / "checkpoints").is_dir()  # core Trainer
    assert not net.training and net.fd_label == "FD-digits-cnn"


def test_round_trip_identical(trained, digits, tmp_path):
    folder, info, net, _ = trained
    _, test = digits.split(info["split"]["test_fraction"], info["split"]["seed"])
    # the loaded weights are the trained ones: the recorded test accuracy is reproduced exactly
    assert accuracy(net, test) == info["test_accuracy"]
    fresh = FeatureNet(1, 8, 10)
    assert accuracy(fresh, test) < 0.5  # an untrained net would not reproduce it
    save_features(tmp_path / "copy", net, info)
    net2, info2 = load_features(tmp_path / "copy")
    assert info2 == info
    x = digits.images[:64]
    with torch.no_grad():
        assert torch.equal(net.features(x), net2.features(x))
        assert torch.equal(net(x), net2(x))
    for key, value in net.state_dict().items():
        assert torch.equal(value, net2.state_dict()[key]), key


def test_feature_net_sizes_and_names():
    for c, size in ((1, 8), (3, 16), (1, 28), (3, 32)):
        net = FeatureNet(c, size, 10, width=8, feature_dim=16)
        x = torch.rand(2, c, size, size) * 2 - 1
        assert net.features(x).shape == (2, 16) and net(x).shape == (2, 10)
    assert feature_net_name("fashion-mnist/train") == "fashion-mnist-cnn"
    assert feature_net_name("cifar10/test") == "cifar10-cnn"
    assert feature_net_name("my images") == "my-images-cnn"
    with _raises(ValueError, "num_classes"):
        FeatureNet(1, 8, 1)


# ----------------------------------------------------------------------------------------------
# Metrics rank real above corrupted


def test_fd_ranks_real_above_corrupted(trained, halves, ref_feats):
    a, _ = halves
    g = torch.Generator().manual_seed(0)
    real = _eval(a.images, trained, halves, ref_feats)
    noisy = _eval((a.images + 0.5 * torch.randn(a.images.shape, generator=g)).clamp(-1, 1),
                  trained, halves, ref_feats)
    blurred = _eval(F.avg_pool2d(F.pad(a.images, (1,) * 4, mode="replicate"), 3, 1),
                    trained, halves, ref_feats)
    one_class = _eval(a.images[a.labels == 3], trained, halves, ref_feats)
    assert real["fd_label"] == "FD-digits-cnn" and real["kid_label"] == "KID-digits-cnn"
    for bad in (noisy, blurred, one_class):
        assert bad["fd"] > 3 * real["fd"], (real["fd"], bad["fd"])
        assert bad["kid"]["mean"] > real["kid"]["mean"] + 5 * bad["kid"]["std"]
    # the reference_features shortcut equals passing the reference images
    full = evaluate(a.images, halves[1], trained[2], **FAST)
    assert full["fd"] == pytest.approx(real["fd"], rel=1e-9)
    assert full["n_reference"] == len(halves[1]) and full["n"] == len(a)


def test_label_entropy_and_coverage(trained, halves, ref_feats):
    a, _ = halves
    real = _eval(a.images, trained, halves, ref_feats, labels_of_samples=a.labels)
    one = _eval(a.images[a.labels == 3], trained, halves, ref_feats)
    assert real["label_entropy_max"] == pytest.approx(math.log(10))
    assert real["label_entropy_unit"] == "nats"
    assert real["label_entropy"] > 0.97 * math.log(10)
    assert real["classes_covered"] == 10 and sum(real["class_histogram"]) == len(a)
    assert real["class_accuracy"] > 0.95
    assert one["label_entropy"] < 0.15 and one["classes_covered"] <= 2
    assert one["class_histogram"][3] > 0.95 * one["n"]
    wrong = _eval(a.images, trained, halves, ref_feats, labels_of_samples=(a.labels + 1) % 10)
    assert wrong["class_accuracy"] < 0.1


def test_precision_recall_drop(trained, halves, ref_feats):
    a, _ = halves
    g = torch.Generator().manual_seed(1)
    real = _eval(a.images, trained, halves, ref_feats)
    collapsed = _eval(a.images[a.labels == 3], trained, halves, ref_feats)
    noise = _eval((a.images + 0.5 * torch.randn(a.images.shape, generator=g)).clamp(-1, 1),
                  trained, halves, ref_feats)
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert collapsed["recall"] < 0.3 and collapsed["precision"] > 0.7  # good but few modes
    assert noise["precision"] < real["precision"] - 0.2


def test_noise_floor(trained, digits, halves):
    _, ref = halves
    train, _ = digits.split(0.2, 0)
    net = trained[2]
    floor = noise_floor(train, ref.images, net, 300, **FAST)
    again = noise_floor(train, ref.images, net, 300, **FAST)
    other = noise_floor(train, ref.images, net, 300, seed=1, **FAST)
    plain = evaluate(train.images[:300], ref.images, net, **FAST)
    assert set(floor) == set(plain)
    assert floor["n"] == 300 and floor["seconds_per_image"] is None
    assert floor["class_accuracy"] > 0.9  # an ImageData's labels come along
    assert floor == again and floor["fd"] != other["fd"]
    assert floor["fd"] < 10 and floor["recall"] > 0.7
    with _raises(ValueError, "n=5000", f"only {len(train)}") as e:
        noise_floor(train, ref.images, net, 5000)
    _one_line(e)


def test_clamps_slightly_out_of_range(trained, halves, ref_feats):
    a, _ = halves
    x = a.images[:200] * 1.2
    out = _eval(x, trained, halves, ref_feats, seconds_per_image=0.25)
    clamped = _eval(x.clamp(-1, 1), trained, halves, ref_feats)
    assert out["out_of_range"] > 0.1 and clamped["out_of_range"] == 0.0
    assert out["fd"] == clamped["fd"] and out["seconds_per_image"] == 0.25
    json.dumps(out)  # JSON-ready


# ----------------------------------------------------------------------------------------------
# Errors


def test_train_features_refuses_unlabelled(digits, tmp_path):
    unlabelled = ImageData(digits.images[:50], name="nolabels")
    with _raises(ValueError, "nolabels", "labelled") as e:
        train_features(unlabelled, tmp_path / "f", steps=1, progress=False)
    _one_line(e)
    assert not (tmp_path / "f").exists()


def test_evaluate_refuses_bad_samples(trained, halves, ref_feats):
    a, ref = halves
    net = trained[2]
    cases = [
        (torch.zeros(20, 1, 7, 7), ("1x7x7", "1x8x8", "digits-cnn")),
        (torch.zeros(20, 8, 8, 1), ("channels-last",)),
        (torch.zeros(20, 64), ("(N, C, H, W)",)),
        (a.images[:20] * 127.5 + 127.5, ("range over", "[-1, 1]")),
        (torch.zeros(3, 1, 8, 8), ("at least 4 samples",)),
    ]
    nan = a.images[:20].clone()
    nan[3, 0, 2, 2] = float("nan")
    cases.append((nan, ("NaN", "1 of 20 images")))
    for samples, parts in cases:
        with _raises(ValueError, *parts) as e:
            evaluate(samples, ref.images, net, **FAST)
        _one_line(e)
    with _raises(ValueError, "labels_of_samples", "20 integer labels"):
        evaluate(a.images[:20], ref.images, net, labels_of_samples=torch.zeros(19, dtype=int))
    with _raises(ValueError, "reference images", "NaN"):
        evaluate(a.images[:20], nan, net)


def test_load_features_errors(trained, tmp_path):
    folder = trained[0]
    with _raises(FileNotFoundError, "no such folder"):
        load_features(tmp_path / "absent")

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(folder, dst)
        return dst

    bad = copy("corrupt")
    (bad / "features.json").write_text('{"kind": "feature-net", "format": ')
    with _raises(FeatureNetError, "features.json", "corrupt") as e:
        load_features(bad)
    _one_line(e)

    bad = copy("mismatch")
    info = json.loads((bad / "features.json").read_text())
    info["config"]["width"] = 16
    (bad / "features.json").write_text(json.dumps(info))
    with _raises(FeatureNetError, "features.safetensors", "shape mismatch") as e:
        load_features(bad)
    _one_line(e)

    bad = copy("truncated")
    raw = (bad / "features.safetensors").read_bytes()
    (bad / "features.safetensors").write_bytes(raw[: len(raw) // 2])
    with _raises(FeatureNetError, "features.safetensors", "corrupt or truncated") as e:
        load_features(bad)
    _one_line(e)

    bad = copy("nojson")
    (bad / "features.json").unlink()
    with _raises(FeatureNetError, "features.json", "no such file"):
        load_features(bad)

    bad = copy("model")
    (bad / "features.json").write_text(json.dumps({"kind": "teacher"}))
    with _raises(FeatureNetError, "not a feature net"):
        load_features(bad)


def test_load_samples(tmp_path, trained, halves, ref_feats):
    a, _ = halves
    x = a.images[:40].numpy()
    np.savez(tmp_path / "s.npz", images=x, labels=a.labels[:40].numpy())
    images, labels = load_samples(tmp_path / "s.npz")
    assert torch.equal(images, a.images[:40]) and torch.equal(labels, a.labels[:40])
    np.save(tmp_path / "grey.npy", x[:, 0])  # (N, H, W)
    images, labels = load_samples(tmp_path / "grey.npy")
    assert images.shape == (40, 1, 8, 8) and labels is None
    assert torch.equal(images, a.images[:40])
    u8 = np.array([[[[0, 255]]]], dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    assert load_samples(tmp_path / "u8.npy")[0].flatten().tolist() == [-1.0, 1.0]
    out = _eval(load_samples(tmp_path / "s.npz")[0], trained, halves, ref_feats)
    assert out["n"] == 40

    np.savez(tmp_path / "nokey.npz", samples=x)
    np.save(tmp_path / "flat.npy", x.reshape(40, -1))
    np.savez(tmp_path / "badlabels.npz", images=x, labels=np.zeros(3, dtype=np.int64))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    (tmp_path / "s.png").write_bytes(b"")
    cases = [
        ("nokey.npz", ImageDataError, ("no 'images' array", "'samples'")),
        ("flat.npy", ImageDataError, ("(40, 64)", "(N, C, H, W)")),
        ("badlabels.npz", ImageDataError, ("'labels' must be 40 integers",)),
        ("junk.npz", ImageDataError, ("junk.npz", "cannot read")),
        ("s.png", ImageDataError, ("unknown sample file type",)),
        ("absent.npz", FileNotFoundError, ("absent.npz", "no such file")),
    ]
    for name, exc, parts in cases:
        with _raises(exc, *parts) as e:
            load_samples(tmp_path / name)
        _one_line(e)
