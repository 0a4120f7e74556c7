"""Lava fixed_pt against the `loihi-fixed` integer model: bit-identical spikes, final u/v
and analog readouts.

Random graphs: 200 seeded NIR graphs per run (1-4 layers, Affine or Conv2d, IF, LIF or
CubaLIF, 2-64 neurons per layer, per-neuron thresholds, v_init, edge-case biases), each
lowered and quantised by the real pipeline (spikebridge.hardware.loihi.plan.lower +
spikebridge.hardware.loihi.fixedpoint.quantize). To fit 200 graphs in a few Lava jobs, graphs of one depth
and one T are merged into one network whose layer i holds every graph's layer i; every
graph keeps its OWN parameters: du, dv and vth are per-neuron vectors of the merged
population (Lava's LIF models compute elementwise), drawn per graph from the quantiser or
edge cases (du in {0, 1, 2048, 4095, random}, dv in {0, 1, 4095, random}), and each
graph's connections keep their own weight_exp (one merged Dense per distinct weight_exp
of a layer). Every graph is then run ALONE through the integer model (its own scalars,
and the weights Lava really uses under its merged Dense's sign mode) and must equal its
slice of the merged Lava run bit for bit: spikes at every recorded step of 2 samples
(window reset between them), u and v after the last Lava step, analog readouts.
"""
from __future__ import annotations

import os
from collections import Counter

import nir
import numpy as np
import pytest

from spikebridge.hardware.loihi.reference import conn_weights, run_qplan
from spikebridge.hardware.loihi.fixedpoint import lava_effective_weights, quantize, sign_mode
from spikebridge.hardware.lava import run_fixed_plan, run_lava
from spikebridge.hardware.loihi import fixed_trace
from spikebridge.hardware.loihi.plan import lower

N_GRAPHS = int(os.environ.get("SPIKEBRIDGE_FIXED_GRAPHS", "200"))
PER_BATCH = 50
B = 2  # samples per graph (two windows: the reset between them is exercised)


# ----------------------------------------------------------------------------- random graphs


def assert_same_run(a, b):
    """Two traces of one graph identical, for every output, spike record and final state of
    ``a`` (the reference engine or Lava is ``b``)."""
    for o in a.outputs:
        np.testing.assert_array_equal(a.outputs[o], b.outputs[o], err_msg=o)
    for n in a.spikes:
        np.testing.assert_array_equal(a.spikes[n], b.spikes[n], err_msg=n)
    for k in a.meta["final_state"]:
        np.testing.assert_array_equal(a.meta["final_state"][k], b.meta["final_state"][k], err_msg=k)


def _neuron(rng, shape, kind):
    th = rng.uniform(0.2, 2.0, size=shape)
    md = {}
    if rng.random() < 0.3:
        md["v_init"] = th * rng.uniform(0, 0.9, size=shape)
    if kind == "IF":
        return nir.IF(r=np.ones(shape), v_threshold=th, metadata={"spikebridge": md})
    if kind == "CubaLIF":  # no v_init (not expressible with a current decay)
        tau_syn = float(rng.choice([1.0, 1.5, 2.0, 10.0, 4096.0]))
        tau_mem = float(rng.choice([1.0, 2.0, 10.0, 4096.0]))
        return nir.CubaLIF(tau_syn=np.full(shape, tau_syn), tau_mem=np.full(shape, tau_mem),
                           r=np.full(shape, float(rng.uniform(0.5, 3.0))), v_leak=np.full(shape, rng.normal() * 0.2),
                           v_threshold=th * 0.5, w_in=rng.uniform(0.5, 2.0, size=shape))
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
        nodes[f"n{li}"] = _neuron(rng, shape, str(rng.choice(["IF", "LIF", "CubaLIF"], p=[0.5, 0.3, 0.2])))
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


