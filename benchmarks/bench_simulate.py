"""Benchmark of the event-driven simulator (prints one JSON object; not a test).

In ONE run, on the same graphs and the same inputs:

- eventsim (spikebridge.hardware.eventsim.simulate, counts included) against
- a dense per-step numpy reference (every step, every layer: a dense BLAS product and
  the same neuron update; no counts),
- snnTorch simulating graphs it exported itself (snn.Leaky nets; optional: skipped
  with a note when snntorch is not importable; snnTorch's own export also needs
  nirtorch, else the graph is written with snnTorch's export formulas),
- Lava (run_graph on the lava-float backend, floating_pt, per-sample cost of a small batch),
- and, on the demo graph (runs/demo/graph.nir, digits), eventsim's `lava-float` profile
  against Lava floating_pt itself: spikes, outputs and accuracy in raw Lava time.

Reported: samples/s, synaptic ops/s, cost against input activity (0.5 % .. 50 % spike
rate) and against T, output equality, and a PNG of the scaling curves.

    spikebridge bench simulate [--quick] [--png PATH] [--no-lava]
    python benchmarks/bench_simulate.py ...    (same)

The machine may be shared: compare the ratios of one run, not absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nir  # noqa: E402

from spikebridge.hardware.eventsim import KERNELS, adapt_graph, simulate  # noqa: E402
from spikebridge.hardware.eventsim.kernels import Context, conv_forward_im2col, dense_forward_blas  # noqa: E402
from spikebridge.hardware.eventsim.profiles import get_profile  # noqa: E402
from spikebridge.hardware.eventsim.simulator import resolve_dt  # noqa: E402
from spikebridge.hardware.graph import analyse  # noqa: E402

DT = 1e-4  # snnTorch's export dt


# ---------------------------------------------------------------------------- graphs

def _rng_weights(seed, shapes, gains):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * g).astype(np.float32) for s, g in zip(shapes, gains)]


def dense_spec(seed=0):
    """784 -> 512 -> 10, snn.Leaky(beta=0.9) after each Linear."""
    w1, b1, w2, b2 = _rng_weights(seed, [(512, 784), (512,), (10, 512), (10,)],
                                  [0.12, 0.02, 0.2, 0.02])
    return {"kind": "dense", "in_shape": (784,), "layers": [("linear", w1, b1), ("leaky", 0.9),
                                                            ("linear", w2, b2), ("leaky", 0.9)]}


def conv_spec(seed=1):
    """(1,28,28) -> Conv(8,5,s2) -> Leaky -> Conv(16,3,s2) -> Leaky -> Flatten -> Linear(10) -> Leaky."""
    c1, cb1, c2, cb2, w, b = _rng_weights(seed, [(8, 1, 5, 5), (8,), (16, 8, 3, 3), (16,),
                                                 (10, 16 * 5 * 5), (10,)],
                                          [0.5, 0.02, 0.25, 0.02, 0.15, 0.02])
    return {"kind": "conv", "in_shape": (1, 28, 28),
            "layers": [("conv", c1, cb1, 2), ("leaky", 0.85), ("conv", c2, cb2, 2), ("leaky", 0.85),
                       ("flatten",), ("linear", w, b), ("leaky", 0.9)]}


def layer_spec(n=1000, seed=2):
    """One dense n x n layer into IF neurons that never reach threshold (ops/s of the layer)."""
    (w,) = _rng_weights(seed, [(n, n)], [1.0])
    return {"kind": "layer", "in_shape": (n,), "layers": [("linear", w, np.zeros(n, np.float32)),
                                                          ("if", 1e30)]}


def _shape_after(spec):
    shape = spec["in_shape"]
    out = []
    for layer in spec["layers"]:
        out.append(shape)
        if layer[0] == "linear":
            shape = (layer[1].shape[0],)
        elif layer[0] == "conv":
            w, st = layer[1], layer[3]
            k = w.shape[2]
            shape = (w.shape[0], (shape[1] - k) // st + 1, (shape[2] - k) // st + 1)
        elif layer[0] == "flatten":
            shape = (int(np.prod(shape)),)
    return out, shape


def to_torch(spec):
    import snntorch as snn
    import torch
    from torch import nn
    mods = []
    shapes, _ = _shape_after(spec)
    for layer, shape in zip(spec["layers"], shapes):
        if layer[0] == "linear":
            m = nn.Linear(layer[1].shape[1], layer[1].shape[0])
            m.weight.data = torch.from_numpy(layer[1].copy())
            m.bias.data = torch.from_numpy(layer[2].copy())
        elif layer[0] == "conv":
            w = layer[1]
            m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=layer[3])
            m.weight.data = torch.from_numpy(w.copy())
            m.bias.data = torch.from_numpy(layer[2].copy())
        elif layer[0] == "flatten":
            m = nn.Flatten()
        else:  # leaky: per-neuron beta/threshold (scalars fail nir's type inference)
            m = snn.Leaky(beta=torch.full(shape, float(layer[1])), threshold=torch.ones(shape),
                          init_hidden=True)
        mods.append(m)
    return nn.Sequential(*mods)


def spec_to_nir(spec, style="snntorch"):
    """The graph snnTorch's exporter writes for this net (its formulas: tau = dt/(1-beta),
    r = tau/dt, v_reset = 0), or with style='plain' IF neurons for Lava (spikebridge reading)."""
    shapes, out_shape = _shape_after(spec)
    nodes = {"input": nir.Input(np.array(spec["in_shape"]))}
    edges, prev = [], "input"
    for i, (layer, shape) in enumerate(zip(spec["layers"], shapes)):
        name = f"{layer[0]}{i}"
        if layer[0] == "linear":
            nodes[name] = nir.Affine(layer[1], layer[2])
        elif layer[0] == "conv":
            w = layer[1]
            nodes[name] = nir.Conv2d(input_shape=shape[1:], weight=w, stride=layer[3], padding=0,
                                     dilation=1, groups=1, bias=layer[2])
        elif layer[0] == "flatten":
            nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        elif layer[0] == "if" or style == "plain":
            thr = layer[1] if layer[0] == "if" else 1.0
            nodes[name] = nir.IF(r=np.ones(shape), v_threshold=np.full(shape, thr),
                                 v_reset=np.zeros(shape))
        else:
            beta = np.full(shape, layer[1], dtype=np.float32)
            tau = DT / (1 - beta)
            nodes[name] = nir.LIF(tau=tau, r=tau / DT, v_leak=np.zeros(shape),
                                  v_threshold=np.ones(shape, np.float32), v_reset=np.zeros(shape))
        edges.append((prev, name))
        prev = name
    nodes["output"] = nir.Output(np.array(out_shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def snntorch_export(spec, net):
    """(graph, how): snnTorch's own export_to_nir when nirtorch is there."""
    import torch
    from snntorch import utils as snn_utils
    try:
        from snntorch.export_nir import export_to_nir
        import nir as _nir
        sample = torch.zeros((1, *spec["in_shape"]))
        orig = _nir.NIRGraph.infer_types, _nir.NIRGraph.check_types
        _nir.NIRGraph.infer_types = _nir.NIRGraph.check_types = lambda self: None
        try:  # snnTorch leaves Conv2d.input_shape None; nir's type inference crashes on it
            g = export_to_nir(net, sample)
        finally:
            _nir.NIRGraph.infer_types, _nir.NIRGraph.check_types = orig
        snn_utils.reset(net)
        shapes, _ = _shape_after(spec)
        names = [n for n in g.nodes if n not in ("input", "output")]
        for n, layer, shape in zip(sorted(names, key=lambda s: int(s) if s.isdigit() else -1),
                                   spec["layers"], shapes):
            node = g.nodes[n]
            if type(node).__name__ == "Conv2d" and node.input_shape is None:
                node.input_shape = tuple(shape[1:])
            if type(node).__name__ == "Flatten":
                node.input_type = {"input": np.array(shape)}
        return g, "snntorch.export_nir.export_to_nir"
    except ImportError as e:
        return spec_to_nir(spec), f"snnTorch's export formulas (export_to_nir unavailable: {e})"


