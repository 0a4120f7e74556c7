"""Lava fixed_pt against the `loihi-fixed` integer model: bit-identical spikes, final u/v
and analog readouts.

Random graphs: 200 seeded NIR graphs per run (1-4 layers, Affine or Conv2d, IF or LIF,
2-64 neurons per layer, per-neuron thresholds, v_init, edge-case biases), each lowered
and quantised by the real pipeline (hardware.lava.plan.lower + hardware.fixedpoint.quantize).
To fit 200 graphs in a few Lava jobs, graphs of one depth and one T are merged into one
network whose layer i is the block-diagonal union of the graphs' layer i. Lava's
du/dv/vth are scalars per population and weight_exp one per connection, so inside a
batch those are shared: set to edge cases (du in {0, 1, 2048, 4095, random}, dv in {0, 1,
4095, random}) or the batch's median vth / most common weight_exp. Every graph is then run
ALONE through the integer model (with the same shared scalars, and the weights Lava
really uses under the merged connection's sign mode) and must equal its slice of the
merged Lava run bit for bit: spikes at every recorded step of 2 samples (window reset
between them) and u, v after the last Lava step.
"""
from __future__ import annotations

import os
from collections import Counter

import nir
import numpy as np
import pytest

from hardware.eventsim.loihi_fixed import conn_weights, run_qplan
from hardware.fixedpoint import lava_effective_weights, quantize, sign_mode
from hardware.lava import fixed_trace, run_fixed_plan, run_lava
from hardware.lava.plan import lower

N_GRAPHS = int(os.environ.get("SPIKEBRIDGE_FIXED_GRAPHS", "200"))
PER_BATCH = 25
B = 2  # samples per graph (two windows: the reset between them is exercised)


# ----------------------------------------------------------------------------- random graphs


def _neuron(rng, shape, kind):
    th = rng.uniform(0.2, 2.0, size=shape)
    md = {}
    if rng.random() < 0.3:
        md["v_init"] = th * rng.uniform(0, 0.9, size=shape)
    if kind == "IF":
        return nir.IF(r=np.ones(shape), v_threshold=th, metadata={"spikebridge": md})
    tau = float(rng.choice([1.0, 1.5, 2.0, 10.0, 4096.0]))
    return nir.LIF(tau=np.full(shape, tau), r=np.ones(shape), v_leak=np.full(shape, rng.normal() * 0.2),
                   v_threshold=th, metadata={"spikebridge": md})


def _bias(rng, n):
    kind = rng.integers(0, 5)
    if kind == 0:
        return np.zeros(n)
    if kind == 1:
        return rng.normal(size=n) * 0.05
    if kind == 2:
        return rng.normal(size=n) * 50.0  # saturates bias_mant << 7 and the 24-bit v
    if kind == 3:
        return rng.choice([-1e-6, 1e-6, 0.0], size=n)  # below the bias resolution
    return rng.uniform(-1.5, 0.5, size=n)


