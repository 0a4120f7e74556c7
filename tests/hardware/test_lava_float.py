"""Lava floating_pt against eventsim's `lava-float` profile (raw Lava timing, one step of
delay per synaptic layer).

Documented tolerance: both run float64, but Lava multiplies by folded (row-scaled by
r/theta) matrices while the profile computes layer by layer, so sums differ in the last
bits (design.md: summation order alone changes float bits). Outputs must agree to
rtol = atol = 1e-9; a spike may differ only where the membrane is within 1e-9 of the
(folded) threshold at the first differing step; the sample is not compared after it.

Scope: `lava-float` reads plain NIR (no metadata), so the graphs here have no v_init;
biases are included (the profile starts each population when its input arrives, as
Lava's LIFReset window does).
"""
from __future__ import annotations

import numpy as np
import pytest

from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.loihi.fixedpoint import chain_matrix
from spikebridge.hardware.lava import run_lava
from spikebridge.hardware.loihi.plan import lower
from test_lava_fixed import random_graph

TOL = 1e-9
pytestmark = pytest.mark.lava


def _plain(g):
    """No metadata (v_init), for the lava-float comparison (biases and v_leak kept)."""
    for n, node in g.nodes.items():
        if type(node).__name__ in ("IF", "LIF", "CubaLIF"):
            node.metadata = {}
    return g


def folded_membranes(plan, x):
    """Aligned float reference of the folded plan: v of every population (T, B, n), before reset."""
    meta, arrs = plan.meta, plan.arrays
    T, B = x.shape[:2]
    mats = {c["id"]: chain_matrix(arrs, c["terms"], int(c["rows"]), int(c["cols"])) for c in meta["connections"]}
    cur, u, v, vs = {}, {}, {}, {}
    for p in meta["populations"]:
        u[p["name"]] = np.zeros((B, p["size"]))
        v[p["name"]] = np.zeros((B, p["size"]))
        vs[p["name"]] = np.zeros((T, B, p["size"]))
    for t in range(T):
        cur = {meta["input"]["name"]: x[t].reshape(B, -1), "__one__": np.ones((B, 1))}
        for p in meta["populations"]:
            n = p["name"]
            a = sum(cur[c["source"]] @ mats[c["id"]].T for c in meta["connections"] if c["target"] == n)
            u[n] = u[n] * (1 - p["du"]) + a
            vv = v[n] * (1 - p["dv"]) + u[n] + arrs[n + "__bias"]
            vs[n][t] = vv
            s = vv > 1.0
            v[n] = np.where(s, 0.0, vv)
            cur[n] = s.astype(float)
    return vs


def test_lava_float_matches_lava_float_profile():
    rng = np.random.default_rng(99)
    n_graphs, exact, spikes = 16, 0, 0
    for gi in range(n_graphs):
        depth = 1 + gi % 4
        g = _plain(random_graph(rng, depth))
        shp = tuple(int(s) for s in np.asarray(g.nodes["input"].input_type["input"]))
        T, B = int(rng.integers(8, 30)), 3
        x = rng.uniform(0, 1, size=(T, B) + shp)
        lav = run_lava(g, x)
        delays = lav.meta["lava_delay_steps"]
        D = max(delays.values())
        xp = np.concatenate([x, np.zeros((D,) + x.shape[1:])])
        ref = simulate(g, xp, profile="lava-float")
        plan = lower(g, T)
        vm = folded_membranes(plan, x)
        first_bad = np.full(B, T)
        for n, s in lav.spikes.items():
            d = delays[n]
            want = ref.spikes[n][d:d + T]
            diff = (s != want).reshape(T, B, -1)
            for b in range(B):
                ts = np.nonzero(diff[:, b].any(axis=1))[0]
                if ts.size:
                    t = ts[0]
                    near = np.abs(vm[n][t, b] - 1.0) <= TOL
                    assert np.all(near[diff[t, b]]), f"graph {gi} {n}: spike mismatch away from threshold (t={t})"
                    first_bad[b] = min(first_bad[b], t)
        out = "output"
        d = delays[out]
        want = ref.outputs[out][d:d + T]
        for b in range(B):
            t = first_bad[b]
            np.testing.assert_allclose(lav.outputs[out][:t, b], want[:t, b], rtol=TOL, atol=TOL,
                                       err_msg=f"graph {gi}")
        exact += int(np.all(first_bad == T))
        spikes += sum(int(s.sum()) for s in lav.spikes.values())
    assert exact >= n_graphs - 2 and spikes > 100
    print(f"{exact}/{n_graphs} graphs spike-identical, {spikes} spikes")