# ---------------------------------------------------------------------------- runners

def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def dense_reference(graph, x, profile):
    """Per-step numpy reference: every step, every node; synapses as dense BLAS products
    (conv: the im2col product), neurons with the same step function."""
    g = adapt_graph(graph, profile)
    info = analyse(g)
    prof = get_profile(profile)
    ctx = Context(info=info, profile=prof, dt=resolve_dt(g, prof, None))
    params = {n: KERNELS[info.types[n]].prepare(g.nodes[n], n, ctx) for n in info.order}
    T, B = x.shape[:2]
    states = {n: KERNELS[info.types[n]].init(params[n], B) for n in info.order
              if KERNELS[info.types[n]].stateful}
    out = np.empty((T, B, *info.shapes[info.outputs[0]]))
    for t in range(T):
        v = {}
        for n in info.order:
            k, tp = KERNELS[info.types[n]], info.types[n]
            if tp == "Input":
                v[n] = x[t].astype(np.float64)
                continue
            inp = v[info.preds[n][0]]
            if k.stateful:
                v[n], states[n] = k.step(params[n], inp, states[n])
            elif tp in ("Affine", "Linear"):
                v[n] = dense_forward_blas(params[n], inp)
            elif tp in ("Conv1d", "Conv2d"):
                v[n] = conv_forward_im2col(params[n], inp)
            else:
                v[n] = k.forward(params[n], inp)
        out[t] = v[info.outputs[0]].reshape(out.shape[1:])
    return out


