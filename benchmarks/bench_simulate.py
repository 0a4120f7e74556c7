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

    spikebridge bench simulate [--quick] [--png PATH] [--no-lava] [--sweep-only | --no-sweep]
    python benchmarks/bench_simulate.py ...    (same)

Scale sweep (``--sweep-only`` runs it alone, with the 1000x1000 layer): converted ANNs from
the digits CNN to a ResNet-18 shape at 3x32x32 and several firing rates, eventsim
(precision float32) against a multi-step dense torch reference and the NIR -> torch
module, predictions compared; plus the float event loop's synaptic events/s through a
1000x1000 layer at 5 % input activity beside the machine's gather ceiling (a plain
numpy row gather). Measure on one core:

    taskset -c 0 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        spikebridge bench simulate --sweep-only

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

from spikebridge.benchmarks import cpu_model

if not __package__:  # run as a script from a checkout (python benchmarks/bench_simulate.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


# ---------------------------------------------------------------------------- scale sweep
#
# How cost grows with the network: converted ANNs (torch -> ONNX -> spikebridge convert,
# threshold balancing on random calibration frames, direct encoding) from the digits CNN
# to a ResNet-18 shape at 3x32x32, at several firing rates (every IF threshold and v(0)
# scaled by a factor; the rate reached is measured and reported), against
#   - a multi-step dense torch reference (SpikingJelly style, float32: every layer once
#     over T x B samples, then the IF scan over T), and
#   - the project's NIR -> torch module (spikebridge.exporters.nir_import, float32, step by
#     step),
# with predictions (the graph's readout over T) compared for identity. eventsim runs with
# precision='float32' (the dense reference's precision; float64 is the default).