def _dense(arrays, c):
    key = c["terms"][0][0]
    w = np.zeros(tuple(int(s) for s in arrays[key + "_shape"]), dtype=np.int64)
    np.add.at(w, (arrays[key + "_rows"], arrays[key + "_cols"]), arrays[key + "_vals"])
    return w


def _set_dense(arrays, key, w):
    r, c = np.nonzero(w)
    arrays[key + "_rows"], arrays[key + "_cols"] = r.astype(np.int64), c.astype(np.int64)
    arrays[key + "_vals"] = w[r, c].astype(np.int64)
    arrays[key + "_shape"] = np.asarray(w.shape, dtype=np.int64)


DU_EDGE = [None, None, 0, 1, 2048, 4095, "random"]   # None: the quantiser's own du
DV_EDGE = [None, None, 0, 1, 4095, "random"]


def build_batch(rng, qs, depth):
    """One Lava network for graphs of one depth, every graph with its OWN parameters.

    Layer i of every graph goes into one merged population L{i} (graph g's neurons are a
    slice of it) whose du, dv and vth are per-neuron vectors (arrays L{i}__du/__dv/__vth:
    Lava's LIF models compute elementwise), so each graph keeps its own values: the
    quantiser's, or an edge case drawn per graph (du in {0, 1, 2048, 4095, random}, dv in
    {0, 1, 4095, random}). Connections keep each graph's own weight_exp: graphs whose
    connection into layer i (from the same kind of source) has the same weight_exp share
    one merged block-diagonal Dense, so a layer has one Dense per distinct weight_exp.
    Lava picks one sign mode per Dense; each graph's own plan gets the weights Lava really
    uses under it. Returns the merged plan, each graph's own (meta, arrays), and each
    graph's slice of every merged population / readout."""
    T = qs[0].meta["timesteps"]
    D = max(q.meta["max_depth"] for q in qs)
    merged = {"version": 1, "precision": "fixed", "timesteps": T, "window": T + D, "max_depth": D,
              "dt": 1.0, "populations": [], "connections": [], "readouts": [], "num_message_bits": 24}
    arrays: dict[str, np.ndarray] = {}
    own = []
    # node name in graph g -> merged node name
    rename = []
    for q in qs:
        m = json_copy(q.meta)
        m["window"] = T + D
        a = dict(q.arrays)
        pops = sorted(m["populations"], key=lambda p: p["depth"])
        names = {m["input"]["name"]: "in", "__one__": "__one__"}
        for li, p in enumerate(pops):
            names[p["name"]] = f"L{li}"
        for r in m["readouts"]:
            if r["kind"] == "analog":
                names[r["name"]] = "out"
        rename.append(names)
        for p in pops:  # per-graph edge cases for du / dv
            du, dv = DU_EDGE[rng.integers(len(DU_EDGE))], DV_EDGE[rng.integers(len(DV_EDGE))]
            if du is not None:
                p["du"] = int(rng.integers(0, 4096)) if du == "random" else du
            if dv is not None:
                p["dv"] = int(rng.integers(0, 4096)) if dv == "random" else dv
        own.append((m, a))
    # slices: merged node -> per graph (offset, size); a graph without that node has size 0
    per: dict[str, list] = {}
    for gi, (m, a) in enumerate(own):
        items = [(m["input"]["name"], m["input"]["size"])] + [(p["name"], p["size"]) for p in m["populations"]] + [
            (r["name"], r["size"]) for r in m["readouts"] if r["kind"] == "analog"]
        for name, size in items:
            per.setdefault(rename[gi][name], [0] * len(own))[gi] = int(size)
    offs = {mn: list(zip(np.cumsum([0] + v[:-1]).tolist(), v)) for mn, v in per.items()}
    sizes = {mn: int(sum(v)) for mn, v in per.items()}
    offs["__one__"] = [(0, 1)] * len(own)
    sizes["__one__"] = 1
    merged["input"] = {"name": "in", "size": sizes["in"], "shape": [sizes["in"]]}
    # populations with per-neuron parameter vectors
    for li in range(D):
        mn = f"L{li}"
        if mn not in sizes:
            continue
        parts = {k: [] for k in ("bias_mant", "bias_exp", "vinit", "du", "dv", "vth")}
        for gi, (m, a) in enumerate(own):
            off, n = offs[mn][gi]
            p = [p for p in m["populations"] if rename[gi][p["name"]] == mn]
            if not p:
                for k in parts:
                    parts[k].append(np.zeros(0, np.int64))
                continue
            p = p[0]
            name = p["name"]
            parts["bias_mant"].append(a[name + "__bias_mant"])
            parts["bias_exp"].append(a[name + "__bias_exp"])
            vin = a[name + "__vinit"] if p.get("has_vinit") else np.zeros(n, np.int64)
            a[name + "__vinit"] = vin
            p["has_vinit"] = True
            parts["vinit"].append(vin)
            for k in ("du", "dv", "vth"):
                parts[k].append(np.full(n, int(p[k]), np.int64))
        for k, v in parts.items():
            arrays[f"{mn}__{k}"] = np.concatenate(v).astype(np.int64)
        merged["populations"].append({"name": mn, "size": sizes[mn], "shape": [sizes[mn]], "du": 4095, "dv": 0,
                                      "vth": 1024, "depth": li + 1, "has_vinit": True, "reset": "zero"})
    # connections grouped by (source, target, weight_exp)
    groups: dict[tuple, list] = {}
    for gi, (m, a) in enumerate(own):
        for c in m["connections"]:
            key = (rename[gi][c["source"]], rename[gi][c["target"]], int(c["weight_exp"]))
            groups.setdefault(key, []).append((gi, c))
    for k, ((src, tgt, wexp), members) in enumerate(sorted(groups.items())):
        big = np.zeros((sizes[tgt], sizes[src]), dtype=np.int64)
        for gi, c in members:
            (r0, nr), (c0, nc) = offs[tgt][gi], offs[src][gi]
            big[r0:r0 + nr, c0:c0 + nc] = _dense(own[gi][1], c)
        if rng.random() < 0.3:  # raw odd weights: Lava truncates / clips them itself
            nz = big != 0
            big[nz] = rng.integers(-256, 256, size=int(nz.sum()))
        mode = sign_mode(big)
        eff = lava_effective_weights(big, mode)
        key = f"m{k}_q"
        _set_dense(arrays, key, big)
        merged["connections"].append({"id": f"m{k}", "source": src, "target": tgt, "terms": [[key]],
                                      "rows": int(big.shape[0]), "cols": int(big.shape[1]),
                                      "weight_exp": wexp, "sign_mode": mode, "delay": 0})
        for gi, c in members:
            (r0, nr), (c0, nc) = offs[tgt][gi], offs[src][gi]
            _set_dense(own[gi][1], c["terms"][0][0], eff[r0:r0 + nr, c0:c0 + nc])
            c["sign_mode"] = mode
    if "out" in sizes:
        scales, biases = [], []
        for gi, (m, a) in enumerate(own):
            for r in m["readouts"]:
                if r["kind"] == "analog":
                    scales.append(np.broadcast_to(a[r["name"] + "__scale"], (r["size"],)))
                    biases.append(a[r["name"] + "__bias"])
        arrays["out__scale"] = np.concatenate(scales)
        arrays["out__bias"] = np.concatenate(biases)
        merged["readouts"].append({"name": "out", "kind": "analog", "size": sizes["out"],
                                   "shape": [sizes["out"]], "depth": D})
    return merged, arrays, own, offs, rename


