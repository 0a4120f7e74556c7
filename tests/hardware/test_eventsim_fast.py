"""eventsim's fast paths against its reference arithmetic: the float32 products (event path
and dense path, chosen per step block), the direct-encoding shortcut, batch streaming in
chunks over threads, and the memory estimate that no longer refuses what streaming fits.

Equality, never speed. Two kinds of data:
- dyadic weights, thresholds and inputs (multiples of 1/8, small): every sum is exact in
  float32 and float64 whatever the order, so the float32 run must equal the float64 event
  path bit for bit: spikes, outputs, counts;
- real-valued weights: the synaptic currents agree within the declared tolerance
  (simulator.FLOAT32_RTOL x fan-in, relative to the summed magnitudes), counts agree
  exactly wherever the spikes do.
"""
from __future__ import annotations

import zlib

import nir
import numpy as np
import pytest

from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.eventsim import kernels, simulate
from spikebridge.hardware.eventsim import simulator as sim
from spikebridge.hardware.graph import analyse

SB = "spikebridge"


def _if(shape, thr, v_init, reset="subtract"):
    n = nir.IF(r=np.ones(shape), v_threshold=np.full(shape, thr), v_reset=np.zeros(shape))
    n.metadata = {SB: {"reset": reset, "threshold_test": "gt", "v_init": v_init, "spike_amplitude": 1.0}}
    return n


def _dyadic(rng, shape, lo=-4, hi=5):
    return rng.integers(lo, hi, size=shape) / 8.0


def conv_net(rng, c_in=3, hw=12, c1=8, c2=16, dyadic=True, stride2=2, groups=1):
    """Input -> Conv3x3 -> IF -> Conv3x3 (+ Scale skip) -> IF -> Conv(stride) -> IF ->
    AvgPool -> Flatten -> Affine -> IF -> Output: a small residual CNN."""
    w = (lambda s: _dyadic(rng, s)) if dyadic else (lambda s: rng.normal(size=s) * 0.3)
    s1 = (c1, hw, hw)
    h2 = (hw + 2 - 3) // stride2 + 1
    s3 = (c2, h2, h2)
    hp = h2 // 2
    nodes = {
        "input": nir.Input(np.array([c_in, hw, hw])),
        "conv1": nir.Conv2d(input_shape=(hw, hw), weight=w((c1, c_in, 3, 3)), stride=1, padding=1,
                            dilation=1, groups=1, bias=w((c1,))),
        "if1": _if(s1, 1.0, 0.5),
        "conv2": nir.Conv2d(input_shape=(hw, hw), weight=w((c1, c1 // groups, 3, 3)), stride=1,
                            padding=1, dilation=1, groups=groups, bias=w((c1,))),
        "skip": nir.Scale(np.full(s1, 0.5)),
        "if2": _if(s1, 0.75, 0.25),
        "conv3": nir.Conv2d(input_shape=(hw, hw), weight=w((c2, c1, 3, 3)), stride=stride2, padding=1,
                            dilation=1, groups=1, bias=w((c2,))),
        "if3": _if(s3, 1.0, 0.5),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([c2, hp, hp])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=w((10, c2 * hp * hp)), bias=w((10,))),
        "if4": _if((10,), 1.0, 0.5),
        "output": nir.Output(np.array([10])),
    }
    edges = [("input", "conv1"), ("conv1", "if1"), ("if1", "conv2"), ("conv2", "if2"), ("if1", "skip"),
             ("skip", "if2"), ("if2", "conv3"), ("conv3", "if3"), ("if3", "pool"), ("pool", "flat"),
             ("flat", "fc"), ("fc", "if4"), ("if4", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def dense_net(rng, sizes=(300, 200, 10), dyadic=True):
    w = (lambda s: _dyadic(rng, s)) if dyadic else (lambda s: rng.normal(size=s) * 0.2)
    nodes, edges, prev = {"input": nir.Input(np.array([sizes[0]]))}, [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        nodes[f"fc{i}"] = nir.Affine(weight=w((b, a)), bias=w((b,)))
        nodes[f"if{i}"] = _if((b,), 1.0, 0.5)
        edges += [(prev, f"fc{i}"), (f"fc{i}", f"if{i}")]
        prev = f"if{i}"
    nodes["output"] = nir.Output(np.array([sizes[-1]]))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _spikes(rng, T, B, shape, rate):
    return rng.random((T, B, *shape)) < rate


def _assert_same_trace(a, b):
    for o in a.outputs:
        np.testing.assert_array_equal(a.outputs[o], b.outputs[o])
    for n in a.spikes:
        np.testing.assert_array_equal(a.spikes[n], b.spikes[n], err_msg=n)
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k], err_msg=f"{n} {k}")


def _forced(monkeypatch, path):
    """Force every product down one path: 'events', 'dense', or None (the cost model)."""
    d = {"events": 2.0, "dense": -1.0, None: None}[path]
    monkeypatch.setattr(kernels, "CONV_EVENT_MAX_DENSITY", d)
    monkeypatch.setattr(kernels, "EVENT_MAX_DENSITY", d)


# -- float32 fast paths == the float64 event path on exact (dyadic) data --------------------

@pytest.mark.parametrize("shape", [dict(), dict(c_in=2, hw=9, c1=6, c2=12, stride2=1),
                                   dict(hw=10, groups=2), dict(c_in=1, hw=7, c1=4, c2=8, stride2=3)])
@pytest.mark.parametrize("rate", [0.02, 0.15, 0.5, "analog"])
def test_float32_paths_equal_event_path_on_dyadic_graphs(monkeypatch, shape, rate):
    rng = np.random.default_rng(zlib.crc32(f"{shape}{rate}".encode()))
    g = conv_net(rng, **shape)
    c_in, hw = shape.get("c_in", 3), shape.get("hw", 12)
    T, B = 5, 3
    if rate == "analog":  # direct encoding: the same analog frame every step
        x = np.broadcast_to(_dyadic(rng, (1, B, c_in, hw, hw), 0, 9), (T, B, c_in, hw, hw)).copy()
    else:
        x = _spikes(rng, T, B, (c_in, hw, hw), rate)
    _forced(monkeypatch, "events")
    ref = simulate(g, x, profile=SB, precision="float64")
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0, "the case must spike"
    for path in ("events", "dense", None):
        _forced(monkeypatch, path)
        _assert_same_trace(ref, simulate(g, x, profile=SB, precision="float32"))
    _forced(monkeypatch, None)
    _assert_same_trace(ref, simulate(g, x, profile=SB, precision="float64"))


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.6])
def test_dense_layers_float32_equal_on_dyadic(monkeypatch, rate):
    rng = np.random.default_rng(int(rate * 100))
    g = dense_net(rng)
    x = _spikes(rng, 6, 40, (300,), rate)
    _forced(monkeypatch, "events")
    ref = simulate(g, x, profile=SB)
    for path in ("events", "dense", None):
        _forced(monkeypatch, path)
        _assert_same_trace(ref, simulate(g, x, profile=SB, precision="float32"))