def eventsim_run(graph, x, profile):
    g = adapt_graph(graph, profile)
    info = analyse(g)
    tr = simulate(g, x, profile=profile, info=info, record_spikes=False)
    # synaptic events: spikes through nonzero weights, the input layer's included (counted
    # under macs because its source is the Input node)
    return tr.outputs[info.outputs[0]], tr.total("synaptic_ops") + tr.total("macs")


def snntorch_run(net, x):
    import torch
    from snntorch import utils as snn_utils
    snn_utils.reset(net)
    xt = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        return np.stack([net(xt[t]).numpy() for t in range(x.shape[0])])


def spikes(rng, T, B, shape, rate):
    return (rng.random((T, B, *shape)) < rate).astype(np.float32)


# ---------------------------------------------------------------------------- main

def main(argv=None, progress=False) -> int:
    ap = argparse.ArgumentParser(prog="spikebridge bench simulate", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=16)
    ap.add_argument("--rates", default="0.005,0.01,0.02,0.05,0.1,0.2,0.5")
    ap.add_argument("--t-sweep", default="4,8,16,32,64")
    ap.add_argument("--lava-samples", type=int, default=8)
    ap.add_argument("--no-lava", action="store_true")
    ap.add_argument("--demo-graph", default=str(ROOT / "runs" / "demo" / "graph.nir"),
                    help="graph for the lava-float profile vs Lava floating_pt row (digits)")
    ap.add_argument("--demo-samples", type=int, default=360, help="digits test samples for that row")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (interleaved) timings")
    ap.add_argument("--png", help="scaling curves (default benchmarks/bench_simulate.png; "
                                  "none with --quick unless given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer-only", action="store_true",
                    help="only the dense 1000x1000 layer at 5 %% (synaptic ops/s; a load-sensitive number)")
    a = ap.parse_args(argv)
    rates = [float(r) for r in a.rates.split(",")]
    tsweep = [int(t) for t in a.t_sweep.split(",")]
    B, T = a.batch, a.timesteps
    if a.quick:
        B, T, rates, tsweep, a.repeat, a.lava_samples = 8, 4, [0.02, 0.2], [2, 4], 1, 2
        a.demo_samples = min(a.demo_samples, 16)
    elif a.png is None:
        a.png = str(ROOT / "benchmarks" / "bench_simulate.png")
    rng = np.random.default_rng(a.seed)
    try:
        import torch
        torch.set_num_threads(2)
        import snntorch  # noqa: F401
        have_snn, snn_note = True, f"snntorch {snntorch.__version__}, torch {torch.__version__}"
    except ImportError as e:
        have_snn, snn_note = False, (f"snnTorch column skipped: {e} (install the benchmark extra: "
                                     "pip install snntorch nirtorch)")
    res = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "numpy": np.__version__, "load_average": os.getloadavg()},
           "batch": B, "timesteps": T, "snntorch": snn_note, "graphs": {}, "activity": [],
           "timesteps_sweep": [], "notes": []}

    if a.layer_only:
        dense_layer(res, a, rng, T, B)
        res["machine"]["load_average_end"] = os.getloadavg()
        print(json.dumps({"machine": res["machine"], "dense_layer_5pct": res["dense_layer_5pct"]},
                         indent=1, default=float))
        return 0

    specs = {"dense": dense_spec(), "conv": conv_spec()}
    graphs, nets = {}, {}
    for name, spec in specs.items():
        if have_snn:
            nets[name] = to_torch(spec)
            graphs[name], how = snntorch_export(spec, nets[name])
        else:
            graphs[name], how = spec_to_nir(spec), "snnTorch's export formulas (snntorch not installed)"
        res["graphs"][name] = {"exported_by": how, "input_shape": list(spec["in_shape"])}

    def one(name, x):
        """The methods interleaved (A B C A B C ...), best time of each: on a shared machine
        a burst of load then hits every method alike."""
        g = graphs[name]
        fns = {"ev": lambda: eventsim_run(g, x, "snntorch"),
               "ref": lambda: dense_reference(g, x, "snntorch")}
        if have_snn:
            fns["snn"] = lambda: snntorch_run(nets[name], x)
        best, outs = {k: float("inf") for k in fns}, {}
        for _ in range(a.repeat):
            for k, fn in fns.items():
                t, outs[k] = timed(fn, 1)
                best[k] = min(best[k], t)
        t_ev, (y_ev, ops) = best["ev"], outs["ev"]
        t_ref, y_ref = best["ref"], outs["ref"]
        row = {"graph": name, "eventsim_s": t_ev, "dense_ref_s": t_ref,
               "eventsim_samples_per_s": x.shape[1] / t_ev, "dense_ref_samples_per_s": x.shape[1] / t_ref,
               "synaptic_ops": int(ops), "eventsim_synaptic_ops_per_s": ops / t_ev,
               "speedup_vs_dense_ref": t_ref / t_ev,
               "equal_dense_ref": bool(np.array_equal(y_ev.reshape(y_ref.shape), y_ref))}
        if have_snn:
            t_sn, y_sn = best["snn"], outs["snn"]
            row.update(snntorch_s=t_sn, snntorch_samples_per_s=x.shape[1] / t_sn,
                       speedup_vs_snntorch=t_sn / t_ev,
                       spike_mismatch_vs_snntorch=int((y_ev.reshape(y_sn.shape) != y_sn).sum()),
                       output_spikes=int(y_sn.sum()))
        return row

    for rate in rates:
        for name, spec in specs.items():
            x = spikes(rng, T, B, spec["in_shape"], rate)
            row = one(name, x)
            row["input_rate"] = rate
            res["activity"].append(row)
            if progress:
                print(json.dumps(row), file=sys.stderr)
    for t in tsweep:
        for name, spec in specs.items():
            x = spikes(rng, t, B, spec["in_shape"], 0.05)
            row = one(name, x)
            row["T"] = t
            res["timesteps_sweep"].append(row)

    dense_layer(res, a, rng, T, B)

    # Lava: same graph read the spikebridge way (IF, reset to zero), per-sample cost
    if a.no_lava:
        res["lava"] = {"skipped": "--no-lava"}
    else:
        try:
            from spikebridge.hardware.backends import run_graph
            pg = spec_to_nir(specs["dense"], style="plain")
            x = spikes(rng, T, a.lava_samples, specs["dense"]["in_shape"], 0.05)
            t_lava, tr_l = timed(lambda: run_graph(pg, x, "lava-float"), 1)
            t_ev, tr_e = timed(lambda: simulate(pg, x, profile="spikebridge", record_spikes=False),
                               max(a.repeat, 5))
            yl, ye = tr_l.outputs["output"], tr_e.outputs["output"]
            res["lava"] = {"graph": "dense, IF neurons (reset to zero)", "samples": a.lava_samples,
                           "lava_s": t_lava, "lava_samples_per_s": a.lava_samples / t_lava,
                           "eventsim_s": t_ev, "eventsim_samples_per_s": a.lava_samples / t_ev,
                           "speedup_vs_lava": t_lava / t_ev,
                           "spike_mismatch": int((yl != ye).sum()), "output_spikes": int(ye.sum()),
                           "note": "Lava time includes its worker start-up and compile, which a "
                                   "user pays per job"}
        except Exception as e:  # noqa: BLE001 - report, keep the other columns
            res["lava"] = {"skipped": f"{type(e).__name__}: {e}"}

    if a.no_lava:
        res["lava_float_demo"] = {"skipped": "--no-lava"}
    else:
        try:
            res["lava_float_demo"] = lava_float_demo(a.demo_graph, a.demo_samples)
        except Exception as e:  # noqa: BLE001 - report, keep the other columns
            res["lava_float_demo"] = {"skipped": f"{type(e).__name__}: {e}"}

    res["machine"]["load_average_end"] = os.getloadavg()
    res["summary"] = summarise(res)
    if a.png:
        try:
            plot(res, a.png)
            res["png"] = a.png
        except Exception as e:  # noqa: BLE001
            res["notes"].append(f"no PNG: {type(e).__name__}: {e}")
    print(json.dumps(res, indent=1, default=float))
    return 0


