"""Node kernels for the event-driven simulator: a registry from NIR node type to kernel.

Stateless kernels map a batch ``x (N, *in_shape) -> (N, *out_shape)``, where N can be
T*B (feed-forward graphs run each layer over all steps at once) or B (one step).
Stateful kernels are pure step functions ``step(p, I, state) -> (out, state)`` with
``I (B, *shape)``, in the style of Norse; a stateful kernel may also offer
``scan(p, I, state)`` over all T steps at once (``I (T, B, *shape)``), which must give
exactly what looping ``step`` gives (the feed-forward path uses it).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from spikebridge.base.errors import UnsupportedError
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
    scan: Callable[..., tuple] | None = None  # scan(params, I (T, B, *shape), state) -> (out, state)

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


def as_f64(x: np.ndarray) -> np.ndarray:
    """``x`` as float64 (no copy when it already is; bool, int and float32 convert exactly)."""
    return x if x.dtype == np.float64 else x.astype(np.float64)


# Conv matrices kept across simulate calls, keyed by a digest of the weights and the
# geometry: batch slices and dataset loops prepare the same layers again (building one
# costs more than hashing the small conv kernel). Bounded in bytes; oldest first out.
_CACHE_MAX_BYTES = 256 << 20
_CACHE: dict = {}


def _weights_key(kind: str, w: np.ndarray, *geometry) -> tuple:
    w = np.ascontiguousarray(w)
    return (kind, hashlib.blake2b(w.tobytes(), digest_size=16).digest(), w.shape, w.dtype.str,
            *geometry)


def _nbytes(v) -> int:
    if isinstance(v, tuple):
        return sum(_nbytes(a) for a in v)
    if sp.issparse(v):
        return v.data.nbytes + v.indices.nbytes + v.indptr.nbytes
    return int(getattr(v, "nbytes", 0))


def _cache_put(key, value):
    size = _nbytes(value)
    if size > _CACHE_MAX_BYTES // 4:
        return value
    while _CACHE and sum(_nbytes(v) for v in _CACHE.values()) + size > _CACHE_MAX_BYTES:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = value
    return value


# -- event products ---------------------------------------------------------------------
#
# One summation order for every event path: output element (r, j) is
#     ((0 + x[r, k1] * W[k1, j]) + x[r, k2] * W[k2, j]) + ...     k1 < k2 < ... the events
# (input order, float64). scipy.sparse's compiled loops (csr_matvecs, csr_matmat) sum in
# exactly this order, so the event paths below agree bit for bit with each other and with
# any loop over events in input order; BLAS sums in its own blocked order (identical on
# integer-valued data, rounding-level differences otherwise).

def nonzero_mask(x2: np.ndarray) -> np.ndarray:
    """x2 != 0 as bool (x2 itself when it is bool): scanning a bool array is several times
    faster than scanning floats for nonzeros."""
    return x2 if x2.dtype == np.bool_ else x2 != 0


def events_csr(x2: np.ndarray, mask: np.ndarray | None = None) -> sp.csr_matrix:
    """The nonzeros of a 2-D array (any numeric dtype) as a float64 CSR matrix (rows in
    order, columns ascending within a row): the events, found in one pass. ``mask``:
    nonzero_mask(x2) when the caller has it already."""
    R, K = x2.shape
    flat = x2.reshape(-1)
    idx = np.flatnonzero(nonzero_mask(x2) if mask is None else mask)
    itype = np.int32 if max(idx.size, K, R) < (1 << 31) - 1 else np.int64
    if K & (K - 1) == 0 and K > 0:  # power of two: shifts instead of division
        cols = (idx & (K - 1)).astype(itype)
    else:
        cols = (idx % K).astype(itype)
    indptr = np.searchsorted(idx, np.arange(0, (R + 1) * K, K, dtype=np.int64)).astype(itype)
    data = flat[idx].astype(np.float64)
    return sp.csr_matrix((data, cols, indptr), shape=(R, K), copy=False)


def event_matmul(x: np.ndarray, wt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``x @ wt`` event by event: every nonzero x[r, k] adds x[r, k] * wt[k] to output row
    r, in input order (see above), so the cost is events x fan-out, not x.size. The
    events' loop is scipy.sparse's compiled CSR x dense product (float64 throughout)."""
    y = events_csr(x, mask) @ wt
    return np.asarray(y, dtype=np.float64)


# -- stateless ------------------------------------------------------------------------

def _identity_prepare(node, name, ctx):
    return {"shape": ctx.info.shapes[name]}


def _reshape_forward(p, x):
    return x.reshape((x.shape[0], *p["shape"]))


def _dense_prepare(node, name, ctx):
    b = _f64(getattr(node, "bias", 0.0)).reshape(-1) if hasattr(node, "bias") else None
    # W^T as float64 in one pass (transpose and exact conversion together; hashing the
    # weights to cache it measured as slow as the copy)
    return {"wt": np.ascontiguousarray(np.asarray(node.weight).T, dtype=np.float64), "b": b}