def test_per_step_blocks_mix_paths_with_identical_results(monkeypatch):
    """Activity changing over time: some steps take the event path, others the dense one
    (a forced crossover between the steps' densities); the mix equals either path alone."""
    rng = np.random.default_rng(3)
    g = conv_net(rng)
    T, B = 6, 4
    rates = [0.01, 0.6, 0.02, 0.5, 0.0, 0.3]
    x = np.stack([_spikes(rng, 1, B, (3, 12, 12), r)[0] for r in rates])
    seen = []
    orig_ev, orig_de = kernels._conv32_events, kernels._conv32_dense
    monkeypatch.setattr(kernels, "_conv32_events",
                        lambda p, x2, m=None: seen.append(("ev", x2.shape[0])) or orig_ev(p, x2, m))
    monkeypatch.setattr(kernels, "_conv32_dense",
                        lambda p, x: seen.append(("de", x.shape[0])) or orig_de(p, x))
    _forced(monkeypatch, "events")
    ref = simulate(g, x, profile=SB)
    monkeypatch.setattr(kernels, "CONV_EVENT_MAX_DENSITY", 0.1)
    seen.clear()
    mixed = simulate(g, x, profile=SB, precision="float32")
    kinds = {k for k, _ in seen}
    assert kinds == {"ev", "de"}, seen  # both paths ran, on step blocks (multiples of B rows)
    assert all(n % B == 0 for _, n in seen)
    _assert_same_trace(ref, mixed)


# -- real-valued weights: the declared tolerance ----------------------------------------------