def dense_layer(res, a, rng, T, B):
    """Synaptic ops/s through one dense 1000x1000 layer at 5 % input activity (T, 4 x batch),
    and the machine's float64 GEMM rate right now (the shared machine's load shows there)."""
    lspec = layer_spec(256 if a.quick else 1000)
    lg = spec_to_nir(lspec, style="plain")
    x = spikes(rng, T, B * 4, lspec["in_shape"], 0.05)
    t_ev, tr = timed(lambda: simulate(lg, x, profile="nir", record_spikes=False), a.repeat)
    xs = x.reshape(-1, x.shape[-1]).astype(np.float64)
    wt = np.ascontiguousarray(np.asarray(lg.nodes["linear0"].weight, np.float64).T)
    t_ref, _ = timed(lambda: [xs[i:i + x.shape[1]] @ wt for i in range(0, xs.shape[0], x.shape[1])],
                     a.repeat)
    # the layer's input comes from the Input node, so counts file its events under macs
    # (one definition: by source); here every one is an input spike through a weight
    ops = tr.counts["linear0"]["synaptic_ops"].sum() + tr.counts["linear0"]["macs"].sum()
    # what this machine's float64 BLAS does right now (the shared machine's load shows here)
    xa = rng.random((xs.shape[0], xs.shape[1]))
    t_mm, _ = timed(lambda: xa @ wt, a.repeat)
    res["machine"]["float64_gemm_gmacs_now"] = xs.shape[0] * wt.shape[0] * wt.shape[1] / t_mm / 1e9
    res["dense_layer_5pct"] = {"shape": [lspec["in_shape"][0]] * 2, "T": T, "batch": B * 4,
                               "synaptic_ops": int(ops), "eventsim_s": t_ev,
                               "eventsim_synaptic_ops_per_s": ops / t_ev,
                               "dense_ref_matmul_only_s": t_ref,
                               "dense_ref_synaptic_ops_per_s": ops / t_ref}