def json_copy(d):
    import json
    return json.loads(json.dumps(d))


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
    merged, arrays, own, offs, rename = build_batch(rng, qs, depth)
    P = merged["window"]
    D = merged["max_depth"]
    xm = np.concatenate(xs, axis=2)
    got = run_fixed_plan(merged, arrays, xm, record_state=True, timeout_s=600)
    stats = Counter()
    stats["dense_per_job"] = len(merged["connections"])
    params = set()
    for gi, q in enumerate(qs):
        m, a = own[gi]
        xp = np.zeros((P, B, xs[gi].shape[2]))
        xp[:T] = xs[gi]
        res = run_qplan(m, a, xp, record_state=True)
        for p in m["populations"]:
            name, mn = p["name"], rename[gi][p["name"]]
            off, size = offs[mn][gi]
            sl = slice(off, off + size)
            want_s = res["spikes"][name][:T]
            np.testing.assert_array_equal(got[f"spikes__{mn}"][:, :, sl], want_s,
                                          err_msg=f"graph {gi} {name} spikes")
            i = T + D - p["depth"] - 1
            np.testing.assert_array_equal(got[f"u__{mn}"][sl], res["u"][name][i, -1], err_msg=f"graph {gi} u {name}")
            np.testing.assert_array_equal(got[f"v__{mn}"][sl], res["v"][name][i, -1], err_msg=f"graph {gi} v {name}")
            stats["spikes"] += int(want_s.sum())
            stats["v_saturated"] += int((np.abs(res["v"][name]) == (1 << 23) - 1).sum())
            stats["u_nonzero"] += int((res["u"][name][i, -1] != 0).sum())
            stats["cuba"] += p.get("kind") == "CubaLIF"
            params.add((p["du"], p["dv"], p["vth"]))
        for r in m["readouts"]:
            if r["kind"] == "analog":
                off, size = offs["out"][gi]
                np.testing.assert_array_equal(got["output__out"][:, :, off:off + size], res["outputs"][r["name"]][:T],
                                              err_msg=f"graph {gi} readout")
                stats["readouts"] += 1
        stats["graphs"] += 1
    stats["distinct_du_dv_vth"] = len(params)
    stats["populations"] = sum(len(m["populations"]) for m, _ in own)
    return stats