def _currents(g, x, precision, monkeypatch, path):
    """The synaptic currents (every conv / affine output) of one run."""
    _forced(monkeypatch, path)
    info = analyse(g)
    acts, *_ = sim.run(g, x, SB, None, info, precision)
    return {n: np.asarray(a, np.float64) for n, a in acts.items()
            if info.types[n] in ("Conv2d", "Affine")}, acts


@pytest.mark.parametrize("path", ["events", "dense", None])
def test_float32_currents_within_declared_tolerance(monkeypatch, path):
    rng = np.random.default_rng(8)
    g = conv_net(rng, dyadic=False)
    x = _spikes(rng, 4, 3, (3, 12, 12), 0.2)
    info = analyse(g)
    # feed both precisions the same spikes: compare layer by layer on the float64 inputs
    ref, acts64 = _currents(g, x, "float64", monkeypatch, "events")
    _forced(monkeypatch, path)
    from spikebridge.hardware.eventsim.kernels import KERNELS, Context
    from spikebridge.hardware.eventsim.profiles import get_profile
    ctx = Context(info=info, profile=get_profile(SB), dt=1.0, precision="float32")
    for n, y64 in ref.items():
        node = g.nodes[n]
        p = KERNELS[info.types[n]].prepare(node, n, ctx)
        src = acts64[info.preds[n][0]]
        inp = src.reshape(-1, *src.shape[2:])
        y32 = np.asarray(KERNELS[info.types[n]].forward(p, inp), np.float64).reshape(y64.shape)
        w = np.abs(np.asarray(node.weight, np.float64))
        fan_in = int(np.prod(w.shape[1:]))
        # |sum| of the magnitudes each output adds up, bounded by max|w| x fan-in x max|x| + |b|
        scale = w.max() * fan_in * float(np.abs(inp).max()) + float(np.abs(node.bias).max())
        tol = sim.FLOAT32_RTOL * fan_in * scale
        assert np.abs(y32 - y64).max() <= tol, (n, np.abs(y32 - y64).max(), tol)


def test_float32_run_agrees_with_float64_on_real_weights():
    """Whole runs on real weights: outputs close, and counts identical wherever every
    spike agrees (a flip can only come from a membrane within rounding of its threshold)."""
    rng = np.random.default_rng(21)
    g = conv_net(rng, dyadic=False)
    x = _spikes(rng, 6, 4, (3, 12, 12), 0.1)
    a = simulate(g, x, profile=SB)
    b = simulate(g, x, profile=SB, precision="float32")
    assert b.meta["precision"] == "float32" and a.meta["precision"] == "float64"
    flips = sum(int((a.spikes[n] != b.spikes[n]).sum()) for n in a.spikes)
    total = sum(int(a.spikes[n].size) for n in a.spikes)
    assert flips <= 1e-3 * total
    if flips == 0:
        _assert_same_trace(a, b)


# -- streaming, threads, the direct-encoding shortcut --------------------------------------------

def test_streamed_chunks_over_threads_equal_one_run(monkeypatch):
    rng = np.random.default_rng(4)
    g = conv_net(rng)
    x = _spikes(rng, 4, 37, (3, 12, 12), 0.2)
    one = simulate(g, x, profile=SB, max_batch=37, workers=1)
    info = analyse(g)
    per_sample = 8 * 4 * sum(int(np.prod(s)) for s in info.shapes.values())
    monkeypatch.setattr(sim, "MEMORY_BUDGET_BYTES", per_sample * 10)  # 10 samples, 5 per worker
    seen = []
    orig = sim.run
    monkeypatch.setattr(sim, "run", lambda *a, **k: seen.append(a[1].shape[1]) or orig(*a, **k))
    for precision in ("float64", "float32"):
        seen.clear()
        two = simulate(g, x, profile=SB, workers=2, precision=precision)
        assert max(seen) <= 5 and sum(seen) == 37 and two.batch == 37
        _assert_same_trace(one, two)


