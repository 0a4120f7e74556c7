"""The fast integer model (hardware/loihi/fast.py) against the reference integer model
(hardware/loihi/reference.py, the oracle that tests/hardware/test_lava_fixed.py checks against Lava
fixed_pt): identical spikes, u and v at every step, analog readouts, counts. No Lava needed.

Cases: the 200 random graphs of test_lava_fixed (1-4 layers, Affine or Conv2d, IF, LIF,
CubaLIF, per-neuron thresholds, v_init, edge-case biases), each with the per-graph du/dv
edge cases and raw odd weights of its merged Lava batches, and the merged batches
themselves (per-neuron du/dv/vth vectors); the residual graphs of test_lava_skip (DelayDense,
and DelaySparse / Sparse by a lowered Dense size limit); threshold groups; and hand-made
plans whose sums need float64, int64, int32 wrap-around and the 24-bit fold of u.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.loihi import fixed_trace, runner
from spikebridge.hardware.loihi.fast import F32_EXACT, F64_EXACT, Synapse, compile_qplan, row_blocks, run_qplan_fast
from spikebridge.hardware.loihi.fixedpoint import quantize
from spikebridge.hardware.loihi.plan import lower
from spikebridge.hardware.loihi.reference import run_qplan
from test_lava_fixed import assert_same_run, build_batch, random_graph
from test_lava_groups import spread_graph
from test_lava_skip import GRAPHS, residual_graph

N_GRAPHS = int(os.environ.get("SPIKEBRIDGE_FIXED_GRAPHS", "200"))


@pytest.fixture(params=["compiled", "numpy"], autouse=True)
def loops(request, monkeypatch):
    """Every test twice: with the compiled loops (hardware/jit.py: the integer event sums and
    the neuron scan) and with them off (the numpy/BLAS paths they replace)."""
    from spikebridge.hardware import jit
    if request.param == "numpy":
        monkeypatch.setattr(jit, "_KERNELS", [None])
    else:
        assert jit.kernels() is not None, "numba is a dependency: the compiled loops must load"
    return request.param


def assert_same(meta, arrays, x, what=""):
    want = run_qplan(meta, arrays, x, record_state=True)
    got = run_qplan_fast(meta, arrays, x, record_state=True)
    for part in ("spikes", "a_out", "u", "v", "outputs"):
        assert set(got[part]) == set(want[part]), (what, part)
        for n in want[part]:
            np.testing.assert_array_equal(got[part][n], want[part][n], err_msg=f"{what} {part} {n}")
    return want


def test_random_graphs_equal_the_reference():
    rng = np.random.default_rng(2024)
    done, spikes, decays = 0, 0, set()
    while done < N_GRAPHS:
        depth, T = int(rng.integers(1, 5)), int(rng.integers(2, 9))
        qs, xs = [], []
        while len(qs) < 10:
            g = random_graph(rng, depth)
            plan = lower(g, T)
            if len(plan.meta["populations"]) != depth:
                continue
            q = quantize(plan)
            x = rng.uniform(-0.2, 1.0, size=(T, 3, q.meta["input"]["size"]))
            if rng.random() < 0.2:
                x = (x > 0.5).astype(float)
            qs.append(q)
            xs.append(q.quantize_input(x))
        merged, arrays, own, _, _ = build_batch(rng, qs, depth)
        P = merged["window"]
        for gi, (m, a) in enumerate(own):  # each graph with its edge-case du/dv and Lava's weights
            xp = np.zeros((P, 3, xs[gi].shape[2]))
            xp[:T] = xs[gi]
            res = assert_same(m, a, xp, f"graph {done}")
            spikes += sum(int(s.sum()) for s in res["spikes"].values())
            decays |= {(p["du"] == 4095, p["dv"] == 0) for p in m["populations"]}
            done += 1
        xm = np.zeros((P, 3, merged["input"]["size"]))
        xm[:T] = np.concatenate(xs, axis=2)
        assert_same(merged, arrays, xm, "merged batch (per-neuron du/dv/vth)")
    assert spikes > 1000 and decays == {(True, True), (True, False), (False, True), (False, False)}


@pytest.mark.parametrize("dense_max", [250_000, 200])
def test_skip_graphs_equal_the_reference(monkeypatch, dense_max):
    monkeypatch.setattr(runner, "DENSE_MAX_ELEMENTS", dense_max)  # 200: Sparse and DelaySparse
    rng = np.random.default_rng(5)
    for projection, kinds in GRAPHS:
        g = residual_graph(rng, projection, kinds)
        T = 10
        x = rng.uniform(0, 1, size=(T, 3, 2, 6, 6))
        D = lower(g, T).meta["max_depth"]
        a = fixed_trace(g, x, window=T + D, record_state=True)
        b = fixed_trace(g, x, window=T + D, record_state=True, engine="reference")
        assert a.meta["engine"] == "fast" and b.meta["engine"] == "reference"
        assert any(s.any() for s in a.spikes.values())
        assert_same_run(b, a)
        for n, c in b.counts.items():
            for k, v in c.items():
                np.testing.assert_array_equal(a.counts[n][k], v, err_msg=f"{n} {k}")


def test_threshold_groups_equal_the_reference():
    g, rng = spread_graph()
    x = rng.uniform(0, 1, size=(20, 6, 16))
    a = fixed_trace(g, x, threshold_groups=True)
    b = fixed_trace(g, x, threshold_groups=True, engine="reference")
    assert a.meta["threshold_groups"] and any(s.any() for s in a.spikes.values())
    for n in b.spikes:
        np.testing.assert_array_equal(a.spikes[n], b.spikes[n], err_msg=n)
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    # eventsim's profile runs the fast model
    c = simulate(g, x, profile="loihi-fixed-groups")
    np.testing.assert_array_equal(c.outputs["output"], b.outputs["output"])


def _plan(w, wexp, delay=0, du=4095, dv=0, vth=1, bias=0, readout=False, sign_mode=None):
    """A one-population plan (input -> pop, optionally pop -> analog readout) with raw weights."""
    w = np.asarray(w, dtype=np.int64)
    rows, cols = w.shape
    r, c = np.nonzero(np.ones_like(w))
    arrays = {"w_rows": r, "w_cols": c, "w_vals": w[r, c], "w_shape": np.array([rows, cols]),
              "p__bias_mant": np.full(rows, bias), "p__bias_exp": np.zeros(rows, np.int64),
              "p__vinit": np.zeros(rows, np.int64)}
    meta = {"input": {"name": "in", "size": cols, "shape": [cols]}, "window": 8, "max_depth": 1,
            "populations": [{"name": "p", "size": rows, "shape": [rows], "du": du, "dv": dv, "vth": vth,
                             "depth": 1, "reset": "zero"}],
            "connections": [{"id": "c0", "source": "in", "target": "p", "terms": [["w"]], "rows": rows,
                             "cols": cols, "weight_exp": wexp, "delay": delay, "sign_mode": sign_mode}],
            "readouts": [], "dense_max_elements": 250_000}
    if readout:
        arrays.update({"o_rows": np.repeat(np.arange(rows), rows), "o_cols": np.tile(np.arange(rows), rows),
                       "o_vals": np.arange(rows * rows) % 7 - 3, "o_shape": np.array([rows, rows]),
                       "out__scale": np.array([0.5]), "out__bias": np.zeros(rows)})
        meta["connections"].append({"id": "c1", "source": "p", "target": "out", "terms": [["o"]], "rows": rows,
                                    "cols": rows, "weight_exp": 0, "delay": 0})
        meta["readouts"] = [{"name": "out", "kind": "analog", "size": rows, "shape": [rows], "depth": 2}]
    return meta, arrays


@pytest.mark.parametrize("case", ["f32", "f64", "wrap32", "delaydense", "fold24", "decays"])
def test_exact_arithmetic_paths(case):
    """Each product path and Lava's wrap points: sums that need float64 (>= 2^24), int32
    accumulations that wrap (Dense: wrap, then shift; DelayDense: shift,
    then wrap), u beyond 24 bits, and u/v decays."""
    rng = np.random.default_rng(hash(case) % 2 ** 32)
    rows, cols, S, B = 7, 40, 6, 4
    w = rng.integers(-256, 256, size=(rows, cols))
    x = rng.integers(0, 2, size=(S, B, cols)).astype(float)
    kw = {}
    if case == "f64":
        x = rng.integers(-(1 << 20), 1 << 20, size=(S, B, cols)).astype(float)   # bound ~2^33
    elif case in ("wrap32", "delaydense"):
        x = rng.integers((1 << 22), 1 << 23, size=(S, B, cols)).astype(float)     # sums beyond int32
        w = np.abs(w)
        kw = {"wexp": -8, "delay": 2 if case == "delaydense" else 0}  # a_in << 6 keeps the difference
    elif case == "fold24":
        kw = {"wexp": 6}  # binary x, w >= 0: a_in << 6 around 2^23.5, folded once into 24 bits
        w = np.abs(w)
    elif case == "decays":
        kw = {"du": 1000, "dv": 300, "wexp": -2, "bias": -3}
        x = rng.integers(0, 1 << 6, size=(S, B, cols)).astype(float)
    meta, arrays = _plan(w, kw.pop("wexp", 0), readout=True, vth=int(rng.integers(1, 2000)), **kw)
    syn = compile_qplan(meta, arrays)["syn"]["c0"]
    bound = syn.row_abs.max() * np.abs(x).max()
    expect = {"f32": bound < F32_EXACT, "f64": F32_EXACT <= bound < F64_EXACT,
              "wrap32": bound >= 2 ** 31, "delaydense": bound >= 2 ** 31, "fold24": True, "decays": True}[case]
    assert expect, (case, bound)
    want = assert_same(meta, arrays, x, case)
    if case == "fold24":
        raw = (x.astype(np.int64) @ s_eff(w).T) << (6 + 6)
        assert (np.abs(raw) > (1 << 23)).any() and (np.abs(want["u"]["p"]) <= (1 << 23)).all()
    if case == "delaydense":  # DelayDense and Dense differ here (int64 accumulation before the shift)
        assert syn.wrap_first is False
        meta2 = dict(meta, connections=[dict(meta["connections"][0], delay=0)] + meta["connections"][1:])
        assert not np.array_equal(run_qplan(meta2, arrays, x, record_state=True)["u"]["p"], want["u"]["p"])


@pytest.mark.parametrize("events", [True, False])
@pytest.mark.parametrize("blocks", [True, False])
def test_every_product_path_gives_the_same_integers(blocks, events, monkeypatch):
    """float32, float64, int64 (chosen by the bound: an x_max claimed beyond 2^53 forces the
    int64 product; 24-bit inputs reach 2^53 only with a fan-in of 2^22), CSR and the event
    loops (forced on and off: int32 event sums, or scipy's CSR x dense) agree."""
    from spikebridge.hardware.loihi import fast
    monkeypatch.setattr(fast, "use_events", lambda x, n: events)
    rng = np.random.default_rng(3)
    w = rng.integers(-256, 256, size=(30, 50)) * (rng.random((30, 50)) < 0.3)
    meta, arrays = _plan(w, -1)
    s = compile_qplan(meta, arrays)["syn"]["c0"]
    if not blocks:
        s.blocks, s.csr = None, sp.csr_matrix(s_eff(w))
    x = rng.integers(0, 2, size=(20, 50)).astype(float)
    ref = ((x.astype(np.int64) @ s_eff(w).T) >> 1).astype(np.int32)
    for x_max in (1.0, 2.0 ** 30, 2.0 ** 60):
        np.testing.assert_array_equal(s.synapse(x, x_max), ref, err_msg=str(x_max))


def s_eff(w):
    from spikebridge.hardware.loihi.fixedpoint import lava_effective_weights
    return lava_effective_weights(w)


def test_convolutions_use_row_blocks_and_stay_exact():
    """A convolution's rows read one input window each: the product is done per block of
    rows with one support (true multiply-adds), equal to the dense product."""
    import nir
    rng = np.random.default_rng(7)
    nodes = {"input": nir.Input(np.array([4, 8, 8])),
             "c1": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(size=(8, 4, 3, 3)), stride=1, padding=1,
                              dilation=1, groups=1, bias=np.zeros(8)),
             "n1": nir.IF(r=np.ones((8, 8, 8)), v_threshold=np.full((8, 8, 8), 2.0)),
             "c2": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(size=(16, 8, 3, 3)), stride=2, padding=1,
                              dilation=1, groups=1, bias=np.zeros(16)),
             "n2": nir.IF(r=np.ones((16, 4, 4)), v_threshold=rng.uniform(1, 3, size=(16, 4, 4))),
             "output": nir.Output(np.array([16, 4, 4]))}
    edges = [("input", "c1"), ("c1", "n1"), ("n1", "c2"), ("c2", "n2"), ("n2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    q = quantize(lower(g, 6))
    cp = compile_qplan(dict(q.meta, dense_max_elements=250_000), q.arrays)
    c2 = [s for s in cp["syn"].values() if s.rows == 256][0]
    assert c2.blocks is not None and len(c2.blocks) == 16  # one block per output position
    x = q.quantize_input(rng.uniform(0, 1, size=(6, 5, 256)))
    res = assert_same(dict(q.meta, dense_max_elements=250_000), q.arrays, x, "conv")
    assert res["spikes"]["n2"].any()


def test_row_blocks_cover_every_weight():
    rng = np.random.default_rng(1)
    m = sp.random(60, 90, density=0.1, random_state=3, format="csr")
    m.data[:] = rng.integers(-5, 6, size=m.nnz)
    blocks = row_blocks(m)
    rows = np.sort(np.concatenate([r for r, _ in blocks]))
    np.testing.assert_array_equal(rows, np.arange(60))
    for r, c in blocks:  # every nonzero of a row lies in its block's columns
        sub = m[r]
        assert np.isin(sub.indices, c).all()
    s = Synapse({"id": "c", "source": "in", "terms": [["w"]], "weight_exp": 0},
                {"w_rows": m.tocoo().row, "w_cols": m.tocoo().col, "w_vals": m.tocoo().data.astype(np.int64),
                 "w_shape": np.array(m.shape)}, True)
    x = rng.integers(0, 2, size=(11, 90)).astype(float)
    np.testing.assert_array_equal(s.synapse(x, 1.0), (x @ s_eff(m.toarray()).T).astype(np.int32))


def test_compiled_plans_are_keyed_by_graph_content():
    g, rng = spread_graph()
    x = rng.uniform(0, 1, size=(5, 2, 16))
    c0 = runner.compiled(g, 5, "fixed")
    assert runner.compiled(g, 5, "fixed") is c0 and runner.compiled(g, 6, "fixed") is not c0
    d0 = runner.graph_digest(g)
    g.nodes["fc1"].weight[0, 0] += 1.0  # changed in place: lowered again
    assert runner.graph_digest(g) != d0 and runner.compiled(g, 5, "fixed") is not c0
    b = fixed_trace(g, x)
    c = fixed_trace(g, x, engine="reference")
    np.testing.assert_array_equal(b.outputs["output"], c.outputs["output"])


def test_unknown_engine_is_refused():
    from spikebridge.base.errors import UnsupportedError
    g, rng = spread_graph()
    with pytest.raises(UnsupportedError, match="engine"):
        fixed_trace(g, rng.uniform(size=(3, 1, 16)), engine="turbo")


def test_trace_counts_keep_the_simulators_definition():
    """The trace's op counts (bool spikes, identity products skipped) equal eventsim's
    count_ops on float activations with every synaptic node's product."""
    from spikebridge.hardware.eventsim.counts import count_ops
    from spikebridge.hardware.graph import analyse
    from spikebridge.hardware.loihi.plan import NEURON, _meta, _param_meta
    rng = np.random.default_rng(1)
    g = residual_graph(rng, True, ("IF", "LIF", "CubaLIF", "IF"))  # Flatten, several inputs into one node
    x = rng.uniform(0, 1, size=(6, 3, 2, 6, 6))
    tr = fixed_trace(g, x)
    plan = runner.prepare(g, x, "fixed").plan
    T, B = x.shape[:2]
    acts = {}
    for n in plan.order:
        k = plan.kinds[n]
        if k == "Input":
            acts[n] = x.reshape(T, B, -1)
        elif k in NEURON:
            amp = _param_meta(_meta(g.nodes[n]).get("spike_amplitude"), (int(np.prod(plan.shapes[n])),), 1.0)
            acts[n] = tr.spikes[n].reshape(T, B, -1) * amp
        elif n in plan.ops:
            m, b = plan.ops[n]
            xin = sum(acts[p] for p in plan.preds[n])
            acts[n] = (m.matvec(xin.reshape(T * B, -1).T).T + b).reshape(T, B, -1)
    want = count_ops(g, analyse(g), {n: a.reshape((T, B) + tuple(plan.shapes[n])) for n, a in acts.items()})
    assert want["fc"]["synaptic_ops"].sum() > 0
    for n in want:
        for k in want[n]:
            np.testing.assert_array_equal(tr.counts[n][k], want[n][k], err_msg=f"{n} {k}")