@pytest.mark.lava
def test_random_graphs_bit_exact():
    """N_GRAPHS (200) random graphs, PER_BATCH per Lava job, bit for bit."""
    rng = np.random.default_rng(20261122)
    total = Counter()
    n_batches = max(1, N_GRAPHS // PER_BATCH)
    Ts = np.linspace(20, 200, n_batches).astype(int)
    for bi in range(n_batches):
        depth = 4 - bi % 4  # the deepest (most Dense processes per job) with the fewest steps
        st = _check_batch(rng, depth, int(Ts[bi]), PER_BATCH)
        total.update(st)
    assert total["graphs"] == n_batches * PER_BATCH >= min(N_GRAPHS, 200)
    assert total["spikes"] > 1000 and total["readouts"] > 0 and total["cuba"] > 0
    assert total["v_saturated"] > 0 and total["u_nonzero"] > 0  # edge cases were reached
    # parameters are per graph: nearly every population has its own (du, dv, vth)
    assert total["distinct_du_dv_vth"] > 0.8 * total["populations"]
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
        assert_same_run(a, b)
        assert b.meta["select_tag"] == "fixed_pt" and "fixed_point" in b.meta


# ----------------------------------------------------------------------------- the demo network


@pytest.mark.lava
def test_demo_network_on_digits_bit_exact_and_within_two_points():
    """The SNN2ANN CNN on the 360 digits test images: Lava fixed_pt and loihi-fixed give the
    same spikes and outputs bit for bit, and the fixed-point accuracy is within 2 points of
    the torch SNN."""
    import json

    from spikebridge.exporters.nir_export import checkpoint_to_nir
    from spikebridge.hardware.graph import analyse, classify
    from tests._trained import trained_checkpoint
    from spikebridge.toolchain import pipeline

    ckpt = trained_checkpoint()
    torch_acc = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()][-1][
        "snn_test_accuracy"]
    g = checkpoint_to_nir(ckpt)
    info = analyse(g)
    x, y = pipeline.dataset_samples("digits", "test", None, tuple(info.shapes[info.inputs[0]]))
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
