"""Threshold groups (hardware/loihi/groups.py): a population whose per-neuron thresholds
spread its folded rows over orders of magnitude is split into LIF processes with their own
vth. The split is exact in float (a re-indexing), fixes the fixed-point resolution of the
small rows, and Lava fixed_pt still equals the integer model bit for bit."""
from __future__ import annotations

import nir
import numpy as np
import pytest

from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.loihi.fixedpoint import chain_matrix, quantize
from spikebridge.hardware.lava import run_lava
from spikebridge.hardware.loihi import fixed_trace
from spikebridge.hardware.lava.describe import describe
from spikebridge.hardware.loihi.groups import _groups, row_errors, split_threshold_groups
from spikebridge.hardware.loihi.plan import lower


def spread_graph(seed=3, n0=16, n1=40, n2=24):
    """Thresholds log-uniform over two decades, weights independent of them (so the folded
    rows w/theta spread 100x, as SNN2ANN's per-neuron thresholds do)."""
    rng = np.random.default_rng(seed)
    th1, th2 = 10 ** rng.uniform(-2, 0, size=n1), 10 ** rng.uniform(-2, 0, size=n2)
    nodes = {"input": nir.Input(np.array([n0])),
             "fc1": nir.Affine(rng.normal(size=(n1, n0)) * 0.05, rng.normal(size=n1) * 0.002),
             "if1": nir.IF(r=np.ones(n1), v_threshold=th1, v_reset=np.zeros(n1)),
             "fc2": nir.Affine(rng.normal(size=(n2, n1)) * 0.05, np.zeros(n2)),
             "if2": nir.IF(r=np.ones(n2), v_threshold=th2, v_reset=np.zeros(n2)),
             "fc3": nir.Affine(rng.normal(size=(5, n2)), np.zeros(5)), "output": nir.Output(np.array([5]))}
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "fc3"), ("fc3", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges), rng


def test_group_boundaries():
    s = np.array([1.0, 3.9, 4.1, 100.0, 0.0, 2.0])
    gs = _groups(s, 4.0, 8)
    assert [list(g) for g in gs] == [[0, 1, 4, 5], [2], [3]]  # 0 joins the smallest group
    assert len(_groups(10.0 ** np.arange(12), 4.0, 3)) == 3  # at most max_groups


def test_split_is_exact_and_improves_fixed_point():
    g, rng = spread_graph()
    plan = lower(g, 20)
    sp = split_threshold_groups(plan)
    tg = sp.meta["threshold_groups"]
    assert set(tg) == {"if1", "if2"} and all(len(v["groups"]) > 1 for v in tg.values())
    # reassemble every original connection from the group connections: identical matrices
    for c in plan.meta["connections"]:
        full = chain_matrix(plan.arrays, c["terms"], int(c["rows"]), int(c["cols"]))
        back = np.zeros_like(full)
        for d in sp.meta["connections"]:
            if d["id"] == c["id"] or d["id"].startswith(c["id"] + "_"):
                m = chain_matrix(sp.arrays, d["terms"], int(d["rows"]), int(d["cols"]))
                ri = sp.arrays.get(d["target"] + "__index", np.arange(full.shape[0]))
                ci = sp.arrays.get(d["source"] + "__index", np.arange(full.shape[1]))
                back[np.ix_(ri, ci)] += m
        np.testing.assert_allclose(back, full, rtol=1e-12, atol=0)
    q0, q1 = quantize(plan), quantize(sp)
    r0, r1 = row_errors(plan, q0), row_errors(sp, q1)  # whole rows, all incoming connections
    assert set(r0) == set(r1) == {"if1", "if2"} and r1["if1"].shape == (40,)
    e0, e1 = max(v.max() for v in r0.values()), max(v.max() for v in r1.values())
    assert e0 > 0.2 and e1 < 0.05, (e0, e1)
    assert np.all(np.isfinite(r1["if1"])) and (r0["if1"] > 0.1).sum() >= 3
    # fixed point closer to float: more spikes agree with the exact reading
    x = rng.uniform(0, 1, size=(30, 8, 16))
    ref = simulate(g, x, profile="nir")
    agree = {}
    for tg_ in (None, True):
        a = fixed_trace(g, x, threshold_groups=tg_)
        agree[tg_] = np.mean([np.mean(a.spikes[n] == ref.spikes[n]) for n in ref.spikes])
    assert agree[True] > agree[None] + 0.03 and agree[True] > 0.97, agree
    # the loihi-fixed-groups profile is this model
    b = simulate(g, x, profile="loihi-fixed-groups")
    np.testing.assert_array_equal(b.outputs["output"], fixed_trace(g, x, threshold_groups=True).outputs["output"])
    text = describe(g, 20)
    assert "threshold groups (simulate --threshold-groups" in text and "if1: " in text and " -> " in text


@pytest.mark.lava
def test_threshold_groups_on_lava_fixed_bit_exact_and_float_exact():
    g, rng = spread_graph(seed=5)
    T, B = 20, 3
    x = rng.uniform(0, 1, size=(T, B, 16))
    a = fixed_trace(g, x, window=T + 3, record_state=True, threshold_groups=True)
    b = run_lava(g, x, precision="fixed", window=T + 3, record_state=True, threshold_groups=True)
    assert b.meta["threshold_groups"] == a.meta["threshold_groups"] and min(b.meta["threshold_groups"].values()) > 1
    for n in a.spikes:
        assert a.spikes[n].shape == (T, B, {"if1": 40, "if2": 24}[n]) and a.spikes[n].any()
        np.testing.assert_array_equal(b.spikes[n], a.spikes[n], err_msg=n)
    np.testing.assert_array_equal(b.outputs["output"], a.outputs["output"])
    assert sorted(b.meta["final_state"]) == ["u__if1", "u__if2", "v__if1", "v__if2"]
    for k, v in a.meta["final_state"].items():
        np.testing.assert_array_equal(b.meta["final_state"][k], v, err_msg=k)
    f = run_lava(g, x, threshold_groups=True)  # float: the split changes nothing
    ref = simulate(g, x, profile="nir")
    for n in ref.spikes:
        np.testing.assert_array_equal(f.spikes[n], ref.spikes[n], err_msg=n)
    np.testing.assert_allclose(f.outputs["output"], ref.outputs["output"], rtol=1e-9, atol=1e-9)