def lava_float_demo(path, n_samples):
    """eventsim's `lava-float` profile against Lava floating_pt itself on a trained graph
    (the demo CNN on digits, direct encoding): both in raw Lava time (one step of delay
    per Lava connection). Lava's trace is aligned; the profile's raw output at step
    t + delay[node] is compared with Lava's aligned step t, spike by spike and value by
    value, and both are classified with the graph's readout."""
    from spikebridge.hardware.graph import analyse, classify, graph_meta, load_graph
    from spikebridge.hardware.backends import run_graph
    from spikebridge.toolchain.pipeline import dataset_samples, direct_encode
    if not Path(path).exists():
        return {"skipped": f"{path} missing (make demo writes it)"}
    g = load_graph(path)
    info = analyse(g)
    xs, ys = dataset_samples("digits", "test", n_samples, info.shapes[info.inputs[0]])
    T = int(graph_meta(g)["timesteps"] or 4)
    x = np.ascontiguousarray(direct_encode(xs, T))
    t_lava, lav = timed(lambda: run_graph(g, x, "lava-float"), 1)
    delays = lav.meta["lava_delay_steps"]
    D = max(delays.values())
    xp = np.concatenate([x, np.zeros((D,) + x.shape[1:], dtype=x.dtype)])  # let the pipeline drain
    t_ev, ev = timed(lambda: simulate(g, xp, profile="lava-float"), 3)
    mismatch = {n: int((s != ev.spikes[n][delays[n]:delays[n] + T]).sum()) for n, s in lav.spikes.items()}
    n_spikes = {n: int(s.sum()) for n, s in lav.spikes.items()}
    out = next(iter(lav.outputs))
    yl = lav.outputs[out]
    ye = ev.outputs[out][delays[out]:delays[out] + T]
    readout = graph_meta(g)["readout"]
    pl, pe = classify(yl, readout), classify(ye, readout)
    return {"graph": str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else str(path),
            "dataset": "digits test", "samples": int(len(ys)), "T": T, "lava_delay_steps": delays,
            "spikes_compared": n_spikes, "spike_mismatch": mismatch,
            "output_max_abs_diff": float(np.abs(yl - ye).max()),
            "accuracy_lava_floating_pt": float(np.mean(pl == ys)),
            "accuracy_eventsim_lava_float": float(np.mean(pe == ys)),
            "prediction_agreement": float(np.mean(pl == pe)),
            "lava_s": t_lava, "eventsim_lava_float_s": t_ev, "speedup_vs_lava": t_lava / t_ev,
            "note": "Lava time includes its worker start-up; eventsim runs T + delay steps"}