def test_direct_encoding_computes_the_first_layer_once(monkeypatch):
    rng = np.random.default_rng(5)
    g = conv_net(rng, dyadic=False)
    frame = rng.random((1, 3, 3, 12, 12))
    x = np.broadcast_to(frame, (5, 3, 3, 12, 12)).copy()
    rows = []
    orig = kernels.KERNELS["Conv2d"].forward
    monkeypatch.setitem(kernels.KERNELS, "Conv2d", kernels.Kernel(
        kernels.KERNELS["Conv2d"].prepare, lambda p, x_: rows.append(x_.shape[0]) or orig(p, x_)))
    a = simulate(g, x, profile=SB)
    assert rows[0] == 3  # conv1 ran on one step (B rows), the others on T*B
    x2 = x.copy()
    x2[-1, 0, 0, 0, 0] += 1e-3  # no longer constant: every step computed
    rows.clear()
    simulate(g, x2, profile=SB)
    assert rows[0] == 15
    # equal to computing every step (float64: the event and M paths are row-independent)
    monkeypatch.setattr(sim, "_constant_over_time", lambda x_: False)
    b = simulate(g, x, profile=SB)
    np.testing.assert_allclose(a.outputs["output"], b.outputs["output"], rtol=0, atol=1e-12)
    for n in a.spikes:
        np.testing.assert_array_equal(a.spikes[n], b.spikes[n])


def test_precision_float32_refused_for_library_profiles():
    rng = np.random.default_rng(6)
    g = dense_net(rng, sizes=(20, 10))
    x = _spikes(rng, 3, 2, (20,), 0.3)
    for prof in ("snntorch", "norse", "sinabs", "spikingjelly", "lava-float"):
        with pytest.raises(UnsupportedError, match="stays float64"):
            simulate(g, x, profile=prof, precision="float32")
    with pytest.raises(UnsupportedError, match="precision"):
        simulate(g, x, profile=SB, precision="float16")
    assert simulate(g, x, profile="nir", precision="float32").meta["precision"] == "float32"


def test_machine_costs_measured_and_cached():
    c = kernels.machine_costs()
    assert c is kernels.machine_costs()
    for d in (c.mac, c.ev_op, c.ev_event):
        assert set(d) == {"float32", "float64"} and all(0 < v < 1e-3 for v in d.values())
    assert all(0 < v < 1e-3 for v in (c.conv_op, c.conv_row, c.conv_scan, c.spgemm_op, c.mpass_op))


# -- memory: a batch streams instead of being refused --------------------------------------------

def test_memory_estimate_streams_large_batches():
    from spikebridge.base.errors import ResourceError
    from spikebridge.hardware.memory import GiB, check_memory, estimate_eventsim
    shape = np.array([64, 128, 128])  # 1 M values per node and step: 64 MiB float64 per sample-step
    nodes = {"input": nir.Input(input_type={"input": shape}),
             "flat": nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1),
             "output": nir.Output(output_type={"output": np.array([int(np.prod(shape))])})}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "flat"), ("flat", "output")], type_check=False)
    info = analyse(g)
    small, big = estimate_eventsim(g, info, 8, 16), estimate_eventsim(g, info, 8, 4096)
    assert big.activations == small.activations  # chunked: does not grow with the batch
    check_memory(estimate_eventsim(g, info, 2, 64), 4 * GiB)  # was 12 GiB of activations: refused
    with pytest.raises(ResourceError):  # one sample alone above the limit: still refused
        check_memory(estimate_eventsim(g, info, 64, 1), 1 * GiB)


def test_bench_scale_sweep_quick(capsys):
    """The scale sweep stays runnable (digits CNN only at --quick): rows with rates,
    rates of both references, prediction identity, and the 5 % layer beside the gather
    ceiling. No speed is asserted."""
    import json

    from spikebridge.toolchain.cli import main
    assert main(["--no-progress", "bench", "simulate", "--quick", "--sweep-only"]) == 0
    res = json.loads(capsys.readouterr().out)
    (row,) = res["scale_sweep"]
    assert row["net"] == "digits_cnn" and 0 < row["firing_rate"] < 1
    for k in ("eventsim_samples_per_s", "dense_ref_samples_per_s", "nir_module_samples_per_s"):
        assert row[k] > 0
    assert row["predictions_equal_dense_ref"] >= 0.9 and row["predictions_equal_nir_module"] >= 0.9
    layer = res["dense_layer_5pct"]
    assert layer["eventsim_float32_synaptic_ops_per_s"] > 0 and layer["gather_ceiling_float32_ops_per_s"] > 0
    assert res["machine"]["cpu_model"] and "load_average_end" in res["machine"]
