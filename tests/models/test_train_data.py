"""Dataset parsers on small files written here in the official formats (no network),
checksums, seeded augmentation, and --resume giving the same weights as one run."""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from spikebridge.base.errors import DatasetError
from spikebridge.models import datasets as D
from spikebridge.models.augment import crop_flip


def _cifar_tar(path, name, rng):
    label_bytes = 1 if name == "cifar10" else 2
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, members in D.CIFAR_MEMBERS[name].items():
            xs, ys = [], []
            for m in members:
                n = 3
                img = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
                lab = rng.integers(0, 10 if name == "cifar10" else 100, (n, label_bytes), dtype=np.uint8)
                data = np.concatenate([lab, img], 1).tobytes()
                info = tarfile.TarInfo(m)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                xs.append(img.reshape(n, 3, 32, 32))
                ys.append(lab[:, -1])
            truth[split] = (np.concatenate(xs), np.concatenate(ys))
    return truth


def _pin(monkeypatch, name, path):
    url, fname, _, _, mx = D.ARCHIVES[name]
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(D.ARCHIVES, name, (url, fname, md5, None, mx))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_from_archive(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEBRIDGE_DATA_DIR", str(tmp_path))
    folder = tmp_path / name
    folder.mkdir()
    path = folder / D.ARCHIVES[name][1]
    truth = _cifar_tar(path, name, np.random.default_rng(0))
    _pin(monkeypatch, name, path)
    for split in ("train", "test"):
        x, y = D.load_dataset(name, split)
        assert x.shape == (len(truth[split][0]), 3, 32, 32) and x.dtype == np.float32
        assert np.array_equal(np.rint(x * 255).astype(np.uint8), truth[split][0])
        assert np.array_equal(y, truth[split][1])
    assert (folder / (path.name + ".sha256")).is_file()
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # tampered after the first check
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="SHA-256"):
        D.load_dataset(name, "test")


def test_cifar_record_size_checked():
    with pytest.raises(DatasetError, match="multiple"):
        D.parse_cifar_binary(b"\0" * 3072, 1, "x")


def test_tiny_imagenet_zip(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("SPIKEBRIDGE_DATA_DIR", str(tmp_path))
    folder = tmp_path / "tiny-imagenet"
    folder.mkdir()
    path = folder / "tiny-imagenet-200.zip"
    rng = np.random.default_rng(0)
    wnids = ["n01", "n02"]

    def png(arr):  # lossless-enough check: solid colours survive JPEG closely
        b = io.BytesIO()
        Image.fromarray(arr).save(b, format="JPEG", quality=95)
        return b.getvalue()

    colours = {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        for ci, w in enumerate(wnids):
            for j in range(2):
                c = rng.integers(0, 256, 3, dtype=np.uint8)
                colours[f"{w}_{j}"] = (c, ci)
                z.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{j}.JPEG", png(np.tile(c, (64, 64, 1))))
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "val_0.JPEG\tn02\t0\t0\t63\t63\n")
        z.writestr("tiny-imagenet-200/val/images/val_0.JPEG", png(np.zeros((64, 64, 3), np.uint8)))
    _pin(monkeypatch, "tiny-imagenet", path)
    x, y = D.load_dataset("tiny-imagenet", "train")
    assert x.shape == (4, 3, 64, 64) and y.tolist() == [0, 0, 1, 1]
    xt, yt = D.load_dataset("tiny-imagenet", "test")
    assert xt.shape == (1, 3, 64, 64) and yt.tolist() == [1]
    x2, _ = D.load_dataset("tiny-imagenet", "train")  # from the .npy cache
    assert np.array_equal(x, x2)


def test_augmentation_seeded_and_shape_preserving():
    x = torch.rand(6, 3, 8, 8)
    a = crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    b = crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(a, b) and a.shape == x.shape
    # with no padding and every flip forced the result is the mirror image
    g = torch.Generator().manual_seed(0)
    out = crop_flip(x, g, padding=0)
    for i in range(6):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


@pytest.mark.parametrize("method", ["snn2ann", "bptt"])
def test_resume_after_kill_gives_the_same_weights(method, tmp_path, monkeypatch):
    """Kill after epoch 2 of 3, resume: same weights as one uninterrupted run (CPU, same seed)."""
    import spikebridge.models.methods.snn2ann as S  # the loop snn2ann and bptt share
    import spikebridge.models.train as T
    from spikebridge.models.checkpoint import load_tensors

    cfg = dict(method=method, arch="mlp", dataset="digits", epochs=3, limit_train=128, limit_test=32,
               seed=5, batch_size=32, device="cpu", augment=True)
    T.train(T.TrainConfig(**cfg), tmp_path / "full", progress=False)
    real = S.save_checkpoint
    calls = {"n": 0}

    def killing_save(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run dies right after epoch 2's checkpoint

    monkeypatch.setattr(S, "save_checkpoint", killing_save)
    with pytest.raises(KeyboardInterrupt):
        T.train(T.TrainConfig(**cfg), tmp_path / "killed", progress=False)
    monkeypatch.setattr(S, "save_checkpoint", real)
    torch.manual_seed(999)  # the resumed process starts from a different global RNG state
    T.train(T.TrainConfig(**cfg), tmp_path / "killed", progress=False, resume=True)
    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
