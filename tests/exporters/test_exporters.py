"""Exports: NIR read back by `nir`, simulated spike-for-spike against torch; ONNX in onnxruntime."""
from __future__ import annotations

import nir
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import analyse, classify, graph_meta, load_graph
from spikebridge.models.checkpoint import build_model, load_checkpoint
from spikebridge.models.datasets import load_dataset
from tests._trained import trained_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return trained_checkpoint()


def _arrays_equal(a, b):
    for f in ("weight", "bias", "v_threshold", "r", "v_reset", "stride", "padding"):
        if hasattr(a, f):
            assert np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))), f


def test_nir_round_trip_through_nir_read(ckpt, tmp_path):
    g = checkpoint_to_nir(ckpt)
    write_nir(g, tmp_path / "g.nir")
    r = nir.read(str(tmp_path / "g.nir"))
    assert set(r.nodes) == set(g.nodes)
    assert sorted(r.edges) == sorted(g.edges)
    for name, node in g.nodes.items():
        assert type(r.nodes[name]) is type(node)
        _arrays_equal(node, r.nodes[name])
    assert r.nodes["conv1_if"].metadata["spikebridge"]["reset"] == "zero"
    assert float(r.metadata["spikebridge"]["dt"]) == 1.0
    assert int(r.metadata["spikebridge"]["timesteps"]) == 4
    # per-neuron thresholds are arrays of the layer's shape
    assert r.nodes["conv1_if"].v_threshold.shape == (16, 8, 8)
    # our own safe loader reads the same graph
    s = load_graph(tmp_path / "g.nir")
    assert set(s.nodes) == set(g.nodes)


def test_exported_graph_reproduces_torch_spikes(ckpt):
    meta, tensors = load_checkpoint(ckpt)
    net = build_model(meta, tensors)
    x, y = load_dataset("digits", "test")
    x = x[:120]
    with torch.no_grad():
        logits, counts, spikes = net.snn_forward(torch.from_numpy(x), record=True)
    g = checkpoint_to_nir(ckpt)
    info = analyse(g)
    T = meta["timesteps"]
    tr = simulate(g, np.broadcast_to(x[None], (T, *x.shape)), info=info)
    names = [f"{s['name']}_if" for s in meta["layers"] if s.get("neuron")]
    total = mism = 0
    for name, s_t in zip(names, spikes):
        a = tr.spikes[name].astype(bool)
        b = s_t.numpy().astype(bool)
        total += a.size
        mism += int((a != b).sum())
    # float64 simulator vs float32 torch: flips only where the membrane sits at threshold
    assert mism / total < 1e-4, (mism, total)
    out = tr.outputs["output"].sum(0)
    assert np.allclose(out, logits.numpy(), atol=1e-3)  # summed readout == SNN logits
    preds = classify(tr.outputs["output"], graph_meta(g)["readout"])
    assert np.mean(preds == logits.argmax(1).numpy()) >= 0.99


def test_onnx_matches_torch_ann_branch(ckpt, tmp_path):
    model = checkpoint_to_onnx(ckpt)
    onnx.checker.check_model(model, full_check=True)
    write_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x, _ = load_dataset("digits", "test")
    got = sess.run(None, {"input": x})[0]
    meta, tensors = load_checkpoint(ckpt)
    net = build_model(meta, tensors)
    with torch.no_grad():
        ref, _ = net.ann_forward(torch.from_numpy(x))
    assert np.abs(got - ref.numpy()).max() < 1e-5
