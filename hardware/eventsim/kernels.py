"""Node kernels for the event-driven simulator: a registry from NIR node type to kernel.

Stateless kernels map a batch ``x (N, *in_shape) -> (N, *out_shape)``, where N can be
T*B (feed-forward graphs run each layer over all steps at once) or B (one step).
Stateful kernels are pure step functions ``step(p, I, state) -> (out, state)`` with
``I (B, *shape)``, in the style of Norse.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UnsupportedError
from ..graph import GraphInfo, conv_geometry, neuron_semantics
from .profiles import Profile

_IM2COL_BYTES = 64 << 20  # chunk conv batches so the im2col buffer stays below this


@dataclass(frozen=True)
class Kernel:
    """prepare(node, name, ctx) -> params. Then either forward(params, x) (stateless) or
    init(params, batch) -> state and step(params, I, state) -> (out, state)."""

    prepare: Callable[..., Any]
    forward: Callable[..., np.ndarray] | None = None
    init: Callable[..., Any] | None = None
    step: Callable[..., tuple] | None = None

    @property
    def stateful(self) -> bool:
        return self.step is not None


@dataclass(frozen=True)
class Context:
    info: GraphInfo
    profile: Profile
    dt: float
    file: str | None = None


KERNELS: dict[str, Kernel] = {}


def register(type_name: str, kernel: Kernel) -> None:
    KERNELS[type_name] = kernel


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# -- stateless ------------------------------------------------------------------------

def _identity_prepare(node, name, ctx):
    return {"shape": ctx.info.shapes[name]}


def _reshape_forward(p, x):
    return x.reshape((x.shape[0], *p["shape"]))


def _dense_prepare(node, name, ctx):
    w = _f64(node.weight)
    b = _f64(getattr(node, "bias", 0.0)).reshape(-1) if hasattr(node, "bias") else None
    return {"wt": np.ascontiguousarray(w.T), "b": b}


# Below this fraction of nonzero inputs a dense layer gathers the weight rows of the
# events instead of calling BLAS on the whole (rows x inputs) matrix. Measured on this
# 2-core machine (1000x1000 layer, 4096 rows): events cost ~45x a BLAS MAC, so the
# crossover is near 2 % nonzeros; 1.5 % keeps the event path strictly faster.
EVENT_MAX_DENSITY = 0.015
_EVENT_MIN_SIZE = 1 << 15      # smaller products: BLAS, whatever the density
_EVENT_BLOCK_BYTES = 2 << 20   # gathered weight rows per block


def event_matmul(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``x @ wt`` by gathering, for every nonzero x[r, j], the weight row wt[j]: cost
    proportional to the events (nonzeros) times the fan-out, not to x.size.

    Events are taken in rank order (the k-th event of every row at once), so each pass
    is one vectorised gather-add over distinct rows; every output row sums its events
    in input order. Exact for integer-valued data (like BLAS); for other floats the
    sum order differs from BLAS by rounding only."""
    R = x.shape[0]
    n_out = wt.shape[1]
    out = np.zeros((R, n_out), dtype=np.float64)
    r, c = np.nonzero(x)
    if r.size == 0:
        return out
    vals = x[r, c]
    binary = bool(np.all(vals == 1.0))
    counts = np.bincount(r, minlength=R)
    rank = np.arange(r.size) - (np.cumsum(counts) - counts)[r]
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(int(counts.max()) + 1))
    step = max(1, _EVENT_BLOCK_BYTES // (n_out * 8))
    for i in range(len(bounds) - 1):
        seg = order[bounds[i]:bounds[i + 1]]
        for s0 in range(0, seg.size, step):
            e = seg[s0:s0 + step]
            g = wt[c[e]]
            if not binary:
                g *= vals[e, None]
            out[r[e]] += g  # rows are distinct within one rank
    return out


def _dense_forward(p, x):
    x2 = x.reshape(x.shape[0], -1)
    if x2.size >= _EVENT_MIN_SIZE and np.count_nonzero(x2) < EVENT_MAX_DENSITY * x2.size:
        y = event_matmul(x2, p["wt"])
    else:
        y = x2 @ p["wt"]
    if p["b"] is not None:
        y += p["b"]
    return y


def dense_forward_blas(p, x):
    """The BLAS path alone (the benchmark's dense reference uses it)."""
    y = x @ p["wt"]
    if p["b"] is not None:
        y += p["b"]
    return y


def _scale_prepare(node, name, ctx):
    return {"s": _f64(node.scale)}


def _conv_prepare(node, name, ctx):
    info = ctx.info
    in_shape = info.in_shapes[name]
    nd = len(in_shape) - 1
    kernel, stride, dil, lo, hi, out = conv_geometry(node, nd, tuple(in_shape[1:]))
    w = _f64(node.weight)
    g = int(node.groups)
    b = _f64(node.bias).reshape(-1)
    return {"w": w, "g": g, "b": b, "kernel": kernel, "stride": stride, "dil": dil,
            "lo": lo, "hi": hi, "out": out, "nd": nd, "in_shape": in_shape}


def _conv_forward(p, x):
    """im2col in channels-last order (the gather copies contiguous channel runs), then one
    matmul per group, in chunks of the batch so the im2col buffer stays bounded."""
    n = x.shape[0]
    w, g, nd = p["w"], p["g"], p["nd"]
    cout, cg = w.shape[0], w.shape[1]
    og = cout // g
    ksz = int(np.prod(p["kernel"]))
    opos = int(np.prod(p["out"]))
    wmats = p.get("_wmats")
    if wmats is None:  # (*k, cg, og) per group, flattened to (k*cg, og)
        wmats = [np.ascontiguousarray(np.moveaxis(w[gi * og:(gi + 1) * og], 0, -1)
                                      .transpose(*range(1, nd + 1), 0, nd + 1)
                                      .reshape(ksz * cg, og)) for gi in range(g)]
        p["_wmats"] = wmats
    out = np.empty((n, *p["out"], cout), dtype=np.float64)
    chunk = max(1, _IM2COL_BYTES // max(opos * cg * ksz * 8, 1))
    pad = [(0, 0)] + [(a, b) for a, b in zip(p["lo"], p["hi"])] + [(0, 0)]
    taps = list(itertools.product(*[range(k) for k in p["kernel"]]))
    for s0 in range(0, n, chunk):
        xc = np.moveaxis(x[s0:s0 + chunk], 1, -1)  # channels last
        if any(a or b for a, b in pad):
            xc = np.pad(xc, pad)
        m = xc.shape[0]
        cols = np.empty((m, *p["out"], ksz, cg), dtype=np.float64)
        for gi in range(g):
            for ti, tap in enumerate(taps):
                sl = (slice(None),) + tuple(
                    slice(k * d, k * d + (o - 1) * st + 1, st)
                    for k, d, o, st in zip(tap, p["dil"], p["out"], p["stride"])) \
                    + (slice(gi * cg, (gi + 1) * cg),)
                cols[..., ti, :] = xc[sl]
            out[s0:s0 + m, ..., gi * og:(gi + 1) * og] = (
                cols.reshape(m * opos, ksz * cg) @ wmats[gi]).reshape(m, *p["out"], og)
    out += p["b"]
    return np.moveaxis(out, -1, 1)


def _pool_prepare(node, name, ctx):
    in_shape = ctx.info.in_shapes[name]
    kernel, stride, dil, lo, hi, out = conv_geometry(node, 2, tuple(in_shape[1:]))
    scale = 1.0 / float(np.prod(kernel)) if type(node).__name__ == "AvgPool2d" else 1.0
    return {"kernel": kernel, "stride": stride, "dil": dil, "lo": lo, "hi": hi, "out": out,
            "nd": 2, "scale": scale}


def _pool_forward(p, x):
    pad = [(0, 0), (0, 0)] + [(a, b) for a, b in zip(p["lo"], p["hi"])]
    if any(a or b for a, b in pad):
        x = np.pad(x, pad)
    y = np.zeros((x.shape[0], x.shape[1], *p["out"]), dtype=np.float64)
    for tap in itertools.product(*[range(k) for k in p["kernel"]]):
        sl = (slice(None), slice(None)) + tuple(
            slice(k, k + (o - 1) * st + 1, st) for k, o, st in zip(tap, p["out"], p["stride"]))
        y += x[sl]
    if p["scale"] != 1.0:
        y *= p["scale"]
    return y


def _threshold_prepare(node, name, ctx):
    return {"thr": _f64(node.threshold)}


register("Input", Kernel(_identity_prepare, _reshape_forward))
register("Output", Kernel(_identity_prepare, _reshape_forward))
register("Flatten", Kernel(_identity_prepare, _reshape_forward))
register("Affine", Kernel(_dense_prepare, _dense_forward))
register("Linear", Kernel(_dense_prepare, _dense_forward))
register("Scale", Kernel(_scale_prepare, lambda p, x: x * p["s"]))
register("Conv1d", Kernel(_conv_prepare, _conv_forward))
register("Conv2d", Kernel(_conv_prepare, _conv_forward))
register("SumPool2d", Kernel(_pool_prepare, _pool_forward))
register("AvgPool2d", Kernel(_pool_prepare, _pool_forward))
register("Threshold", Kernel(_threshold_prepare,
                             lambda p, x: (x > p["thr"]).astype(np.float64)))


# -- neurons --------------------------------------------------------------------------

def _semantics(node, name, ctx):
    """Reset, threshold test, v(0), spike amplitude: the file's (our metadata when the
    profile honours it), then the profile's forced choices."""
    shape = ctx.info.shapes[name]
    prof = ctx.profile
    if prof.honour_metadata:
        sem = neuron_semantics(node, name, ctx.file, shape)
    else:
        sem = {"reset": "zero", "threshold_test": "gt", "v_init": 0.0, "spike_amplitude": 1.0}
    if prof.reset is not None:
        sem["reset"] = prof.reset
    if prof.threshold_test is not None:
        sem["threshold_test"] = prof.threshold_test
    sem["v_init"] = np.broadcast_to(_f64(sem["v_init"]), shape)
    sem["spike_amplitude"] = _f64(sem["spike_amplitude"])
    return sem


def _leak(ctx, tau):
    """Return (a, c) such that v <- a*v + c*(v_leak + r*I) implements the profile's decay."""
    tau = _f64(tau)
    if ctx.profile.integrator == "euler":
        c = ctx.dt / tau
        return 1.0 - c, c
    if ctx.profile.integrator == "exact":
        a = np.exp(-ctx.dt / tau)
        return a, 1.0 - a
    raise UnsupportedError(f"integrator {ctx.profile.integrator!r} is not implemented", None,
                           f"profile {ctx.profile.name}")


def _neuron_prepare(node, name, ctx):
    t = type(node).__name__
    prof = ctx.profile
    p = _semantics(node, name, ctx)
    p["type"] = t
    p["dt"] = ctx.dt
    p["r"] = _f64(node.r)
    p["if_scale"] = p["r"] * (ctx.dt if prof.if_input == "dt" else 1.0)
    p["next_step"] = prof.reset_timing == "next_step" and p["reset"] == "subtract"
    p["multi"] = prof.multi_spike
    p["jump"] = prof.current_input == "jump"
    if hasattr(node, "v_threshold"):
        p["thr"] = _f64(node.v_threshold)
        p["v_reset"] = _f64(node.v_reset if getattr(node, "v_reset", None) is not None else 0.0)
    if t in ("LIF", "LI"):
        p["a"], p["c"] = _leak(ctx, node.tau)
        p["v_leak"] = _f64(node.v_leak)
    if t in ("CubaLIF", "CubaLI"):
        p["a"], p["c"] = _leak(ctx, node.tau_mem)
        p["a_syn"], p["c_syn"] = _leak(ctx, node.tau_syn)
        p["v_leak"] = _f64(node.v_leak)
        p["w_in"] = _f64(node.w_in)
    return p


def _neuron_init(p, batch):
    v = np.broadcast_to(p["v_init"], (batch, *p["v_init"].shape)).astype(np.float64)
    st = {"v": v}
    if p["type"] in ("CubaLIF", "CubaLI"):
        st["i"] = np.zeros_like(v)
    if p["next_step"]:
        st["pending"] = None  # theta where the neuron spiked last step (snnTorch)
    return st


def _fire(p, v):
    """(spike count or mask, membrane after the reset)."""
    thr = p["thr"]
    if p["multi"]:  # sinabs MultiSpike: floor(v / theta) spikes, where v > 0
        s = np.where(v > 0, np.floor(v / thr), 0.0)
        if p["threshold_test"] == "gt":  # v exactly k*theta then emits k-1
            s = np.where((s > 0) & (v == s * thr), s - 1, s)
        if p["reset"] == "subtract":
            return s, v - s * thr
        return s, np.where(s > 0, p["v_reset"], v)
    s = v >= thr if p["threshold_test"] == "ge" else v > thr
    if p["reset"] == "subtract":
        if p["next_step"]:
            return s, v
        return s, v - np.where(s, thr, 0.0)
    return s, np.where(s, p["v_reset"], v)


def _neuron_step(p, inp, st):
    t = p["type"]
    v = st["v"]
    if t in ("IF", "I"):
        v = v + p["if_scale"] * inp
    elif t in ("LIF", "LI"):
        v = p["a"] * v + p["c"] * (p["v_leak"] + p["r"] * inp)
    elif p["jump"]:  # Norse: the input jumps into the current, the membrane sees it, then i decays
        ij = st["i"] + p["w_in"] * inp
        v = p["a"] * v + p["c"] * (p["v_leak"] + p["r"] * ij)
        st = {**st, "i": p["a_syn"] * ij}
    else:  # CubaLIF / CubaLI: current first, the membrane sees the new current
        i = p["a_syn"] * st["i"] + p["c_syn"] * (p["w_in"] * inp)
        st = {**st, "i": i}
        v = p["a"] * v + p["c"] * (p["v_leak"] + p["r"] * i)
    if t in ("IF", "LIF", "CubaLIF"):
        if p["next_step"] and st["pending"] is not None:
            v = v - st["pending"]
        s, v = _fire(p, v)
        if p["next_step"]:
            st = {**st, "pending": np.where(s, p["thr"], 0.0)}
        out = s * p["spike_amplitude"]
    else:
        out = v
    return out, {**st, "v": v}


for _t in ("IF", "LIF", "CubaLIF", "LI", "I", "CubaLI"):
    register(_t, Kernel(_neuron_prepare, init=_neuron_init, step=_neuron_step))


# -- delay ----------------------------------------------------------------------------

def _delay_prepare(node, name, ctx):
    shape = ctx.info.shapes[name]
    steps = _f64(node.delay) / ctx.dt
    k = np.rint(steps)
    if not np.allclose(steps, k, rtol=0, atol=1e-9):
        raise UnsupportedError(f"delay {node.delay} is not a whole number of steps "
                               f"(dt={ctx.dt})", ctx.file, f"node {name!r}")
    k = np.broadcast_to(k.astype(np.int64), shape)
    return {"k": k, "kmax": int(k.max()) if k.size else 0, "shape": shape}


def _delay_init(p, batch):
    return {"hist": np.zeros((p["kmax"] + 1, batch, *p["shape"])), "pos": 0}


def _delay_step(p, inp, st):
    hist, pos = st["hist"], st["pos"]
    n = hist.shape[0]
    hist[pos % n] = inp
    idx = (pos - p["k"]) % n  # (*shape) ring index of x[t - k]
    out = np.take_along_axis(hist, np.broadcast_to(idx, (1, hist.shape[1], *p["shape"])), 0)[0]
    # before step k the delayed value is zero
    out = np.where(pos >= p["k"], out, 0.0)
    return out, {"hist": hist, "pos": pos + 1}


register("Delay", Kernel(_delay_prepare, init=_delay_init, step=_delay_step))
