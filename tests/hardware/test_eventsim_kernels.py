"""Kernel choices of the event-driven simulator never change results: the event-gather
dense product against BLAS, and batch slicing under the memory budget."""
import nir
import numpy as np
import pytest

from spikebridge.hardware.eventsim import kernels, simulate
from spikebridge.hardware.eventsim import simulator as sim
from spikebridge.hardware.eventsim.kernels import event_matmul


@pytest.mark.parametrize("density", [0.0, 0.002, 0.01, 0.2, 1.0])
def test_event_matmul_is_exact_on_integer_data(density):
    rng = np.random.default_rng(int(density * 1000))
    x = (rng.random((257, 60)) < density) * rng.integers(-3, 4, size=(257, 60))
    w = rng.integers(-7, 8, size=(60, 33)).astype(np.float64)
    np.testing.assert_array_equal(event_matmul(x.astype(np.float64), w), x @ w)
    xs = (rng.random((257, 60)) < density).astype(np.float64)  # binary spikes, float weights
    wf = rng.normal(size=(60, 33))
    np.testing.assert_allclose(event_matmul(xs, wf), xs @ wf, rtol=0, atol=1e-12)


def _layer_graph(n_in, n_out, W):
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([n_in])),
        "fc": nir.Linear(W),
        "if": nir.IF(r=np.ones(n_out), v_threshold=np.full(n_out, 3.0)),
        "output": nir.Output(np.array([n_out]))},
        edges=[("input", "fc"), ("fc", "if"), ("if", "output")], type_check=False)


def test_sparse_layer_takes_the_event_path_with_identical_results(monkeypatch):
    rng = np.random.default_rng(0)
    W = rng.integers(-2, 3, size=(40, 300)).astype(np.float64)
    g = _layer_graph(300, 40, W)
    x = (rng.random((20, 16, 300)) < 0.005).astype(np.float32)  # 0.5 % activity
    calls = []
    orig = kernels.event_matmul
    monkeypatch.setattr(kernels, "event_matmul", lambda *a: calls.append(1) or orig(*a))
    a = simulate(g, x)
    assert calls, "0.5 % activity must use the event path"
    monkeypatch.setattr(kernels, "EVENT_MAX_DENSITY", 0.0)  # force BLAS
    calls.clear()
    b = simulate(g, x)
    assert not calls
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k])
    assert a.total("macs") == int(((x != 0).reshape(-1, 300) @ (W != 0).sum(0)).sum())


def test_auto_max_batch_bounds_memory_and_keeps_results(monkeypatch):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(8, 10))
    g = _layer_graph(10, 8, W)
    x = (rng.random((5, 37, 10)) < 0.3).astype(np.float64)
    a = simulate(g, x)
    info = sim.analyse(g)
    per_sample = 8 * 5 * sum(int(np.prod(s)) for s in info.shapes.values())
    assert sim.auto_max_batch(info, 5, budget=per_sample * 4) == 4
    monkeypatch.setattr(sim, "MEMORY_BUDGET_BYTES", per_sample * 4)  # slices of 4 samples
    seen = []
    orig = sim.run
    monkeypatch.setattr(sim, "run", lambda g_, x_, *r, **k: seen.append(x_.shape[1]) or orig(g_, x_, *r, **k))
    b = simulate(g, x)
    assert max(seen) <= 4 and sum(seen) == 37 and b.batch == 37
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    np.testing.assert_array_equal(a.spikes["if"], b.spikes["if"])
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k])