# Below this fraction of nonzero inputs a dense layer runs event by event (event_matmul)
# instead of one float64 BLAS product over the whole (rows x inputs) matrix. Measured on
# this 2-core machine (784x512, 512x10, 1000x1000 layers, 1024-4096 rows, under load):
# an event through a weight costs ~7x a BLAS MAC (2 threads), the crossover sits at
# 12-15 % nonzeros.
EVENT_MAX_DENSITY = 0.12
_EVENT_MIN_SIZE = 1 << 12      # smaller products: BLAS, whatever the density


def _dense_forward(p, x):
    x2 = x.reshape(x.shape[0], -1)
    mask = nonzero_mask(x2) if x2.size >= _EVENT_MIN_SIZE else None
    if mask is not None and np.count_nonzero(mask) < EVENT_MAX_DENSITY * x2.size:
        y = event_matmul(x2, p["wt"], mask)
    else:
        y = as_f64(x2) @ p["wt"]
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


# A convolution is a sparse (inputs x outputs) matrix M with one entry per (input, output)
# pair joined by a nonzero weight: exact at borders, strides, padding, dilation and
# groups. Up to this many entries (12 bytes each, two copies) the conv runs on M:
# event by event below CONV_EVENT_MAX_DENSITY nonzero inputs (events x nonzero fan-out),
# above it as one compiled pass over M's entries for all T*B rows at once. Both sum
# every output over its inputs in input order (bit-identical to each other). Larger
# convolutions fall back to im2col + BLAS.
_CONV_MATRIX_MAX_NNZ = 1 << 22
CONV_EVENT_MAX_DENSITY = 0.04  # measured crossover of the two ~5 % (bench conv layers)
_CONV_BLOCK_BYTES = 4 << 20


