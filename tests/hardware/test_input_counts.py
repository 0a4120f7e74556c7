"""The input-layer rule for event-count inputs (hardware/eventsim/counts.py ``input_kind``,
``apply_input_rule``): a value k is k spike events, so the input layer's synaptic operations
are sum(value x nonzero fan-out), exactly what the same events given as binary frames cost."""
from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from spikebridge.hardware.backends import run_graph
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.eventsim.counts import INPUT_LAYER_RULES, input_kind, is_counts

RNG = np.random.default_rng(11)
W_FC = RNG.normal(0, 1, (5, 6))
W_FC[0, 1] = W_FC[3, 1] = W_FC[2, 4] = 0.0  # zero weights: no synaptic event
W_OUT = RNG.normal(0, 1, (3, 5))
CIN, COUT, H, W = 2, 3, 5, 6
W_CONV = RNG.normal(0, 1, (COUT, CIN, 3, 3)) * (RNG.random((COUT, CIN, 3, 3)) > 0.35)
STRIDE, PAD = (2, 2), (1, 1)
HO, WO = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                        metadata={"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": 3, "readout": "sum"}})


def dense_graph():
    """input(6) -> Affine(5x6, zero weights) -> IF -> Affine(3x5) -> output."""
    return _graph({"input": nir.Input(np.array([6])),
                   "fc": nir.Affine(W_FC, np.zeros(5)),
                   "if": nir.IF(np.ones(5), np.full(5, 1.5)),
                   "fc2": nir.Affine(W_OUT, np.zeros(3)),
                   "output": nir.Output(np.array([3]))},
                  [("input", "fc"), ("fc", "if"), ("if", "fc2"), ("fc2", "output")])


def conv_graph():
    """input(2x5x6) -> Conv2d(3x2x3x3, stride 2, padding 1, zero weights) -> IF -> Flatten -> Affine -> output."""
    conv = nir.Conv2d(input_shape=(H, W), weight=W_CONV, stride=STRIDE, padding=PAD, dilation=(1, 1),
                      groups=1, bias=np.zeros(COUT))
    n = COUT * HO * WO
    return _graph({"input": nir.Input(np.array([CIN, H, W])),
                   "conv": conv,
                   "if": nir.IF(np.ones((COUT, HO, WO)), np.full((COUT, HO, WO), 1.5)),
                   "flat": nir.Flatten({"input": np.array([COUT, HO, WO])}, start_dim=0),
                   "fc2": nir.Affine(RNG.normal(0, 1, (4, n)), np.zeros(4)),
                   "output": nir.Output(None)},
                  [("input", "conv"), ("conv", "if"), ("if", "flat"), ("flat", "fc2"), ("fc2", "output")])


def hand_dense(x):
    """Per step: sum over samples and inputs of value x (nonzero weights in the input's column)."""
    nz = (W_FC != 0).sum(axis=0)
    return np.array([int(sum(int(v) * int(nz[i]) for b in range(x.shape[1]) for i, v in enumerate(x[t, b])))
                     for t in range(x.shape[0])])


def hand_conv(x):
    """Brute force over output positions and taps: each in-range tap with a nonzero weight adds the
    input value it reads (exact at borders and strides)."""
    out = np.zeros(x.shape[0], dtype=np.int64)
    for t in range(x.shape[0]):
        for b in range(x.shape[1]):
            for co in range(COUT):
                for oy in range(HO):
                    for ox in range(WO):
                        for ci in range(CIN):
                            for ky in range(3):
                                for kx in range(3):
                                    iy, ix = oy * STRIDE[0] - PAD[0] + ky, ox * STRIDE[1] - PAD[1] + kx
                                    if 0 <= iy < H and 0 <= ix < W and W_CONV[co, ci, ky, kx] != 0:
                                        out[t] += int(x[t, b, ci, iy, ix])
    return out


def split_binary(x):
    """The same events as binary frames: step t becomes K steps, step t*K + j holding x[t] > j."""
    K = int(x.max())
    return np.stack([x[t] > j for t in range(x.shape[0]) for j in range(K)]), K


CASES = [("dense", dense_graph, hand_dense, (3, 2, 6), "fc"),
         ("conv", conv_graph, hand_conv, (3, 2, CIN, H, W), "conv")]