def test_bench_simulate_quick_prints_json(capsys):
    """The benchmark stays runnable (tiny sizes, no Lava; snnTorch only if installed)."""
    import json

    from spikebridge.toolchain.cli import main
    assert main(["--no-progress", "bench", "simulate", "--quick", "--no-lava"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["summary"]["all_equal_dense_ref"] is True
    assert {r["graph"] for r in res["activity"]} == {"dense", "conv"}
    assert res["lava"] == {"skipped": "--no-lava"} and "png" not in res


# -- one summation order for every event path ---------------------------------------------

def _events_in_input_order(x, w):
    """Reference: every nonzero x[r, k] adds x[r, k] * w[k] to row r, k ascending, float64."""
    out = np.zeros((x.shape[0], w.shape[1]))
    for r in range(x.shape[0]):
        for k in np.flatnonzero(x[r]):
            out[r] += x[r, k] * w[k]
    return out


@pytest.mark.parametrize("dtype", [bool, np.float32, np.float64])
def test_event_matmul_sums_events_in_input_order(dtype):
    rng = np.random.default_rng(7)
    x = (rng.random((40, 64)) < 0.1) * (1 if dtype is bool else rng.integers(1, 4, size=(40, 64)))
    x = x.astype(dtype)
    w = rng.normal(size=(64, 9))
    w[rng.random(w.shape) < 0.2] = 0.0
    np.testing.assert_array_equal(event_matmul(x, w), _events_in_input_order(x.astype(np.float64), w))
    np.testing.assert_array_equal(event_matmul(np.zeros((3, 64), dtype), w), np.zeros((3, 9)))


CONV_GEOMETRIES = [  # (Conv class, in_shape, weight shape, stride, padding, dilation, groups)
    (nir.Conv2d, (4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2),
    (nir.Conv2d, (3, 10, 10), (5, 3, 5, 5), 2, 0, 1, 1),
    (nir.Conv2d, (4, 7, 9), (8, 1, 3, 3), (2, 3), (1, 0), (2, 1), 4),
    (nir.Conv1d, (2, 12), (3, 2, 3), 2, 1, 1, 1),
]


def _conv_graph(cls, in_shape, wshape, stride, pad, dil, groups, W, b):
    conv = cls(input_shape=in_shape[1:] if cls is nir.Conv2d else in_shape[1], weight=W,
               stride=stride, padding=pad, dilation=dil, groups=groups, bias=b)
    return nir.NIRGraph(nodes={"input": nir.Input(np.array(in_shape)), "conv": conv,
                               "output": nir.Output(None)},
                        edges=[("input", "conv"), ("conv", "output")], type_check=False)


def _run_paths(monkeypatch, g, x):
    """simulate under each conv path: the event path, the dense pass over M, im2col."""
    res = {}
    for path, ev_density, max_nnz in (("event", 2.0, 1 << 22), ("matrix", 0.0, 1 << 22),
                                      ("im2col", 0.0, -1)):
        monkeypatch.setattr(kernels, "CONV_EVENT_MAX_DENSITY", ev_density)
        monkeypatch.setattr(kernels, "_CONV_MATRIX_MAX_NNZ", max_nnz)
        res[path] = simulate(g, x)
    return res


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
@pytest.mark.parametrize("density", [0.01, 0.3, "analog"])
def test_conv_paths_agree(monkeypatch, geom, density):
    cls, in_shape, wshape, stride, pad, dil, groups = geom
    rng = np.random.default_rng(11)
    W = rng.normal(size=wshape)
    W[rng.random(wshape) < 0.25] = 0.0  # zero weights: no entry in M, no synaptic op
    b = rng.normal(size=wshape[0])
    g = _conv_graph(cls, in_shape, wshape, stride, pad, dil, groups, W, b)
    if density == "analog":
        x = rng.normal(size=(3, 5, *in_shape))
    else:
        x = (rng.random((3, 5, *in_shape)) < density).astype(np.float32)
    r = _run_paths(monkeypatch, g, x)
    # the two paths over M sum every output over its inputs in input order: bit-identical
    np.testing.assert_array_equal(r["event"].outputs["output"], r["matrix"].outputs["output"])
    np.testing.assert_allclose(r["matrix"].outputs["output"], r["im2col"].outputs["output"],
                               rtol=1e-12, atol=1e-12)
    for n in r["event"].counts:
        for k in r["event"].counts[n]:
            np.testing.assert_array_equal(r["event"].counts[n][k], r["matrix"].counts[n][k])
            np.testing.assert_array_equal(r["event"].counts[n][k], r["im2col"].counts[n][k])
    # integer-valued data: every path is exact, hence identical
    Wi = rng.integers(-3, 4, size=wshape).astype(np.float64)
    gi = _conv_graph(cls, in_shape, wshape, stride, pad, dil, groups, Wi, np.round(b))
    ri = _run_paths(monkeypatch, gi, np.round(np.asarray(x, np.float64) * 3))
    np.testing.assert_array_equal(ri["event"].outputs["output"], ri["im2col"].outputs["output"])
    np.testing.assert_array_equal(ri["matrix"].outputs["output"], ri["im2col"].outputs["output"])


def test_conv_matrix_entries_are_the_nonzero_weights():
    """M has exactly one entry per (input, output) pair joined by a nonzero weight: its
    column sums of the nonzero mask are the brute-force fan-in, its row counts the fan-out."""
    from spikebridge.hardware.eventsim.counts import fanout
    from spikebridge.hardware.eventsim.profiles import get_profile
    from spikebridge.hardware.graph import analyse
    cls, in_shape, wshape, stride, pad, dil, groups = CONV_GEOMETRIES[0]
    rng = np.random.default_rng(3)
    W = rng.normal(size=wshape)
    W[rng.random(wshape) < 0.3] = 0.0
    g = _conv_graph(cls, in_shape, wshape, stride, pad, dil, groups, W, np.zeros(wshape[0]))
    info = analyse(g)
    ctx = kernels.Context(info=info, profile=get_profile("nir"), dt=1.0)
    p = kernels.KERNELS["Conv2d"].prepare(g.nodes["conv"], "conv", ctx)
    M = kernels.conv_matrix(p)
    np.testing.assert_array_equal(np.diff(M.indptr), fanout(g.nodes["conv"], tuple(in_shape)).reshape(-1))
    # applying M to every unit input reproduces the convolution of that input
    eye = np.eye(M.shape[0]).reshape(-1, *in_shape)
    ref = kernels.conv_forward_im2col(p, eye).reshape(M.shape[0], -1) - p["b"].repeat(
        M.shape[1] // wshape[0])
    np.testing.assert_allclose(M.toarray(), ref, rtol=0, atol=1e-12)


# -- neuron scan over T == the step loop, bit for bit --------------------------------------

def _neuron_nodes(n, rng):
    thr = rng.choice([0.5, 1.0, 1.25], size=n)
    yield "IF", nir.IF(r=rng.choice([0.5, 1.0], size=n), v_threshold=thr, v_reset=np.zeros(n))
    yield "LIF", nir.LIF(tau=np.full(n, 4.0), r=np.full(n, 1.5), v_leak=np.full(n, 0.1),
                         v_threshold=thr, v_reset=np.full(n, -0.25))
    yield "LI", nir.LI(tau=np.full(n, 3.0), r=np.ones(n), v_leak=np.zeros(n))
    yield "CubaLIF", nir.CubaLIF(tau_mem=np.full(n, 5.0), tau_syn=np.full(n, 2.0), r=np.ones(n),
                                 v_leak=np.zeros(n), v_threshold=thr, v_reset=np.zeros(n),
                                 w_in=np.full(n, 2.0))
    yield "I", nir.I(r=np.full(n, 0.75))


@pytest.mark.parametrize("profile", ["spikebridge", "nir", "snntorch", "norse", "sinabs",
                                     "spikingjelly", "lava-float"])
@pytest.mark.parametrize("meta", [None, {"reset": "subtract", "threshold_test": "ge",
                                         "v_init": [0.5, 0.25, 0.0, 0.75, 0.1, 0.0],
                                         "spike_amplitude": 2.0}])
def test_neuron_scan_matches_step_loop(profile, meta):
    from spikebridge.hardware.eventsim.profiles import get_profile
    from spikebridge.hardware.graph import analyse
    rng = np.random.default_rng(5)
    n, T, B = 6, 23, 4
    inp = rng.choice([0.0, 0.25, 0.5, 1.0, -0.5], size=(T, B, n)) + (rng.random((T, B, n)) < 0.3) * rng.normal(size=(T, B, n))
    for kind, node in _neuron_nodes(n, rng):
        if meta is not None:
            node.metadata = {"spikebridge": meta}
        g = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "nrn": node,
                                "output": nir.Output(None)},
                         edges=[("input", "nrn"), ("nrn", "output")], type_check=False)
        info = analyse(g)
        ctx = kernels.Context(info=info, profile=get_profile(profile), dt=0.5)
        k = kernels.KERNELS[kind]
        p = k.prepare(node, "nrn", ctx)
        st = k.init(p, B)
        loop = np.empty((T, B, n))
        for t in range(T):
            loop[t], st = k.step(p, inp[t], st)
        scan, st2 = k.scan(p, inp, k.init(p, B))
        np.testing.assert_array_equal(scan, loop, err_msg=f"{profile} {kind}")
        np.testing.assert_array_equal(st2["v"], st["v"], err_msg=f"{profile} {kind}")
        if kind in ("IF", "LIF"):
            assert 0 < np.count_nonzero(loop) < loop.size  # the case exercises firing


@pytest.mark.parametrize("profile", ["spikebridge", "nir", "snntorch", "norse", "spikingjelly"])
def test_unit_gain_if_scan_matches_step_loop(profile):
    """An IF whose input gain is exactly 1 (r = 1, dt = 1): the scan may read its input as
    the drive, but only where the compiled loop runs it; snnTorch's one-step-late subtraction
    runs the numpy loop, which must then still get the drive (it read uninitialised memory)."""
    from spikebridge.hardware.eventsim.profiles import get_profile
    from spikebridge.hardware.graph import analyse
    rng = np.random.default_rng(8)
    n, T, B = 6, 15, 3
    node = nir.IF(r=np.ones(n), v_threshold=np.full(n, 0.75), v_reset=np.zeros(n))
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "nrn": node, "output": nir.Output(None)},
                     edges=[("input", "nrn"), ("nrn", "output")], type_check=False)
    ctx = kernels.Context(info=analyse(g), profile=get_profile(profile), dt=1.0)
    k = kernels.KERNELS["IF"]
    p = k.prepare(node, "nrn", ctx)
    assert np.all(np.asarray(p["if_scale"]) == 1), profile
    inp = rng.random((T, B, n))
    st = k.init(p, B)
    loop = np.empty((T, B, n))
    for t in range(T):
        loop[t], st = k.step(p, inp[t], st)
    scan, st2 = k.scan(p, inp, k.init(p, B))
    np.testing.assert_array_equal(scan, loop, err_msg=profile)
    np.testing.assert_array_equal(st2["v"], st["v"], err_msg=profile)
    assert 0 < np.count_nonzero(loop) < loop.size


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("meta", [None, {"reset": "subtract", "threshold_test": "ge",
                                         "v_init": [0.5, 0.25, 0.0, 0.75, 0.1, 0.0],
                                         "spike_amplitude": -2.0}])