def random_graph(rng, depth):
    nodes = {}
    edges = []
    if rng.random() < 0.5:
        shape = (int(rng.integers(1, 4)), int(rng.integers(3, 7)), int(rng.integers(3, 7)))
    else:
        shape = (int(rng.integers(2, 33)),)
    nodes["input"] = nir.Input(np.array(shape))
    prev = "input"
    sign = rng.choice(["mixed", "pos", "neg"], p=[0.7, 0.2, 0.1])
    for li in range(depth):
        conv_ok = len(shape) == 3 and rng.random() < 0.6
        done = False
        if conv_ok:
            c, h, w = shape
            k = int(rng.integers(1, min(3, h, w) + 1))
            st = int(rng.integers(1, 3))
            pad = int(rng.integers(0, 2))
            co = int(rng.integers(1, 5))
            ho, wo = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
            if ho >= 1 and wo >= 1 and 2 <= co * ho * wo <= 64:
                wt = rng.normal(size=(co, c, k, k)) * rng.uniform(0.3, 1.5)
                nodes[f"syn{li}"] = nir.Conv2d(input_shape=(h, w), weight=wt, stride=st, padding=pad,
                                               dilation=1, groups=1, bias=_bias(rng, co))
                shape = (co, ho, wo)
                done = True
        if not done:
            n_in = int(np.prod(shape))
            if len(shape) > 1:
                nodes[f"flat{li}"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
                edges.append((prev, f"flat{li}"))
                prev = f"flat{li}"
            n = int(rng.integers(2, 65))
            wt = rng.normal(size=(n, n_in)) * rng.uniform(0.2, 1.5) / np.sqrt(n_in) * 3
            if sign == "pos":
                wt = np.abs(wt)
            elif sign == "neg" and li > 0:
                wt = -np.abs(wt)
            nodes[f"syn{li}"] = nir.Affine(wt, _bias(rng, n))
            shape = (n,)
        edges.append((prev, f"syn{li}"))
        nodes[f"n{li}"] = _neuron(rng, shape, "IF" if rng.random() < 0.6 else "LIF")
        edges.append((f"syn{li}", f"n{li}"))
        prev = f"n{li}"
    if rng.random() < 0.5:
        n_in = int(np.prod(shape))
        if len(shape) > 1:
            nodes["flatr"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            edges.append((prev, "flatr"))
            prev = "flatr"
        no = int(rng.integers(2, 11))
        nodes["readout"] = nir.Affine(rng.normal(size=(no, n_in)), rng.normal(size=no))
        edges.append((prev, "readout"))
        prev, shape = "readout", (no,)
    nodes["output"] = nir.Output(np.array(shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


# ----------------------------------------------------------------------------- merging


def _chain(q):
    """Populations by depth, each one's incoming connection, and the analog readout's."""
    pops = sorted(q.meta["populations"], key=lambda p: p["depth"])
    into = {c["target"]: c for c in q.meta["connections"]}
    ro = [r for r in q.meta["readouts"] if r["kind"] == "analog"]
    return pops, into, (ro[0] if ro else None)


def _dense(q, c):
    key = c["terms"][0][0]
    w = np.zeros(tuple(int(s) for s in q.arrays[key + "_shape"]), dtype=np.int64)
    np.add.at(w, (q.arrays[key + "_rows"], q.arrays[key + "_cols"]), q.arrays[key + "_vals"])
    return w


def _set_dense(arrays, key, w):
    r, c = np.nonzero(w)
    arrays[key + "_rows"], arrays[key + "_cols"] = r.astype(np.int64), c.astype(np.int64)
    arrays[key + "_vals"] = w[r, c].astype(np.int64)
    arrays[key + "_shape"] = np.asarray(w.shape, dtype=np.int64)


def build_batch(rng, qs, depth):
    """Shared edge-case scalars, the merged plan, and each graph's own plan with them."""
    du_choices = [4095, 4095, 0, 1, 2048, int(rng.integers(0, 4096))]
    dv_choices = [0, 0, 1, 4095, int(rng.integers(0, 4096))]
    shared = []
    for li in range(depth):
        vths = [_chain(q)[0][li]["vth"] for q in qs]
        wexps = [_chain(q)[1][_chain(q)[0][li]["name"]]["weight_exp"] for q in qs]
        shared.append({"du": int(rng.choice(du_choices)), "dv": int(rng.choice(dv_choices)),
                       "vth": int(np.median(vths)), "weight_exp": Counter(wexps).most_common(1)[0][0]})
    ro_wexp = Counter(_chain(q)[1][_chain(q)[2]["name"]]["weight_exp"] for q in qs if _chain(q)[2]).most_common(1)
    ro_wexp = ro_wexp[0][0] if ro_wexp else 0
    # merged matrices (to find the sign mode Lava will use for each merged connection)
    T = qs[0].meta["timesteps"]
    sizes_in = [q.meta["input"]["size"] for q in qs]
    merged = {"version": 1, "precision": "fixed", "timesteps": T, "window": T + depth, "max_depth": depth,
              "dt": 1.0, "input": {"name": "in", "size": int(sum(sizes_in)), "shape": [int(sum(sizes_in))]},
              "populations": [], "connections": [], "readouts": [], "num_message_bits": 24}
    arrays = {}
    own = []
    for q in qs:
        m = {k: v for k, v in q.meta.items()}
        m["window"] = T + depth
        own.append((m, dict(q.arrays)))
    src_sizes = sizes_in
    src_name = "in"
    for li in range(depth):
        blocks = []
        for gi, q in enumerate(qs):
            pops, into, _ = _chain(q)
            blocks.append(_dense(q, into[pops[li]["name"]]))
        rows = [b.shape[0] for b in blocks]
        big = np.zeros((sum(rows), sum(src_sizes)), dtype=np.int64)
        r0 = c0 = 0
        for b, cs in zip(blocks, src_sizes):
            big[r0:r0 + b.shape[0], c0:c0 + cs] = b
            r0 += b.shape[0]
            c0 += cs
        if rng.random() < 0.3:  # raw odd weights: Lava truncates / clips them itself
            nz = big != 0
            big[nz] = rng.integers(-256, 256, size=int(nz.sum()))
        mode = sign_mode(big)
        eff = lava_effective_weights(big, mode)
        key = f"m{li}_q"
        _set_dense(arrays, key, big)
        name = f"L{li}"
        merged["connections"].append({"id": f"m{li}", "source": src_name, "target": name, "terms": [[key]],
                                      "rows": int(big.shape[0]), "cols": int(big.shape[1]),
                                      "weight_exp": shared[li]["weight_exp"], "sign_mode": mode})
        sh = shared[li]
        mant, bexp, vin = [], [], []
        r0 = c0 = 0
        for gi, q in enumerate(qs):
            pops, into, _ = _chain(q)
            p = pops[li]
            n = p["name"]
            m, a = own[gi]
            c = into[n]
            w = eff[r0:r0 + p["size"], c0:c0 + src_sizes[gi]]
            _set_dense(a, c["terms"][0][0], w)
            for cc in m["connections"]:
                if cc["id"] == c["id"]:
                    cc.update({"weight_exp": sh["weight_exp"], "sign_mode": mode})
            for pp in m["populations"]:
                if pp["name"] == n:
                    pp.update({"du": sh["du"], "dv": sh["dv"], "vth": sh["vth"], "has_vinit": True})
            mant.append(a[n + "__bias_mant"])
            bexp.append(a[n + "__bias_exp"])
            vin.append(a[n + "__vinit"] if p.get("has_vinit") else np.zeros(p["size"], np.int64))
            a[n + "__vinit"] = vin[-1]
            r0 += p["size"]
            c0 += src_sizes[gi]
        arrays[name + "__bias_mant"] = np.concatenate(mant)
        arrays[name + "__bias_exp"] = np.concatenate(bexp)
        arrays[name + "__vinit"] = np.concatenate(vin)
        size = int(sum(rows))
        merged["populations"].append({"name": name, "size": size, "shape": [size], "du": sh["du"],
                                      "dv": sh["dv"], "vth": sh["vth"], "depth": li + 1, "has_vinit": True,
                                      "reset": "zero"})
        src_sizes = rows
        src_name = name
    # analog readouts of the graphs that have one
    ro = [(gi, q) for gi, q in enumerate(qs) if _chain(q)[2] is not None]
    if ro:
        blocks, scales, biases, offs = [], [], [], []
        c0 = 0
        col_off = np.cumsum([0] + src_sizes)
        for gi, q in ro:
            r = _chain(q)[2]
            c = [c for c in q.meta["connections"] if c["target"] == r["name"]][0]
            blocks.append((gi, r, c, _dense(q, c)))
        big = np.zeros((sum(b[3].shape[0] for b in blocks), sum(src_sizes)), dtype=np.int64)
        r0 = 0
        for gi, r, c, w in blocks:
            big[r0:r0 + w.shape[0], col_off[gi]:col_off[gi] + w.shape[1]] = w
            offs.append((gi, r0, w.shape[0]))
            r0 += w.shape[0]
        mode = sign_mode(big)
        eff = lava_effective_weights(big, mode)
        _set_dense(arrays, "ro_q", big)
        merged["connections"].append({"id": "ro", "source": src_name, "target": "out", "terms": [["ro_q"]],
                                      "rows": int(big.shape[0]), "cols": int(big.shape[1]),
                                      "weight_exp": ro_wexp, "sign_mode": mode})
        for (gi, r, c, w), (_, r0, n) in zip(blocks, offs):
            m, a = own[gi]
            _set_dense(a, c["terms"][0][0], eff[r0:r0 + n, col_off[gi]:col_off[gi] + w.shape[1]])
            for cc in m["connections"]:
                if cc["id"] == c["id"]:
                    cc.update({"weight_exp": ro_wexp, "sign_mode": mode})
            scales.append(np.broadcast_to(a[r["name"] + "__scale"], (n,)))
            biases.append(a[r["name"] + "__bias"])
        arrays["out__scale"] = np.concatenate(scales)
        arrays["out__bias"] = np.concatenate(biases)
        merged["readouts"].append({"name": "out", "kind": "analog", "size": int(big.shape[0]),
                                   "shape": [int(big.shape[0])], "depth": depth + 1})
        merged["max_depth"] = depth + 1
        merged["window"] = T + depth + 1
        for m, _ in own:
            m["window"] = T + depth + 1
        offs_map = {gi: (r0, n) for gi, r0, n in offs}
    else:
        offs_map = {}
    return merged, arrays, own, offs_map


def _check_batch(rng, depth, T, n):
    qs, xs = [], []
    while len(qs) < n:
        g = random_graph(rng, depth)
        plan = lower(g, T)
        if len(plan.meta["populations"]) != depth:
            continue
        q = quantize(plan)
        x = rng.uniform(-0.2, 1.0, size=(T, B, q.meta["input"]["size"]))
        if rng.random() < 0.2:
            x = (x > 0.5).astype(float)  # binary input spikes
        qs.append(q)
        xs.append(q.quantize_input(x))
    merged, arrays, own, offs = build_batch(rng, qs, depth)
    P = merged["window"]
    D = merged["max_depth"]
    xm = np.concatenate(xs, axis=2)
    got = run_fixed_plan(merged, arrays, xm, record_state=True, timeout_s=600)
    stats = Counter()
    r_off = {li: 0 for li in range(depth)}
    for gi, q in enumerate(qs):
        m, a = own[gi]
        xp = np.zeros((P, B, xs[gi].shape[2]))
        xp[:T] = xs[gi]
        res = run_qplan(m, a, xp, record_state=True)
        pops, _, ro = _chain(q)
        for li, p in enumerate(pops):
            sl = slice(r_off[li], r_off[li] + p["size"])
            r_off[li] += p["size"]
            name = p["name"]
            want_s = res["spikes"][name][:T]
            np.testing.assert_array_equal(got[f"spikes__L{li}"][:, :, sl], want_s,
                                          err_msg=f"graph {gi} layer {li} spikes")
            i = T + D - (li + 1) - 1
            np.testing.assert_array_equal(got[f"u__L{li}"][sl], res["u"][name][i, -1], err_msg=f"graph {gi} u{li}")
            np.testing.assert_array_equal(got[f"v__L{li}"][sl], res["v"][name][i, -1], err_msg=f"graph {gi} v{li}")
            stats["spikes"] += int(want_s.sum())
            stats["v_saturated"] += int((np.abs(res["v"][name]) == (1 << 23) - 1).sum())
            stats["u_nonzero"] += int((res["u"][name][i, -1] != 0).sum())
        if ro is not None:
            r0, nr = offs[gi]
            np.testing.assert_array_equal(got["output__out"][:, :, r0:r0 + nr], res["outputs"][ro["name"]][:T],
                                          err_msg=f"graph {gi} readout")
            stats["readouts"] += 1
        stats["graphs"] += 1
    return stats


@pytest.mark.lava
def test_random_graphs_bit_exact():
    """N_GRAPHS (200) random graphs, PER_BATCH per Lava job, bit for bit."""
    rng = np.random.default_rng(20261122)
    total = Counter()
    n_batches = max(1, N_GRAPHS // PER_BATCH)
    Ts = np.linspace(20, 200, n_batches).astype(int)
    for bi in range(n_batches):
        depth = 1 + bi % 4
        st = _check_batch(rng, depth, int(Ts[bi]), PER_BATCH)
        total.update(st)
    assert total["graphs"] == n_batches * PER_BATCH >= min(N_GRAPHS, 200)
    assert total["spikes"] > 1000 and total["readouts"] > 0
    assert total["v_saturated"] > 0 and total["u_nonzero"] > 0  # edge cases were reached
    print(dict(total))


# ----------------------------------------------------------------------------- whole pipeline


@pytest.mark.lava
def test_run_lava_fixed_equals_loihi_fixed_profile():
    """Unmodified quantiser plans, one graph per run: run_lava(precision='fixed') ==
    the loihi-fixed integer model (spikes, analog outputs, final u/v)."""
    rng = np.random.default_rng(7)
    for depth in (1, 2, 3, 4):
        g = random_graph(rng, depth)
        shp = tuple(np.asarray(g.nodes["input"].input_type["input"]))
        x = rng.uniform(0, 1, size=(3,) + shp)
        T = 15
        D = depth + ("readout" in g.nodes)
        a = fixed_trace(g, x, timesteps=T, window=T + D, record_state=True)
        b = run_lava(g, x, precision="fixed", timesteps=T, window=T + D, record_state=True)
        for n in a.spikes:
            np.testing.assert_array_equal(a.spikes[n], b.spikes[n])
        for o in a.outputs:
            np.testing.assert_array_equal(a.outputs[o], b.outputs[o])
        for k in a.meta["final_state"]:
            np.testing.assert_array_equal(a.meta["final_state"][k], b.meta["final_state"][k])
        assert b.meta["select_tag"] == "fixed_pt" and "fixed_point" in b.meta


# ----------------------------------------------------------------------------- the demo network


@pytest.mark.lava
def test_demo_network_on_digits_bit_exact_and_within_two_points():
    """The SNN2ANN CNN on the 360 digits test images: Lava fixed_pt and loihi-fixed give the
    same spikes and outputs bit for bit, and the fixed-point accuracy is within 2 points of
    the torch SNN."""
    import json

    from exporters.nir_export import checkpoint_to_nir
    from hardware.graph import analyse, classify
    from tests._trained import trained_checkpoint
    from toolchain import pipeline

    ckpt = trained_checkpoint()
    torch_acc = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()][-1][
        "snn_test_accuracy"]
    g = checkpoint_to_nir(ckpt)
    info = analyse(g)
    x, y = pipeline.dataset_samples("digits", "test", None, pipeline.graph_input_shape(g, info))
    T = int(g.metadata["spikebridge"]["timesteps"])
    xt = pipeline.direct_encode(x, T)
    ref = fixed_trace(g, xt)
    lav = run_lava(g, np.ascontiguousarray(xt), precision="fixed", timeout_s=900)
    for n in ref.spikes:
        np.testing.assert_array_equal(lav.spikes[n], ref.spikes[n], err_msg=n)
    np.testing.assert_array_equal(lav.outputs["output"], ref.outputs["output"])
    acc = float(np.mean(classify(lav.outputs["output"], "sum") == y))
    print(f"digits: torch SNN {torch_acc:.4f}, Lava fixed_pt {acc:.4f}")
    assert acc >= torch_acc - 0.02