@pytest.mark.parametrize("name,make,hand,shape,layer", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_counts_input_costs_value_times_fanout(name, make, hand, shape, layer, dtype):
    g = make()
    x = RNG.integers(0, 4, shape).astype(dtype)  # event counts 0..3
    x.flat[0] = 3
    assert input_kind(x) == "counts"
    tr = run_graph(g, x)
    rec = tr.meta["input_layer"]
    assert rec["input"] == "counts" and rec["nodes"] == [layer] and rec["rule"] == INPUT_LAYER_RULES["counts"]
    sops = tr.counts[layer]["synaptic_ops"]
    assert sops.dtype == np.int64
    np.testing.assert_array_equal(sops, hand(x))
    assert tr.total("macs") == 0
    # eventsim's outputs and every other count are unchanged (only the input layer's costing)
    ref = simulate(g, x)
    for o in ref.outputs:
        np.testing.assert_array_equal(tr.outputs[o], ref.outputs[o])
    for n in ref.counts:
        if n != layer:
            for k in ref.counts[n]:
                np.testing.assert_array_equal(tr.counts[n][k], ref.counts[n][k])
    # a count of k costs what k binary events cost: the events split over K binary steps
    xb, K = split_binary(x)
    trb = run_graph(g, xb)
    assert trb.meta["input_layer"]["input"] == "binary"
    np.testing.assert_array_equal(sops, trb.counts[layer]["synaptic_ops"].reshape(-1, K).sum(axis=1))
    # the mask count (what analog costing would give) is smaller
    assert sops.sum() > ref.counts[layer]["macs"].sum()


@pytest.mark.parametrize("profile", ["lava-float"])
def test_counts_aligned_with_synaptic_delay(profile):
    """A profile with synaptic delays delivers (and counts) events later: the weighted count
    follows the same steps."""
    g = dense_graph()
    x = RNG.integers(0, 3, (4, 2, 6)).astype(np.uint8)
    x[0, 0, 0] = 2
    from spikebridge.hardware.backends import RunOptions

    tr = run_graph(g, x, "eventsim", RunOptions(profile=profile))
    ref = simulate(g, x, profile=profile)
    macs = ref.counts["fc"]["macs"]
    h = hand_dense(x)
    s = int(np.flatnonzero(macs)[0] - np.flatnonzero(h)[0])  # the profile's delivery delay
    expected = np.zeros_like(h)
    expected[s:] = h[:len(h) - s]
    np.testing.assert_array_equal(tr.counts["fc"]["synaptic_ops"], expected)
    assert tr.meta["input_layer"]["input"] == "counts" and tr.total("macs") == 0


@pytest.mark.parametrize("name,make,hand,shape,layer", CASES, ids=[c[0] for c in CASES])
def test_counts_on_loihi_fixed(name, make, hand, shape, layer):
    """The Loihi plan's counts (another graph reading, no synaptic delay in the aligned counts)."""
    x = RNG.integers(0, 4, shape).astype(np.uint8)
    x.flat[0] = 3
    tr = run_graph(make(), x, "loihi-fixed")
    assert tr.meta["input_layer"]["input"] == "counts" and tr.total("macs") == 0
    np.testing.assert_array_equal(tr.counts[layer]["synaptic_ops"], hand(x))


def test_analog_and_binary_unchanged():
    g = dense_graph()
    xa = RNG.integers(0, 4, (3, 2, 6)).astype(np.float64) + 0.5  # non-integral: analog
    tr = run_graph(g, xa)
    assert tr.meta["input_layer"]["input"] == "analog"
    np.testing.assert_array_equal(tr.counts["fc"]["macs"], hand_dense(xa != 0))
    assert tr.counts["fc"]["synaptic_ops"].sum() == 0
    xn = RNG.integers(-2, 3, (3, 2, 6)).astype(np.int8)  # negative integers: analog
    assert run_graph(g, xn).meta["input_layer"]["input"] == "analog"
    xb = RNG.random((3, 2, 6)) < 0.5
    for arr in (xb, xb.astype(np.uint8), xb.astype(np.float32)):
        tr = run_graph(g, arr)
        assert tr.meta["input_layer"]["input"] == "binary" and tr.total("macs") == 0
        np.testing.assert_array_equal(tr.counts["fc"]["synaptic_ops"], hand_dense(arr.astype(np.int64)))


def test_is_counts():
    assert is_counts(np.array([0, 2, 1], np.uint8)) and is_counts(np.array([0.0, 3.0]))
    assert is_counts(np.broadcast_to(np.array([0, 5], np.int16)[None], (4, 2)))
    assert not is_counts(np.array([0, 1], np.uint8)) and not is_counts(np.array([True, False]))
    assert not is_counts(np.array([0.0, 2.5])) and not is_counts(np.array([0, -2, 3]))
    assert not is_counts(np.array([2.0, np.inf])) and not is_counts(np.array([2.0, np.nan]))
    assert input_kind(np.array([0.5])) == "analog" and input_kind(np.array([0, 1])) == "binary"


def test_counts_from_cli_and_energy(tmp_path, capsys):
    """simulate --input with an integer count array: the JSON says counts; energy charges E_AC."""
    from spikebridge.exporters.nir_export import write_nir
    from spikebridge.hardware import energy
    from spikebridge.toolchain.cli import main

    g = dense_graph()
    path = tmp_path / "g.nir"
    write_nir(g, path)
    x = RNG.integers(0, 4, (3, 5, 6)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    code = main(["--no-progress", "simulate", str(path), "--input", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "s.npz")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_layer"]["input"] == "counts" and summary["macs_per_sample"] == 0
    z = np.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(z["counts/fc/synaptic_ops"], hand_dense(x))
    tr = run_graph(nir.read(path), x)
    e = energy.estimate(tr, nir.read(path), "horowitz-45nm")
    assert e["input_layer"]["input"] == "counts"
    assert e["per_operation_pj_per_sample"].get("mac_pj_per_sample", 0.0) == 0.0
    assert e["total_pj_per_sample"] == pytest.approx(0.9 * tr.total("synaptic_ops") / 5, rel=1e-12)
