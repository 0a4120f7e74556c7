"""--format onnx-step: one SNN step with the membranes as explicit inputs/outputs; looped
T times in onnxruntime it reproduces the torch SNN's spikes exactly."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spikebridge.exporters.nir_import import graph_to_torch
from spikebridge.exporters.onnx_step import checkpoint_to_onnx_step, graph_to_onnx_step, initial_state, run_steps
from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.eventsim import simulate
from spikebridge.models.checkpoint import build_model, load_checkpoint
from spikebridge.models.datasets import load_dataset
from tests._trained import trained_checkpoint
from tests.exporters.test_nir_import import hand_built_graph, recurrent_graph
from spikebridge.toolchain.cli import main


@pytest.fixture(scope="module")
def ckpt():
    return trained_checkpoint()


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_step_loop_reproduces_torch_spikes_exactly(ckpt, tmp_path):
    assert main(["export", str(ckpt), "--format", "onnx-step", "--out", str(tmp_path / "step.onnx")]) == 0
    model = onnx.load(str(tmp_path / "step.onnx"))
    onnx.checker.check_model(model, full_check=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    assert names_in == ["x_t", "v_conv1_if", "v_conv2_if", "v_fc1_if"]
    assert {"output", "s_fc1_if", "v_fc1_if_next"} <= set(names_out)
    meta, tensors = load_checkpoint(ckpt)
    net = build_model(meta, tensors)
    x, _ = load_dataset("digits", "test")
    T = meta["timesteps"]
    with torch.no_grad():
        logits, _, spikes = net.snn_forward(torch.from_numpy(x), record=True)
    rec = run_steps(_session(model), model, np.broadcast_to(x[None], (T, *x.shape)))
    layers = [f"s_{s['name']}_if" for s in meta["layers"] if s.get("neuron")]
    for name, s in zip(layers, spikes):
        assert np.array_equal(rec[name] != 0, s.numpy() != 0), name  # float32 both sides: exact
    assert np.abs(rec["output"].sum(0) - logits.numpy()).max() < 1e-5


def test_step_of_hand_built_graph_matches_import_and_eventsim():
    g = hand_built_graph()
    model = graph_to_onnx_step(g)
    st = initial_state(model, 2)
    assert np.allclose(st["v_if1"], 0.35) and st["v_if2"].shape == (2, 4, 6, 6)
    x = np.random.default_rng(5).uniform(0, 1, (6, 9, 1, 6, 6)).astype(np.float32)
    rec = run_steps(_session(model), model, x)
    with torch.no_grad():
        _, ref = graph_to_torch(g)(torch.from_numpy(x), record=True)  # float32, same op order
    tr = simulate(g, x.astype(np.float64))  # float64
    for n in ("if1", "if2", "lif", "cuba"):
        a = rec[f"s_{n}"]
        assert np.mean((a != 0) == (ref[n].numpy() != 0)) >= 0.999, n
        assert np.mean((a != 0) == tr.spikes[n]) >= 0.99, n  # float32 vs float64: flips at threshold only
    assert np.abs(rec["output"] - ref["output"].numpy()).max() < 1e-4


def test_step_rejects_recurrence_clearly():
    with pytest.raises(UnsupportedError, match="back edges"):
        graph_to_onnx_step(recurrent_graph())


def test_checkpoint_step_export_checks(ckpt):
    model = checkpoint_to_onnx_step(ckpt)
    onnx.checker.check_model(model, full_check=True)
    props = {p.key for p in model.metadata_props}
    assert {"spikebridge.state", "spikebridge.graph"} <= props