def conv_matrix(p) -> sp.csr_matrix | None:
    """M (inputs x outputs, CSR, float64): M[i, o] = the weight joining input element i
    (flattened (C_in, *spatial)) to output element o (flattened (C_out, *out)); only
    nonzero weights are stored. None when it would exceed _CONV_MATRIX_MAX_NNZ."""
    if "_M" in p:
        return p["_M"]
    w, g, nd = p["w"], p["g"], p["nd"]
    cout, cg = w.shape[0], w.shape[1]
    og = cout // g
    in_sp = tuple(int(s) for s in p["in_shape"][1:])
    out = tuple(int(s) for s in p["out"])
    n_in_sp, n_out_sp = int(np.prod(in_sp)), int(np.prod(out))
    nnz_max = int(np.count_nonzero(w)) * n_out_sp
    if nnz_max > _CONV_MATRIX_MAX_NNZ:
        p["_M"] = None
        return None
    key = _weights_key("conv", p["w"], p["g"], tuple(p["in_shape"]), tuple(p["kernel"]),
                       tuple(p["stride"]), tuple(p["dil"]), tuple(p["lo"]), tuple(p["out"]))
    if key in _CACHE:  # the same layer simulated again (batch slices, datasets)
        p["_M"], p["_Mt"] = _CACHE[key]
        return p["_M"]
    rows, cols, vals = [], [], []
    for tap in itertools.product(*[range(k) for k in p["kernel"]]):
        wv = w[(slice(None), slice(None)) + tap]  # (cout, cg)
        co, ci = np.nonzero(wv)
        if co.size == 0:
            continue
        # per spatial dim: input position of every output position through this tap
        pos = [np.arange(o) * st - l + k * d
               for o, st, l, k, d in zip(out, p["stride"], p["lo"], tap, p["dil"])]
        ok = [(q >= 0) & (q < n) for q, n in zip(pos, in_sp)]
        in_flat = np.zeros(1, dtype=np.int64)
        out_flat = np.zeros(1, dtype=np.int64)
        valid = np.ones(1, dtype=bool)
        for q, v, n, o in zip(pos, ok, in_sp, out):
            in_flat = (in_flat[:, None] * n + q[None, :]).reshape(-1)
            out_flat = (out_flat[:, None] * o + np.arange(o)[None, :]).reshape(-1)
            valid = (valid[:, None] & v[None, :]).reshape(-1)
        in_flat, out_flat = in_flat[valid], out_flat[valid]
        cin = (co // og) * cg + ci
        rows.append((cin[:, None] * n_in_sp + in_flat[None, :]).reshape(-1))
        cols.append((co[:, None] * n_out_sp + out_flat[None, :]).reshape(-1))
        vals.append(np.repeat(wv[co, ci], in_flat.size))
    shape = (int(np.prod(p["in_shape"])), cout * n_out_sp)
    if rows:
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
        vals = np.zeros(0)
    M = sp.csr_matrix((vals, (rows, cols)), shape=shape)
    M.sum_duplicates()  # (none: one entry per (input, output, tap)); sorts the columns
    M.sort_indices()
    p["_M"] = M
    p["_Mt"] = M.T.tocsr()  # (outputs x inputs), inputs ascending in every row
    p["_Mt"].sort_indices()
    _cache_put(key, (M, p["_Mt"]))
    return M


def _conv_forward(p, x):
    n = x.shape[0]
    M = conv_matrix(p)
    if M is None:
        return conv_forward_im2col(p, x)
    x2 = x.reshape(n, -1)
    cout = p["w"].shape[0]
    mask = nonzero_mask(x2)
    if np.count_nonzero(mask) < CONV_EVENT_MAX_DENSITY * x2.size:
        y = (events_csr(x2, mask) @ M).toarray()  # event by event: events x nonzero fan-out
    else:  # every input through M's entries, a block of rows at a time: y^T = M^T x^T
        Mt = p["_Mt"]
        y = np.empty((n, Mt.shape[0]), dtype=np.float64)
        rows = max(16, _CONV_BLOCK_BYTES // (8 * (Mt.shape[0] + Mt.shape[1])))
        for r0 in range(0, n, rows):  # blocks keep both transposes in cache
            y[r0:r0 + rows] = (Mt @ np.ascontiguousarray(as_f64(x2[r0:r0 + rows]).T)).T
    y = y.reshape(n, cout, -1)
    y += p["b"][:, None]
    return y.reshape(n, cout, *p["out"])


def conv_forward_im2col(p, x):
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
        sem = neuron_semantics(node, name, ctx.file, shape, windowed=True)
    else:
        sem = {"reset": "zero", "threshold_test": "gt", "v_init": 0.0, "spike_amplitude": 1.0}
    if sem["reset"] == "window":  # count-then-emit: the node's nature, not a profile choice
        if type(node).__name__ != "IF":
            raise UnsupportedError("reset 'window' (count-then-emit) is defined for IF nodes only", ctx.file,
                                   f"node {name!r}")
    elif prof.reset is not None:
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
    p["v_floor"] = None
    if hasattr(node, "v_threshold"):
        p["thr"] = _f64(node.v_threshold)
        p["v_reset"] = _f64(node.v_reset if getattr(node, "v_reset", None) is not None else 0.0)
        if prof.v_floor is not None:  # sinabs min_v_mem, applied after the reset
            p["v_floor"] = -p["thr"] if prof.v_floor == "-threshold" else _f64(prof.v_floor)
        if prof.v_init_reset:  # SpikingJelly: the membrane starts at v_reset
            p["v_init"] = np.broadcast_to(p["v_reset"], ctx.info.shapes[name])
    # snnTorch reset_delay=False: the spike test sees v - theta where the stored membrane
    # was still above theta (its "avoid double reset" term); the stored v subtracts s*theta
    p["guard"] = prof.reset_timing == "same_step_guarded" and p["reset"] == "subtract"
    # snnTorch Synaptic / RSynaptic / RLeaky, reset to zero with reset_delay: the membrane
    # keeps its value in the spiking step and the WHOLE next step is zeroed (its input
    # lost); a plain Leaky (LIF without a recurrent loop onto itself) zeroes, then integrates
    p["zero_late"] = (prof.reset_timing == "next_step" and p["reset"] == "zero"
                      and (t == "CubaLIF" or (t == "LIF" and _self_loop(name, ctx.info))))
    if t in ("LIF", "LI"):
        p["a"], p["c"] = _leak(ctx, node.tau)
        p["v_leak"] = _f64(node.v_leak)
    if t in ("CubaLIF", "CubaLI"):
        p["a"], p["c"] = _leak(ctx, node.tau_mem)
        p["a_syn"], p["c_syn"] = _leak(ctx, node.tau_syn)
        p["v_leak"] = _f64(node.v_leak)
        p["w_in"] = _f64(node.w_in)
    return p


def _self_loop(name, info) -> bool:
    """``name`` feeds a synaptic node that feeds it back (a recurrent layer's own loop)."""
    return any(name in info.preds.get(m, ()) for m in info.preds.get(name, ())
               if m != name)


def _neuron_init(p, batch):
    v = np.broadcast_to(p["v_init"], (batch, *p["v_init"].shape)).astype(np.float64)
    st = {"v": v}
    if p["reset"] == "window":
        st["pos"] = 0  # steps into the current window
    if p["type"] in ("CubaLIF", "CubaLI"):
        st["i"] = np.zeros_like(v)
    if p["next_step"] or p.get("zero_late"):
        st["pending"] = None  # theta (or the mask) where the neuron spiked last step (snnTorch)
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


def _window_step(p, inp, st):
    """Count-then-emit IF (reset 'window', W steps): v += r*I every step, no firing inside the
    window; at its last step one graded output k * amplitude, k = clip(floor(v / theta), 0, W),
    then v restarts from v_init. With v_init = phi * theta this is the parallel-conversion
    neuron's spike count, emitted at once (models/methods/parallel.py)."""
    v = st["v"] + p["if_scale"] * inp
    pos = st["pos"] + 1
    if pos < p["window"]:
        return np.zeros_like(v), {**st, "v": v, "pos": pos}
    k = np.clip(np.floor(v / p["thr"]), 0, p["window"])
    v0 = np.broadcast_to(p["v_init"], v.shape).astype(np.float64)
    return k * p["spike_amplitude"], {**st, "v": v0, "pos": 0}


def _neuron_step(p, inp, st):
    if p["reset"] == "window":
        return _window_step(p, inp, st)
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
        if p.get("zero_late"):
            if st["pending"] is not None:
                v = np.where(st["pending"], 0.0, v)
            s = v >= p["thr"] if p["threshold_test"] == "ge" else v > p["thr"]
            st = {**st, "pending": s}
        elif p["guard"]:
            r = np.where(st["v"] > p["thr"], p["thr"], 0.0)
            s = (v - r >= p["thr"]) if p["threshold_test"] == "ge" else (v - r > p["thr"])
            v = v - np.where(s, p["thr"], 0.0)
        else:
            s, v = _fire(p, v)
        if p["next_step"]:
            st = {**st, "pending": np.where(s, p["thr"], 0.0)}
        if p["v_floor"] is not None:
            v = np.maximum(v, p["v_floor"])
        out = s * p["spike_amplitude"]
    else:
        out = v
    return out, {**st, "v": v}


def _neuron_scan(p, inp, st):
    """All T steps of ``_neuron_step`` at once, with the same float64 operations in the
    same order (bit-identical): the input term of IF / LIF / LI / I is computed for every
    step in one vectorised pass, then the loop over T updates the membrane and fires in
    place (no per-step temporaries). CubaLIF / CubaLI and sinabs' MultiSpike loop
    ``_neuron_step``."""
    t = p["type"]
    T = inp.shape[0]
    if t not in ("IF", "I", "LIF", "LI") or p["multi"] or p["reset"] == "window" \
            or p["v_floor"] is not None or p["guard"] or p["zero_late"]:
        out = np.empty((T, *inp.shape[1:]), dtype=np.float64)
        for i in range(T):
            out[i], st = _neuron_step(p, inp[i], st)
        return out, st
    # the drive, written into the output buffer (step i reads drive[i] before writing out[i])
    out = np.empty(inp.shape, dtype=np.float64)
    if t in ("IF", "I"):
        np.multiply(p["if_scale"], inp, out=out)        # v = v + if_scale * I
        a = None
    else:
        np.multiply(p["r"], inp, out=out)               # v = a*v + c*(v_leak + r*I)
        np.add(p["v_leak"], out, out=out)
        np.multiply(p["c"], out, out=out)
        a = p["a"]
    v = np.array(st["v"], dtype=np.float64)  # own copy: updated in place
    spiking = t in ("IF", "LIF")
    if spiking:
        thr = np.broadcast_to(p["thr"], v.shape)
        s = np.empty(v.shape, dtype=bool)
        ge = p["threshold_test"] == "ge"
        subtract = p["reset"] == "subtract"
        v_reset = np.broadcast_to(p["v_reset"], v.shape)
        amp = p["spike_amplitude"]
        pending = st.get("pending") if p["next_step"] else None
        if p["next_step"]:
            pending = None if pending is None else np.array(pending, dtype=np.float64)
            pend_buf = np.empty(v.shape, dtype=np.float64)
    for i in range(T):
        if a is not None:
            np.multiply(a, v, out=v)
        np.add(v, out[i], out=v)
        if not spiking:
            out[i] = v
            continue
        if pending is not None:
            np.subtract(v, pending, out=v)
        (np.greater_equal if ge else np.greater)(v, thr, out=s)
        if subtract:
            if p["next_step"]:  # snnTorch: theta is subtracted inside the next update
                pend_buf[...] = 0.0
                np.copyto(pend_buf, thr, where=s)
                pending = pend_buf
            else:
                np.subtract(v, thr, out=v, where=s)     # v - where(s, theta, 0)
        else:
            np.copyto(v, v_reset, where=s)              # where(s, v_reset, v)
        np.multiply(s, amp, out=out[i])
    st = {**st, "v": v}
    if spiking and p["next_step"]:
        st["pending"] = None if pending is None else pending.copy()
    return out, st


for _t in ("IF", "LIF", "CubaLIF", "LI", "I", "CubaLI"):
    register(_t, Kernel(_neuron_prepare, init=_neuron_init, step=_neuron_step, scan=_neuron_scan))


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