def _torch_nets(quick):
    import torch
    from torch import nn

    torch.manual_seed(0)

    def digits_cnn():  # the `train --arch cnn` shape at 1x8x8 (digits)
        return nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def vgg(cfg):  # VGG-style at 3x32x32, average pools (convertible), 512-512-10 head
        layers, c = [], 3
        for v in cfg:
            if v == "A":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU()]
                c = v
        hw = 32 // 2 ** cfg.count("A")
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * hw * hw, 512), nn.ReLU(),
                             nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))

    class Block(nn.Module):
        def __init__(self, i, o, st):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(i, o, 3, st, 1), nn.Conv2d(o, o, 3, 1, 1)
            self.sc = nn.Conv2d(i, o, 1, st) if (st != 1 or i != o) else None

        def forward(self, x):
            y = self.c2(torch.relu(self.c1(x)))
            return torch.relu(y + (x if self.sc is None else self.sc(x)))

    class ResNet18(nn.Module):  # BasicBlocks 64-128-256-512, global average pool, linear
        def __init__(self, widths=(64, 128, 256, 512)):
            super().__init__()
            self.stem = nn.Conv2d(3, widths[0], 3, 1, 1)
            blocks, c = [], widths[0]
            for k, w in enumerate(widths):
                blocks += [Block(c, w, 1 if k == 0 else 2), Block(w, w, 1)]
                c = w
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            x = self.blocks(torch.relu(self.stem(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    if quick:
        return {"digits_cnn": (digits_cnn(), (1, 8, 8))}
    return {"digits_cnn": (digits_cnn(), (1, 8, 8)),
            "vgg11_avgpool": (vgg([64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"]), (3, 32, 32)),
            "resnet18": (ResNet18(), (3, 32, 32))}


def convert_net(net, in_shape, T, n_cal=32, seed=0):
    """torch -> ONNX (in memory) -> spikebridge convert (the library call behind `spikebridge
    convert --timesteps T --calibration X.npy`). Returns (graph, calibration frames)."""
    import io

    import onnx
    import torch

    from spikebridge.exporters.onnx_to_nir import convert_onnx
    net = net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros((1, *in_shape)), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}}, dynamo=False)
    cal = np.random.default_rng(seed).normal(size=(n_cal, *in_shape)).astype(np.float32)
    graph, _ = convert_onnx(onnx.load_from_string(buf.getvalue()), cal, T)
    return graph


def scale_thresholds(graph, factor):
    """A copy of ``graph`` with every IF threshold and v(0) multiplied by ``factor`` (the
    firing rate falls roughly as 1/factor)."""
    import copy
    g = copy.deepcopy(graph)
    for node in g.nodes.values():
        if type(node).__name__ == "IF":
            node.v_threshold = np.asarray(node.v_threshold) * factor
            md = (node.metadata or {}).get("spikebridge")
            if isinstance(md, dict) and "v_init" in md:
                md["v_init"] = (np.asarray(md["v_init"]) * factor).tolist()
    return g


class TorchMultiStep:
    """SpikingJelly-style multi-step dense run, float32: every synaptic layer once over
    T x B samples (torch's conv2d / linear), then the neuron scan over T (IF / LIF with the
    graph's semantics as eventsim reads them: reset, threshold test, v(0), amplitude)."""

    def __init__(self, graph, profile="spikebridge"):
        import torch

        g = adapt_graph(graph, profile)
        info = analyse(g)
        prof = get_profile(profile)
        ctx = Context(info=info, profile=prof, dt=resolve_dt(g, prof, None))
        self.info, self.p = info, {}

        def f(a):
            return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)

        for n in info.order:
            t = info.types[n]
            pr = KERNELS[t].prepare(g.nodes[n], n, ctx)
            if t == "Conv2d":
                pr = dict(w=f(pr["w"]), b=f(pr["b"]), stride=tuple(pr["stride"]), dil=tuple(pr["dil"]),
                          lo=tuple(pr["lo"]), hi=tuple(pr["hi"]), g=pr["g"])
            elif t in ("Affine", "Linear"):
                pr = dict(w=f(pr["wt"].T), b=None if pr["b"] is None else f(pr["b"]))
            elif t == "Scale":
                pr = dict(s=f(pr["s"]))
            elif t in ("AvgPool2d", "SumPool2d"):
                pr = dict(k=tuple(pr["kernel"]), st=tuple(pr["stride"]), scale=pr["scale"],
                          pad=(pr["lo"][1], pr["hi"][1], pr["lo"][0], pr["hi"][0]))
            elif t in ("IF", "LIF"):
                if pr.get("next_step") or pr.get("multi") or pr["reset"] == "window":
                    raise ValueError(f"{n}: the reference runs same-step IF/LIF only")
                shape = info.shapes[n]

                def bc(a, shape=shape):
                    return f(np.broadcast_to(a, shape))
                q = dict(type=t, thr=bc(pr["thr"]), v0=bc(pr["v_init"]), amp=float(pr["spike_amplitude"]),
                         ge=pr["threshold_test"] == "ge", sub=pr["reset"] == "subtract", vr=bc(pr["v_reset"]))
                if t == "IF":
                    q["k"] = bc(pr["if_scale"])
                else:
                    q.update(a=bc(pr["a"]), c=bc(pr["c"]), r=bc(pr["r"]), vl=bc(pr["v_leak"]))
                pr = q
            elif t not in ("Input", "Output", "Flatten"):
                raise ValueError(f"the dense reference has no {t}")
            self.p[n] = pr

    def __call__(self, x):
        import torch
        from torch.nn import functional as F
        info = self.info
        T, B = x.shape[:2]
        acts = {}
        with torch.no_grad():
            for n in info.order:
                t, p = info.types[n], self.p[n]
                if t == "Input":
                    acts[n] = torch.as_tensor(np.ascontiguousarray(x, np.float32)).reshape(T * B, *x.shape[2:])
                    continue
                inp = acts[info.preds[n][0]]
                for q in info.preds[n][1:]:
                    inp = inp + acts[q]
                if t == "Conv2d":
                    if p["lo"] == p["hi"]:
                        y = F.conv2d(inp, p["w"], p["b"], p["stride"], p["lo"], p["dil"], p["g"])
                    else:
                        y = F.conv2d(F.pad(inp, (p["lo"][1], p["hi"][1], p["lo"][0], p["hi"][0])), p["w"],
                                     p["b"], p["stride"], 0, p["dil"], p["g"])
                elif t in ("Affine", "Linear"):
                    y = F.linear(inp.reshape(T * B, -1), p["w"], p["b"])
                elif t == "Scale":
                    y = inp * p["s"]
                elif t in ("AvgPool2d", "SumPool2d"):
                    z = F.pad(inp, p["pad"]) if any(p["pad"]) else inp
                    y = F.avg_pool2d(z, p["k"], p["st"]) * (float(np.prod(p["k"])) * p["scale"])
                elif t in ("Flatten", "Output"):
                    y = inp.reshape(T * B, *info.shapes[n])
                else:
                    cur = inp.reshape(T, B, *info.shapes[n])
                    v = p["v0"].expand(B, *info.shapes[n]).clone()
                    out = torch.empty_like(cur)
                    for i in range(T):
                        if p["type"] == "IF":
                            v = v + p["k"] * cur[i]
                        else:
                            v = p["a"] * v + p["c"] * (p["vl"] + p["r"] * cur[i])
                        s = v >= p["thr"] if p["ge"] else v > p["thr"]
                        v = v - p["thr"] * s if p["sub"] else torch.where(s, p["vr"], v)
                        out[i] = s * p["amp"]
                    y = out.reshape(T * B, *info.shapes[n])
                acts[n] = y
        o = info.outputs[0]
        return acts[o].reshape(T, B, *info.shapes[o]).numpy()


def _predictions(y, readout):
    from spikebridge.hardware.graph import classify
    return np.asarray(classify(np.asarray(y, np.float64), readout))


def scale_sweep(a, progress=False):
    """The sweep rows (see the section comment). Timings best of a.repeat, interleaved."""
    import torch

    from spikebridge.exporters.nir_import import graph_to_torch
    from spikebridge.hardware.graph import graph_meta
    from spikebridge.hardware.eventsim.simulator import usable_cpus
    torch.set_num_threads(usable_cpus())
    T = a.sweep_timesteps
    rows = []
    factors = [float(f) for f in a.sweep_factors.split(",")]
    for name, (net, in_shape) in _torch_nets(a.quick).items():
        t0 = time.perf_counter()
        base = convert_net(net, in_shape, T)
        convert_s = time.perf_counter() - t0
        B = a.sweep_batch if name != "digits_cnn" else max(a.sweep_batch, 64)
        frames = np.random.default_rng(1).normal(size=(B, *in_shape)).astype(np.float32)
        x = np.ascontiguousarray(np.broadcast_to(frames[None], (T, *frames.shape)))
        for f in factors:
            g = scale_thresholds(base, f)
            info = analyse(g)
            readout = graph_meta(g)["readout"]
            ref = TorchMultiStep(g)
            mod = graph_to_torch(g).float()

            def ev():
                return simulate(g, x, profile="spikebridge", info=info, precision="float32",
                                record_spikes=False)

            def nir_mod():
                with torch.no_grad():
                    return mod(torch.from_numpy(x))[info.outputs[0]].numpy()

            tr = ev()  # warm-up: machine costs, per-layer calibration, caches
            fns = {"eventsim": ev, "dense_ref": lambda: ref(x), "nir_module": nir_mod}
            best, outs = {k: float("inf") for k in fns}, {}
            t_start, rounds = time.perf_counter(), 0
            # interleaved rounds, best of each; fast configurations get more rounds (at least
            # --repeat, until 4 s have passed, at most 15): on a shared CPU a preempted run
            # is slower by whole time slices, the best run is the machine's own speed
            while rounds < a.repeat or (time.perf_counter() - t_start < 4.0 and rounds < 15):
                for k, fn in fns.items():
                    t, outs[k] = timed(fn, 1)
                    best[k] = min(best[k], t)
                rounds += 1
            tr = outs["eventsim"]
            y_ev = tr.outputs[info.outputs[0]]
            p_ev = _predictions(y_ev, readout)
            p_ref = _predictions(outs["dense_ref"], readout)
            p_mod = _predictions(outs["nir_module"], readout)
            neurons = sum(int(np.prod(info.shapes[n])) for n in info.order if info.types[n] == "IF")
            spikes_total = sum(int(tr.counts[n]["spikes"].sum()) for n in info.order if info.types[n] == "IF")
            row = {"net": name, "input_shape": list(in_shape), "T": T, "batch": B, "threshold_factor": f,
                   "firing_rate": spikes_total / max(neurons * T * B, 1),
                   "synaptic_ops_per_sample": tr.per_sample("synaptic_ops"),
                   "eventsim_samples_per_s": B / best["eventsim"],
                   "dense_ref_samples_per_s": B / best["dense_ref"],
                   "nir_module_samples_per_s": B / best["nir_module"],
                   "speedup_vs_dense_ref": best["dense_ref"] / best["eventsim"],
                   "speedup_vs_nir_module": best["nir_module"] / best["eventsim"],
                   "predictions_equal_dense_ref": float(np.mean(p_ev == p_ref)),
                   "predictions_equal_nir_module": float(np.mean(p_ev == p_mod)),
                   "output_max_abs_diff_dense_ref": float(np.abs(y_ev - outs["dense_ref"]).max()),
                   "convert_s": convert_s, "timing_rounds": rounds}
            rows.append(row)
            if progress:
                print(json.dumps(row), file=sys.stderr)
    return rows


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
    ap.add_argument("--demo-graph", default=os.path.join("runs", "demo", "graph.nir"),
                    help="graph for the lava-float profile vs Lava floating_pt row (digits)")
    ap.add_argument("--demo-samples", type=int, default=360, help="digits test samples for that row")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (interleaved) timings")
    ap.add_argument("--png", help="scaling curves (default bench_simulate.png in the current directory; "
                                  "none with --quick unless given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer-only", action="store_true",
                    help="only the dense 1000x1000 layer at 5 %% (synaptic ops/s; a load-sensitive number)")
    ap.add_argument("--sweep-only", action="store_true",
                    help="only the scale sweep (digits CNN, VGG-style, ResNet-18-style) and the 1000x1000 layer")
    ap.add_argument("--no-sweep", action="store_true", help="skip the scale sweep")
    ap.add_argument("--sweep-batch", type=int, default=8, help="samples per sweep run (digits CNN: at least 64)")
    ap.add_argument("--sweep-timesteps", type=int, default=8)
    ap.add_argument("--sweep-factors", default="1,3,8",
                    help="threshold factors of the sweep (firing rate falls roughly as 1/factor)")
    a = ap.parse_args(argv)
    rates = [float(r) for r in a.rates.split(",")]
    tsweep = [int(t) for t in a.t_sweep.split(",")]
    B, T = a.batch, a.timesteps
    if a.quick:
        B, T, rates, tsweep, a.repeat, a.lava_samples = 8, 4, [0.02, 0.2], [2, 4], 1, 2
        a.demo_samples = min(a.demo_samples, 16)
        a.sweep_batch, a.sweep_timesteps, a.sweep_factors = 4, 4, "1"
    elif a.png is None:
        a.png = "bench_simulate.png"
    rng = np.random.default_rng(a.seed)
    try:
        import torch
        torch.set_num_threads(2)
        import snntorch  # noqa: F401
        have_snn, snn_note = True, f"snntorch {snntorch.__version__}, torch {torch.__version__}"
    except ImportError as e:
        have_snn, snn_note = False, (f"snnTorch column skipped: {e} (install the benchmark extra: "
                                     "pip install snntorch nirtorch)")
    from spikebridge.hardware.eventsim.simulator import usable_cpus
    res = {"machine": {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "cpu_model": cpu_model(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "load_average": os.getloadavg(),
                       "threads_env": {k: os.environ.get(k) for k in
                                       ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}},
           "batch": B, "timesteps": T, "snntorch": snn_note, "graphs": {}, "activity": [],
           "timesteps_sweep": [], "notes": []}

    if a.sweep_only:
        res["scale_sweep"] = scale_sweep(a, progress)
        dense_layer(res, a, rng, T, B)
        res["machine"]["load_average_end"] = os.getloadavg()
        res["summary"] = summarise_sweep(res)
        print(json.dumps({k: res[k] for k in ("machine", "scale_sweep", "dense_layer_5pct", "summary")},
                         indent=1, default=float))
        return 0
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
    if a.no_sweep:
        res["scale_sweep"] = []
        res["notes"].append("scale sweep skipped (--no-sweep)")
    else:
        res["scale_sweep"] = scale_sweep(a, progress)

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
    res["summary"].update(summarise_sweep(res))
    if a.png:
        try:
            plot(res, a.png)
            res["png"] = a.png
        except Exception as e:  # noqa: BLE001
            res["notes"].append(f"no PNG: {type(e).__name__}: {e}")
    print(json.dumps(res, indent=1, default=float))
    return 0


def dense_layer(res, a, rng, T, B):
    """Synaptic ops/s through one dense 1000x1000 layer at 5 % input activity (T, 4 x batch):
    the whole simulate call in float64 and float32, the float32 event loop alone
    (kernels.event_matmul), the machine's gather ceiling beside it (a plain numpy row gather
    of every event's weight row into a reused buffer) and its float64 GEMM rate right now
    (the shared machine's load shows there)."""
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
    # precision float32: the same events through float32 weights
    simulate(lg, x, profile="nir", record_spikes=False, precision="float32")  # warm-up
    t_ev32, tr32 = timed(lambda: simulate(lg, x, profile="nir", record_spikes=False, precision="float32"),
                         a.repeat)
    ops32 = tr32.counts["linear0"]["synaptic_ops"].sum() + tr32.counts["linear0"]["macs"].sum()
    # the machine's gather ceiling: a plain numpy row gather of the weight row of every event
    # (what any event loop must at least read), float32 and float64
    cols = np.nonzero(x.reshape(-1, x.shape[-1]))[1]
    wt32 = wt.astype(np.float32)

    def gather(w, chunk=512):  # rows into one reused buffer (no allocation per row block)
        buf = np.empty((chunk, w.shape[1]), dtype=w.dtype)
        for i in range(0, cols.size, chunk):
            c = cols[i:i + chunk]
            np.take(w, c, axis=0, out=buf[:c.size])
        return buf
    gather(wt32)
    # the event loop alone (kernels.event_matmul: the events of all T x batch rows through
    # the float32 weights), beside the whole simulate call above (neurons and counts included)
    from spikebridge.hardware.eventsim.kernels import event_matmul
    x2 = x.reshape(-1, x.shape[-1])
    m2 = x2 != 0
    event_matmul(x2, wt32, m2)
    t_loop, _ = timed(lambda: event_matmul(x2, wt32, m2), max(a.repeat, 5))
    t_g32, _ = timed(lambda: gather(wt32), a.repeat)
    t_g64, _ = timed(lambda: gather(wt), a.repeat)
    gops = cols.size * wt.shape[1]
    res["dense_layer_5pct"] = {"shape": [lspec["in_shape"][0]] * 2, "T": T, "batch": B * 4,
                               "synaptic_ops": int(ops), "eventsim_s": t_ev,
                               "eventsim_synaptic_ops_per_s": ops / t_ev,
                               "eventsim_float32_s": t_ev32,
                               "eventsim_float32_synaptic_ops_per_s": ops32 / t_ev32,
                               "event_loop_float32_ops_per_s": gops / t_loop,
                               "gather_ceiling_float32_ops_per_s": gops / t_g32,
                               "gather_ceiling_float64_ops_per_s": gops / t_g64,
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
    return {"graph": str(path),
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


def summarise_sweep(res):
    rows = res.get("scale_sweep") or []
    s = {}
    if rows:
        s["sweep_min_speedup_vs_dense_ref"] = min(r["speedup_vs_dense_ref"] for r in rows)
        low = [r["speedup_vs_dense_ref"] for r in rows if r["firing_rate"] <= 0.05]
        s["sweep_min_speedup_vs_dense_ref_rate_le_5pct"] = min(low) if low else None
        s["sweep_min_speedup_vs_nir_module"] = min(r["speedup_vs_nir_module"] for r in rows)
        s["sweep_predictions_equal_dense_ref"] = min(r["predictions_equal_dense_ref"] for r in rows)
        s["sweep_predictions_equal_nir_module"] = min(r["predictions_equal_nir_module"] for r in rows)
    d = res.get("dense_layer_5pct")
    if d:
        s["dense_layer_5pct_float32_synaptic_ops_per_s"] = d["eventsim_float32_synaptic_ops_per_s"]
        s["event_loop_float32_ops_per_s"] = d["event_loop_float32_ops_per_s"]
        s["gather_ceiling_float32_ops_per_s"] = d["gather_ceiling_float32_ops_per_s"]
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