def test_compiled_neuron_scan_equals_numpy_scan(monkeypatch, meta, precision):
    """The scan's compiled IF / LIF loop (hardware/jit.py neuron_scan) == its numpy loop, bit
    for bit, outputs, spike masks and final membranes, in both precisions (float32: the
    membrane is float32 too, so the step loop is no oracle there)."""
    from spikebridge.hardware import jit
    from spikebridge.hardware.eventsim.profiles import get_profile
    from spikebridge.hardware.graph import analyse
    rng = np.random.default_rng(6)
    n, T, B = 6, 19, 5
    inp = rng.normal(size=(T, B, n)) * (rng.random((T, B, n)) < 0.6)
    assert jit.kernels() is not None
    nodes = [(k, nd) for k, nd in _neuron_nodes(n, rng) if k in ("IF", "LIF")]
    nodes.append(("IF", nir.IF(r=np.ones(n), v_threshold=np.full(n, 0.75), v_reset=np.zeros(n))))  # reads I itself
    for kind, node in nodes:
        if meta is not None:
            node.metadata = {"spikebridge": meta}
        g = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "nrn": node, "output": nir.Output(None)},
                         edges=[("input", "nrn"), ("nrn", "output")], type_check=False)
        ctx = kernels.Context(info=analyse(g), profile=get_profile("spikebridge"), dt=0.5, precision=precision)
        k = kernels.KERNELS[kind]
        p = k.prepare(node, "nrn", ctx)
        x = inp.astype(p["out_dtype"])
        # and the same input at every step, as a broadcast view (direct encoding)
        for xin in (x, np.broadcast_to(x[:1], x.shape)):
            runs = []
            for on in (True, False):
                monkeypatch.setattr(jit, "_KERNELS", jit._KERNELS if on else [None])
                runs.append(k.scan(p, xin, k.init(p, B)))
                monkeypatch.undo()
            (a, sa), (b, sb) = runs
            assert a.dtype == b.dtype == np.dtype(precision)
            np.testing.assert_array_equal(a, b, err_msg=kind)
            np.testing.assert_array_equal(sa["v"], sb["v"], err_msg=kind)
            np.testing.assert_array_equal(sa["_spike_mask"], sb["_spike_mask"], err_msg=kind)
            assert 0 < np.count_nonzero(a) < a.size


def test_input_dtypes_give_identical_results():
    """bool, float32 and float64 inputs (kept as given for the synapse kernels) agree."""
    rng = np.random.default_rng(9)
    W = rng.normal(size=(40, 300))
    g = _layer_graph(300, 40, W)
    s = rng.random((7, 33, 300)) < 0.05
    runs = [simulate(g, s.astype(d)) for d in (bool, np.float32, np.float64)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.outputs["output"], runs[0].outputs["output"])
        assert r.outputs["output"].dtype == np.float64
        for n in r.counts:
            for k in r.counts[n]:
                np.testing.assert_array_equal(r.counts[n][k], runs[0].counts[n][k])
