"""Issue 18 §2: checkpoint folders that must be refused (exit 3, one line naming the file and
tensor or layer, nothing written, the folder unchanged). Every folder is generated here."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.make_corpus import write_base_checkpoint
from tests.reliability._contract import only, refused, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "base"
    write_base_checkpoint(d)
    return d


def _digest(d: Path) -> dict:
    return {p.name: (os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
                     if p.is_file() else "dir") for p in sorted(d.iterdir())}


def _with_tensors(base: Path, dst: Path, change) -> Path:
    from safetensors.numpy import load_file, save_file
    shutil.copytree(base, dst)
    t = {k: v.copy() for k, v in load_file(str(base / "weights.safetensors")).items()}
    change(t)
    save_file(t, str(dst / "weights.safetensors"))
    return dst


def _export_refused(ckpt: Path, tmp_path: Path, *fragments: str) -> None:
    before = _digest(ckpt)
    for fmt in ("nir", "onnx"):
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        r = run_cli("export", ckpt, "--format", fmt, "--out", out / f"g.{fmt}")
        refused(r, 3, *fragments)
        only(out)
    assert _digest(ckpt) == before


def test_negative_bn_running_variance(base, tmp_path):
    def neg(t):
        t["layers.fc1.bn.running_var"][3] = -0.25
    ckpt = _with_tensors(base, tmp_path / "negvar", neg)
    _export_refused(ckpt, tmp_path, "layers.fc1.bn.running_var", "negative")


@pytest.mark.parametrize("how", ["tiny variance, large gamma", "large weight"])
def test_values_that_overflow_when_folded(base, tmp_path, how):
    def big(t):
        if how == "large weight":
            t["layers.fc2.op.weight"][0, 0] = 3e38  # finite; times 1/sqrt(var + eps) ~ 316 it is not
            t["layers.fc2.bn.running_var"][0] = 0.0
        else:
            t["layers.fc2.bn.running_var"][:] = 0.0
            t["layers.fc2.bn.weight"][:] = 3e38
    ckpt = _with_tensors(base, tmp_path / "overflow", big)
    _export_refused(ckpt, tmp_path, "layers.fc2.", "overflows float32")


def test_conv_without_neuron_before_pooling_is_refused_with_a_reason(tmp_path):
    """conv (no neuron) -> avgpool -> flatten -> linear: both exporters used to fail with
    exit 1 (NIR type inference, ONNX shape inference)."""
    import torch

    from spikebridge.models.checkpoint import save_checkpoint
    from spikebridge.models.snn2ann import SNN2ANNNet
    spec = [{"name": "c1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
             "bn": False, "neuron": False},
            {"name": "p", "type": "avgpool", "kernel_size": 2},
            {"name": "flatten", "type": "flatten"},
            {"name": "classifier", "type": "linear", "out_features": 10, "bn": False, "neuron": False}]
    torch.manual_seed(0)
    model = SNN2ANNNet(spec, (1, 8, 8), 4)
    meta = {"arch": "custom", "method": "snn2ann", "timesteps": 4, "input_shape": [1, 8, 8], "num_classes": 10,
            "dataset": "digits", "layers": spec, "smu": "stsu",
            "neuron": {"model": "IF", "reset": "zero", "threshold_test": "gt", "v_init": 0.0}, "seed": 0}
    save_checkpoint(tmp_path / "small", model.state_dict(), meta)
    _export_refused(tmp_path / "small", tmp_path, "'c1'", "no neuron")


def _replace(base: Path, dst: Path, name: str, kind: str) -> Path:
    shutil.copytree(base, dst)
    p = dst / name
    if p.exists():
        p.unlink()
    if kind == "directory":
        p.mkdir()
        (p / "x").write_text("{}")
    else:
        os.symlink("/proc/self/status", p)
    return dst


@pytest.mark.parametrize("kind", ["directory", "symlink to /proc"])
def test_model_json_that_is_not_a_file(base, tmp_path, kind):
    ckpt = _replace(base, tmp_path / "c", "model.json", kind)
    _export_refused(ckpt, tmp_path, "model.json")
    before = _digest(ckpt)
    r = run_cli("train", "--resume", "--arch", "mlp", "--epochs", "1", "--device", "cpu", "--out", ckpt)
    refused(r, 3, "model.json")
    assert _digest(ckpt) == before


@pytest.mark.parametrize("kind", ["directory", "symlink to /proc"])
def test_train_state_that_is_not_a_file_is_refused_not_skipped(base, tmp_path, kind):
    """train_state.pt as a directory used to be skipped silently: training started from
    scratch and overwrote the checkpoint. Now refused before any training."""
    ckpt = _replace(base, tmp_path / "c", "train_state.pt", kind)
    before = _digest(ckpt)
    r = run_cli("train", "--resume", "--arch", "mlp", "--epochs", "1", "--device", "cpu", "--out", ckpt)
    refused(r, 3, "train_state.pt")
    assert r.stdout.strip() == ""  # no training result
    assert _digest(ckpt) == before
    assert json.loads((ckpt / "model.json").read_text()) == json.loads((base / "model.json").read_text())


def test_check_batchnorm_passes_real_statistics():
    """The BatchNorm rule does not fire on ordinary statistics (guards against a rule that
    refuses everything)."""
    from spikebridge.models.checkpoint import check_batchnorm
    rng = np.random.default_rng(0)
    t = {"layers.a.op.weight": rng.normal(0, 1, (8, 4)).astype(np.float32),
         "layers.a.op.bias": np.zeros(8, np.float32),
         "layers.a.bn.weight": np.ones(8, np.float32), "layers.a.bn.bias": np.zeros(8, np.float32),
         "layers.a.bn.running_mean": np.zeros(8, np.float32), "layers.a.bn.running_var": np.zeros(8, np.float32)}
    check_batchnorm(t, "x")