def summarise(res):
    act = res["activity"]
    s = {"min_speedup_vs_dense_ref": min(r["speedup_vs_dense_ref"] for r in act),
         "all_equal_dense_ref": all(r["equal_dense_ref"] for r in act + res["timesteps_sweep"])}
    if act and "speedup_vs_snntorch" in act[0]:
        s["min_speedup_vs_snntorch"] = min(r["speedup_vs_snntorch"] for r in act)
        s["spike_mismatch_vs_snntorch"] = sum(r["spike_mismatch_vs_snntorch"] for r in act)
    if "speedup_vs_lava" in res.get("lava", {}):
        s["speedup_vs_lava"] = res["lava"]["speedup_vs_lava"]
    s["dense_layer_5pct_synaptic_ops_per_s"] = res["dense_layer_5pct"]["eventsim_synaptic_ops_per_s"]
    demo = res.get("lava_float_demo", {})
    if "spike_mismatch" in demo:
        s["lava_float_profile_vs_lava"] = {
            "spike_mismatch": sum(demo["spike_mismatch"].values()),
            "spikes": sum(demo["spikes_compared"].values()),
            "output_max_abs_diff": demo["output_max_abs_diff"],
            "prediction_agreement": demo["prediction_agreement"]}
    return s


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("dense", "-"), ("conv", "--")):
        rows = [r for r in res["activity"] if r["graph"] == name]
        if not rows:
            continue
        x = [100 * r["input_rate"] for r in rows]
        axes[0].plot(x, [r["eventsim_samples_per_s"] for r in rows], "o" + style, color="C0",
                     label=f"eventsim {name}")
        axes[0].plot(x, [r["dense_ref_samples_per_s"] for r in rows], "s" + style, color="C1",
                     label=f"dense per-step ref {name}")
        if "snntorch_samples_per_s" in rows[0]:
            axes[0].plot(x, [r["snntorch_samples_per_s"] for r in rows], "^" + style, color="C2",
                         label=f"snnTorch {name}")
        rows = [r for r in res["timesteps_sweep"] if r["graph"] == name]
        t = [r["T"] for r in rows]
        axes[1].plot(t, [r["eventsim_s"] / r["T"] * 1e3 for r in rows], "o" + style, color="C0",
                     label=f"eventsim {name}")
        axes[1].plot(t, [r["dense_ref_s"] / r["T"] * 1e3 for r in rows], "s" + style, color="C1",
                     label=f"dense ref {name}")
        if rows and "snntorch_s" in rows[0]:
            axes[1].plot(t, [r["snntorch_s"] / r["T"] * 1e3 for r in rows], "^" + style, color="C2",
                         label=f"snnTorch {name}")
    axes[0].set(xscale="log", yscale="log", xlabel="input spike rate (%)", ylabel="samples / s",
                title=f"cost vs activity (T={res['timesteps']}, batch {res['batch']})")
    axes[1].set(xscale="log", yscale="log", xlabel="T", ylabel="ms per time step (batch)",
                title="cost vs T (5 % input rate)")
    ts = sorted({r["T"] for r in res["timesteps_sweep"]})
    if ts:
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        axes[1].set_xticks(ts)
        axes[1].xaxis.set_major_formatter(ScalarFormatter())
        axes[1].xaxis.set_minor_formatter(NullFormatter())
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
