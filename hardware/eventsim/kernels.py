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
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from spikebridge.base.errors import UnsupportedError
from .. import jit
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
    """precision: 'float64' (every product in float64, the reference) or 'float32' (synaptic
    products and neuron outputs in float32; see the module doc of simulator.py)."""
    info: GraphInfo
    profile: Profile
    dt: float
    file: str | None = None
    precision: str = "float64"


KERNELS: dict[str, Kernel] = {}


def register(type_name: str, kernel: Kernel) -> None:
    KERNELS[type_name] = kernel


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def as_f64(x: np.ndarray) -> np.ndarray:
    """``x`` as float64 (no copy when it already is; bool, int and float32 convert exactly)."""
    return x if x.dtype == np.float64 else x.astype(np.float64)


def as_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` as ``dtype`` (no copy when it already is)."""
    return x if x.dtype == dtype else x.astype(dtype)


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


_CACHE_LOCK = threading.Lock()  # batch chunks run on threads and prepare the same layers


def _cache_put(key, value):
    size = _nbytes(value)
    if size > _CACHE_MAX_BYTES // 4:
        return value
    with _CACHE_LOCK:
        while _CACHE and sum(_nbytes(v) for v in list(_CACHE.values())) + size > _CACHE_MAX_BYTES:
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


def events_csr(x2: np.ndarray, mask: np.ndarray | None = None, dtype=np.float64) -> sp.csr_matrix:
    """The nonzeros of a 2-D array (any numeric dtype) as a CSR matrix of ``dtype`` (rows in
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
    data = flat[idx].astype(dtype)
    return sp.csr_matrix((data, cols, indptr), shape=(R, K), copy=False)


def event_matmul(x: np.ndarray, wt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``x @ wt`` event by event: every nonzero x[r, k] adds x[r, k] * wt[k] to output row
    r, in input order (see above), so the cost is events x fan-out, not x.size. The
    events' loop is compiled (hardware/jit.py; scipy.sparse's CSR x dense product when
    numba is off: the same sums), in wt's dtype (float64, or float32 under precision
    'float32')."""
    k = jit.kernels()
    if k is None:
        y = events_csr(x, mask, wt.dtype) @ wt
        return np.asarray(y, dtype=wt.dtype)
    # the compiled loop (hardware/jit.py): the same sums in the same order, read from x
    y = np.zeros((x.shape[0], wt.shape[1]), dtype=wt.dtype)
    if x.dtype == np.bool_:
        k.mask_add(x, wt, y)
    else:
        k.value_add(as_dtype(x, wt.dtype), wt, y)
    return y


# -- the machine's costs, measured at first use ---------------------------------------
#
# Which path a product takes (event by event, or one dense BLAS product) depends on the
# machine: the cost of one event through one weight in the compiled event loop against
# one multiply-add in BLAS (its vector width, its threads, the load right now). They are
# measured once per process on small probes, best of 5 each (0.1-0.5 s in all, more on a
# loaded machine; machine_costs()), and
# every choice below is the cheaper of two modelled costs (seconds):
#     event path  = events x (fan-out x ev_op + ev_event)
#                   (float32 conv: events x taps x C_out x conv_op + the grid walk and scan)
#     dense path  = rows x inputs x outputs x mac           (conv: x taps, + the im2col copy)
# taken per layer and per step block (the rows of one time step), so a layer whose
# activity changes over time switches path where it crosses over. Every path computes
# the same sums (identical on integer-valued data; rounding-level differences otherwise,
# tested), so the choice changes speed only.

@dataclass(frozen=True)
class MachineCosts:
    mac: dict          # dtype name -> s per multiply-add of a BLAS product
    ev_op: dict        # dtype name -> s per (event x weight) of the event loop (CSR x dense)
    ev_event: dict     # dtype name -> s per event (fixed part)
    ev_scan: dict      # dtype name -> s per input element looked at for events
    conv_op: float     # s per (event x tap x C_out) of the float32 conv event path
    conv_row: float    # s per (grid position x tap) of that path (the row-pointer walk)
    conv_scan: float   # s per input element of that path (phase grids, finding events)
    spgemm_op: float   # s per (event x weight) of events x the sparse conv matrix M (float64)
    mpass_op: float    # s per (row x entry of M) of the dense pass over M (float64)


_COSTS: MachineCosts | None = None


def _best_time(fn, repeat: int = 5) -> float:
    import time
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def machine_costs(refresh: bool = False) -> MachineCosts:
    """The cost constants of this machine, measured on first use in this process (cached).
    ``refresh`` measures again (e.g. after the machine's load changed)."""
    global _COSTS
    if _COSTS is not None and not refresh:
        return _COSTS
    rng = np.random.default_rng(12345)
    mac, ev_op, ev_event, ev_scan = {}, {}, {}, {}
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        a = rng.random((384, 256)).astype(dt)
        w = rng.random((256, 256)).astype(dt)
        mac[name] = _best_time(lambda: a @ w) / (384 * 256 * 256)
        x = rng.random((1536, 256)) < 0.05
        ne = int(np.count_nonzero(x))
        # the event path as the kernels run it (event_matmul: compiled, or scipy without it)
        t_wide = _best_time(lambda: event_matmul(x, w))
        w8 = np.ascontiguousarray(w[:, :8])
        t_narrow = _best_time(lambda: event_matmul(x, w8))
        t_scan = _best_time(lambda: event_matmul(np.zeros_like(x), w8))
        op = max((t_wide - t_narrow) / (ne * 248), 1e-12)
        ev_op[name] = op
        ev_scan[name] = t_scan / x.size
        ev_event[name] = max((t_narrow - t_scan - 8 * op * ne) / ne, 1e-12)
    # convolution probes: (16, 16, 16) input, 3x3, 32 outputs, 5 % events
    cp = {"w": rng.normal(size=(32, 16, 3, 3)), "g": 1, "b": np.zeros(32), "kernel": (3, 3),
          "stride": (1, 1), "dil": (1, 1), "lo": (1, 1), "hi": (1, 1), "out": (16, 16), "nd": 2,
          "in_shape": (16, 16, 16), "dtype": np.dtype(np.float32)}
    xc = (rng.random((48, 16 * 16 * 16)) < 0.05)
    ne = int(np.count_nonzero(xc))
    t_ev = _best_time(lambda: _conv32_events(cp, xc))
    x0 = np.zeros_like(xc)
    t_zero = _best_time(lambda: _conv32_events(cp, x0))
    grid, _ = _phase_plan(cp)
    gpos = int(np.prod(grid))
    conv_op = max((t_ev - t_zero) / (ne * 9 * 32), 1e-12)
    # the fixed part, split between the row walk and the scan by a probe of one tap
    cp1 = {k: v for k, v in cp.items() if not k.startswith("_")}
    cp1.update(w=cp["w"][:, :, :1, :1], kernel=(1, 1), lo=(0, 0), hi=(0, 0))
    t_one = _best_time(lambda: _conv32_events(cp1, x0))
    conv_row = max((t_zero - t_one) / (48 * gpos * 8), 1e-12)
    conv_scan = max(t_one / (48 * (16 * 16 * 16 + gpos * 16)), 1e-12)
    cp64 = {k: v for k, v in cp.items() if k != "dtype" and not k.startswith("_")}
    M = conv_matrix(cp64, cache=False)
    Mt = cp64["_Mt"]
    ops = float(ne) * M.nnz / M.shape[0]
    spgemm_op = _best_time(lambda: (events_csr(xc) @ M).toarray()) / max(ops, 1.0)
    xt = np.ascontiguousarray(xc[:16].astype(np.float64).T)
    mpass_op = _best_time(lambda: Mt @ xt) / (16 * M.nnz)
    _COSTS = MachineCosts(mac=mac, ev_op=ev_op, ev_event=ev_event, ev_scan=ev_scan, conv_op=conv_op,
                          conv_row=conv_row, conv_scan=conv_scan,
                          spgemm_op=spgemm_op, mpass_op=mpass_op)
    return _COSTS


def step_blocks(mask: np.ndarray, block: int | None, event_cost, dense_cost):
    """Split the rows of ``mask`` (rows x inputs, bool) into blocks of ``block`` rows (one
    time step of a (T*B)-row batch; the whole batch when None) and choose per block:
    yields (r0, r1, use_events) with neighbouring blocks of the same choice merged.
    ``event_cost(events, rows)`` and ``dense_cost(rows)`` are the modelled seconds."""
    R = mask.shape[0]
    block = R if not block or block <= 0 else int(block)
    starts = list(range(0, R, block))
    if len(starts) == 1:
        ev = [event_cost(int(np.count_nonzero(mask)), R) < dense_cost(R)]
    else:
        # one count per block (count_nonzero over a whole bool block is a fast byte scan;
        # along an axis it sums bools one by one)
        counts = [int(np.count_nonzero(mask[r0:r0 + block])) for r0 in starts]
        ev = [event_cost(c, min(block, R - r0)) < dense_cost(min(block, R - r0))
              for c, r0 in zip(counts, starts)]
    first = 0
    for i in range(1, len(starts) + 1):
        if i == len(starts) or ev[i] != ev[i - 1]:
            yield starts[first], (R if i == len(starts) else starts[i]), ev[i - 1]
            first = i


# -- stateless ------------------------------------------------------------------------

def _identity_prepare(node, name, ctx):
    return {"shape": ctx.info.shapes[name]}


def _reshape_forward(p, x):
    return x.reshape((x.shape[0], *p["shape"]))


def _work_dtype(ctx) -> np.dtype:
    return np.dtype(np.float32 if ctx.precision == "float32" else np.float64)


def _dense_prepare(node, name, ctx):
    b = _f64(getattr(node, "bias", 0.0)).reshape(-1) if hasattr(node, "bias") else None
    dt = _work_dtype(ctx)
    # W^T in the work dtype in one pass (transpose and conversion together), kept across
    # calls per weight array like the conv matrices (the entry holds the array, so its id
    # is not reused; hashing the weights measured as slow as the copy)
    w = node.weight
    key = ("wt", id(w), dt.str) if isinstance(w, np.ndarray) else None
    hit = _CACHE.get(key) if key else None
    if hit is not None and hit[0] is w:
        wt = hit[1]
    else:
        wt = np.ascontiguousarray(np.asarray(w).T, dtype=dt)
        if key:
            wt.setflags(write=False)
            _cache_put(key, (w, wt))
    return {"wt": wt, "b": None if b is None else b.astype(dt), "dtype": dt}


# Overrides of the measured crossover (tests force a path with them): None = the cost
# model; a number = the event path below this fraction of nonzero inputs.
EVENT_MAX_DENSITY: float | None = None
_EVENT_MIN_SIZE = 1 << 12      # smaller products: BLAS, whatever the density


def _given_mask(p, x2):
    """The input's nonzero mask when the simulator passed it (the source neuron's spikes),
    else None; used once. p["_events"] then holds what the event loops read: the mask itself
    when the simulator also said the spikes are exactly 1.0 (``_binary``: then x2 ==
    mask as floats, and a bool costs a quarter of a float32 to scan), else x2."""
    m = p.pop("_mask", None)
    binary = p.pop("_binary", False)
    if m is None or m.size != x2.size:
        p["_events"] = x2
        return None
    m = m.reshape(x2.shape)
    p["_events"] = m if binary else x2
    return m


def _dense_forward(p, x):
    x2 = x.reshape(x.shape[0], -1)
    wt, dt = p["wt"], p["dtype"]
    R, K = x2.shape
    N = wt.shape[1]
    given = _given_mask(p, x2)
    xe = p.pop("_events")
    if x2.size < _EVENT_MIN_SIZE:
        y = as_dtype(x2, dt) @ wt
    else:
        mask = nonzero_mask(x2) if given is None else given
        if EVENT_MAX_DENSITY is not None:
            ev_cost = lambda e, rows: e / (rows * K) - EVENT_MAX_DENSITY  # noqa: E731
            de_cost = lambda rows: 0.0  # noqa: E731
        else:
            c = machine_costs()
            op, per, mac, scan = c.ev_op[dt.name], c.ev_event[dt.name], c.mac[dt.name], c.ev_scan[dt.name]
            ev_cost = lambda e, rows: e * (N * op + per) + rows * K * scan  # noqa: E731
            de_cost = lambda rows: rows * K * N * mac  # noqa: E731
        parts = list(step_blocks(mask, p.get("_block"), ev_cost, de_cost))
        if len(parts) == 1:
            r0, r1, ev = parts[0]
            y = event_matmul(xe, wt, mask) if ev else as_dtype(x2, dt) @ wt
        else:
            y = np.empty((R, N), dtype=dt)
            for r0, r1, ev in parts:
                y[r0:r1] = (event_matmul(xe[r0:r1], wt, mask[r0:r1]) if ev
                            else as_dtype(x2[r0:r1], dt) @ wt)
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
    return {"s": _f64(node.scale).astype(_work_dtype(ctx))}


def _conv_prepare(node, name, ctx):
    info = ctx.info
    in_shape = info.in_shapes[name]
    nd = len(in_shape) - 1
    kernel, stride, dil, lo, hi, out = conv_geometry(node, nd, tuple(in_shape[1:]))
    # float64: a float64 copy (conv_matrix and im2col sum in float64); float32: the file's
    # array as it is (converted once into the cached float32 weight matrix)
    w = _f64(node.weight) if ctx.precision != "float32" else np.asarray(node.weight)
    g = int(node.groups)
    b = _f64(node.bias).reshape(-1)
    return {"w": w, "g": g, "b": b, "kernel": kernel, "stride": stride, "dil": dil,
            "lo": lo, "hi": hi, "out": out, "nd": nd, "in_shape": in_shape, "dtype": _work_dtype(ctx),
            "_src": node.weight}  # the file's array: identifies the layer across runs


# A convolution is a sparse (inputs x outputs) matrix M with one entry per (input, output)
# pair joined by a nonzero weight: exact at borders, strides, padding, dilation and
# groups. Up to this many entries (12 bytes each, two copies) the conv runs on M:
# event by event below CONV_EVENT_MAX_DENSITY nonzero inputs (events x nonzero fan-out),
# above it as one compiled pass over M's entries for all T*B rows at once. Both sum
# every output over its inputs in input order (bit-identical to each other). Larger
# convolutions fall back to im2col + BLAS.
_CONV_MATRIX_MAX_NNZ = 1 << 22
# Override of the measured crossover between the two passes over M (tests force a path
# with it): None = the cost model, which may also pick the BLAS path; a number = the
# event path below this fraction of nonzero inputs, else the dense pass over M.
CONV_EVENT_MAX_DENSITY: float | None = None
_CONV_BLOCK_BYTES = 4 << 20


def conv_matrix(p, cache: bool = True) -> sp.csr_matrix | None:
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
    hit = _CACHE.get(key) if cache else None  # one read: another thread may evict meanwhile
    if hit is not None:  # the same layer simulated again (batch slices, datasets)
        p["_M"], p["_Mt"] = hit
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
    if cache:
        _cache_put(key, (M, p["_Mt"]))
    return M


def _conv_forward(p, x):
    if p["dtype"] == np.float32:
        return _conv_forward32(p, x)
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    mask = _given_mask(p, x2)
    mask = nonzero_mask(x2) if mask is None else mask
    M = conv_matrix(p)
    if M is None:
        return conv_forward_im2col(p, x)
    cout = p["w"].shape[0]
    density = np.count_nonzero(mask) / max(x2.size, 1)
    if CONV_EVENT_MAX_DENSITY is not None:
        use_events = density < CONV_EVENT_MAX_DENSITY
    else:
        c = machine_costs()
        dense_s = n * _dense_conv_macs(p) * c.mac["float64"] * 1.5  # im2col copies first
        event_s = density * n * M.nnz * c.spgemm_op
        pass_s = n * M.nnz * c.mpass_op
        if dense_s < min(event_s, pass_s):
            return conv_forward_im2col(p, x)
        use_events = event_s < pass_s
    if use_events:
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


def _dense_conv_macs(p) -> int:
    """Multiply-adds of one sample through the dense (BLAS) conv path."""
    w = p["w"]
    return int(np.prod(p["out"])) * int(np.prod(w.shape[1:])) * w.shape[0]


# -- float32 convolution: events through the weight rows, or BLAS -------------------------
#
# Event path ("phase grids"): output o (per spatial dim) reads the padded input at
# u = o*stride + tap*dil. Split the padded input into stride phases phi = u mod stride,
# each a channels-last grid G_phi[v] = padded[v*stride + phi] (all phases of one common
# grid shape); then tap t reads phase (t*dil) mod stride at v = o + (t*dil) // stride, a
# constant offset on the flattened grid. Each phase's events (its nonzeros, one CSR row
# per grid position) go through each of its taps by one compiled CSR x dense pass that
# reads the CSR from an offset row pointer and ADDS the tap's (C_in x C_out) weight rows
# into the output grid in place (scipy's csr_matvecs: y += A x): per event and tap, C_out
# contiguous multiply-adds; nothing is built per tap. Outputs on the grid's margins are
# computed and dropped. Per output it sums taps in phase order, then input channels
# ascending, in float32.
# Dense path (_conv32_dense): stride 1, groups 1: one GEMM per tap over the padded grid,
# accumulated in place (no im2col copy); otherwise im2col + one GEMM per group; float32.

try:  # y += A @ X for CSR A: the loop scipy's CSR x dense product runs
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - private API moved: public product + add
    _csr_matvecs = None


def _csr_add_product(indptr, indices, data, n_col, w, y):
    """y (rows x C_out) += A @ w, A the CSR rows given by ``indptr`` (absolute offsets)."""
    rows = indptr.size - 1
    k = jit.kernels()
    if k is not None:
        k.csr_add(indptr, indices, data, w, y)
        return
    if _csr_matvecs is not None:
        _csr_matvecs(rows, n_col, w.shape[1], indptr, indices, data, w.reshape(-1), y.reshape(-1))
        return
    lo, hi = int(indptr[0]), int(indptr[-1])
    a = sp.csr_matrix((data[lo:hi], indices[lo:hi], indptr - lo), shape=(rows, n_col))
    y += a @ w


def _conv32_wmat(p) -> np.ndarray:
    """(taps x C_in, C_out) float32: row tap*C_in + c holds the weights from input channel
    c through that tap (zero outside c's group). Cached across runs like conv_matrix."""
    if "_W32" not in p:
        key = _layer_key(p, "w32")
        hit = _CACHE.get(key) if key else None
        if hit is not None and hit[0] is p["_src"]:
            p["_W32"] = hit[1]
            return p["_W32"]
        w, g = p["w"], p["g"]
        cout, cg = w.shape[0], w.shape[1]
        cin, og = cg * g, cout // g
        taps = int(np.prod(p["kernel"]))
        wm = np.zeros((taps, cin, cout), dtype=np.float32)
        wk = w.reshape(cout, cg, taps)
        for gi in range(g):
            wm[:, gi * cg:(gi + 1) * cg, gi * og:(gi + 1) * og] = \
                wk[gi * og:(gi + 1) * og].transpose(2, 1, 0)
        p["_W32"] = wm.reshape(taps * cin, cout)
        if key:
            _cache_put(key, (p.get("_src"), p["_W32"]))
    return p["_W32"]


def _layer_key(p, what):
    """Cache key of a conv layer across runs (batch chunks, dataset loops): the identity of
    the graph's weight array (held by the cache entry, so the id is not reused), the
    geometry and ``what``. None when the params have no source array (probes)."""
    src = p.get("_src")
    if src is None:
        return None
    return (what, id(src), tuple(p["in_shape"]), tuple(p["kernel"]), tuple(p["stride"]),
            tuple(p["dil"]), tuple(p["lo"]), tuple(p["out"]), int(p["g"]))


def _phase_plan(p):
    """(grid shape, {phase: [(tap index, flat offset), ...]}) of the phase-grid event path."""
    if "_phases" in p:
        return p["_phases"]
    sp_in = tuple(int(s) for s in p["in_shape"][1:])
    out = tuple(int(o) for o in p["out"])
    grid = []
    for s_, o, k, st, d, lo, hi in zip(sp_in, out, p["kernel"], p["stride"], p["dil"], p["lo"], p["hi"]):
        grid.append(max(-(-(s_ + lo + hi) // st), o + ((k - 1) * d) // st))
    phases: dict = {}
    for ti, tap in enumerate(itertools.product(*[range(k) for k in p["kernel"]])):
        ph = tuple((t * d) % st for t, d, st in zip(tap, p["dil"], p["stride"]))
        off, mul = 0, 1
        for dim in reversed(range(len(grid))):
            off += ((tap[dim] * p["dil"][dim]) // p["stride"][dim]) * mul
            mul *= grid[dim]
        phases.setdefault(ph, []).append((ti, off))
    p["_phases"] = (tuple(grid), phases)
    return p["_phases"]


_EVENT_TILE_BYTES = 256 << 10  # output tile the taps of the event path visit together
_SCRATCH_MAX_BYTES = 256 << 20
_scratch_local = threading.local()


def _scratch(shape, dtype, slot: str = "work", zero: bool = True) -> np.ndarray:
    """A work array from a per-thread buffer (one per ``slot``) reused across calls, zeroed
    when ``zero``: a fresh large array is mapped page by page on first touch, which costs
    more than the loop that fills it (measured 4x on this VM for the event path, 2x for an
    im2col copy); reused pages are only written. The array is valid until the next call
    with the same slot in the same thread."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n > _SCRATCH_MAX_BYTES:
        return np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
    bufs = getattr(_scratch_local, "bufs", None)
    if bufs is None:
        bufs = _scratch_local.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < n:
        buf = bufs[slot] = np.empty(max(n, 1 << 20), dtype=np.uint8)
    a = buf[:n].view(dtype).reshape(shape)
    if zero:
        a.fill(0)
    return a


def _conv32_events(p, x2, mask=None) -> np.ndarray:
    """Phase-grid event path: (rows x out positions, C_out) float32, channels last, no bias."""
    n = x2.shape[0]
    in_shape = tuple(int(s) for s in p["in_shape"])
    cin, sp_in = in_shape[0], in_shape[1:]
    out = tuple(int(o) for o in p["out"])
    cout = p["w"].shape[0]
    wm = _conv32_wmat(p)
    grid, phases = _phase_plan(p)
    k = jit.kernels()
    taps = int(np.prod(p["kernel"]))
    if k is not None and len(sp_in) <= 2:
        # compiled, straight from the input (no event lists, no grid): the same sums in the
        # same order as the phase-grid loops below
        if "_direct" not in p:
            def two(t, v):  # a 1-D conv as a 2-D one of height 1 (stride, dilation 1, no padding)
                return (v,) * (2 - len(t)) + tuple(int(a) for a in t)
            phs = np.array([two(ph, 0) for ph in phases], dtype=np.int64).reshape(-1, 2)
            geo = np.array(two(p["stride"], 1) + two(p["dil"], 1) + two(p["lo"], 0) + (two(p["kernel"], 1)[1],),
                           dtype=np.int64)
            p["_direct"] = (np.ascontiguousarray(wm.reshape(taps, cin, cout).transpose(1, 0, 2)), geo, phs)
        wp, geo, phs = p["_direct"]
        hw = (1,) * (2 - len(sp_in)) + sp_in
        x4 = np.ascontiguousarray(x2 if x2.dtype in (np.bool_, np.float32) else x2.astype(np.float32)).reshape(
            n, cin, *hw)
        oshape = (1,) * (2 - len(out)) + out
        z = _scratch((n, *oshape, cout), np.float32)
        k.conv_direct(x4, wp, geo, phs, z)
        return z.reshape(n, -1, cout)
    npos = int(np.prod(grid))
    nrow = n * npos
    # the events in input order (sample, channel, position), found once
    idx = np.flatnonzero(nonzero_mask(x2) if mask is None else mask)
    vals = x2.reshape(-1)[idx].astype(np.float32)
    r, rem = np.divmod(idx, int(np.prod(in_shape)))
    c, pos = np.divmod(rem, int(np.prod(sp_in)))
    coords = []
    for d in reversed(range(len(sp_in))):
        pos, q = np.divmod(pos, sp_in[d])
        coords.append(q)
    coords = coords[::-1]
    c32 = c.astype(np.int32)
    z = _scratch((nrow, cout), np.float32)  # read out below, before the next call
    rows = max(64, _EVENT_TILE_BYTES // (4 * cout))
    for ph, taps in phases.items():
        # grid position v holds padded index v*stride + phase = input index v*stride + phase - lo
        keep = None
        grow = r
        for q, lo, st, f, gd in zip(coords, p["lo"], p["stride"], ph, grid):
            u = q + (lo - f)
            if st == 1:
                v = u
                k = u >= 0
            else:
                v, m = np.divmod(u, st)
                k = (u >= 0) & (m == 0)
            keep = k if keep is None else keep & k
            grow = grow * gd + v
        if not keep.all():
            grow, cc, vv = grow[keep], c32[keep], vals[keep]
        else:
            cc, vv = c32, vals
        # one CSR row per grid position, channels ascending within a row (a linear,
        # stable counting sort of events already in channel-major order)
        ev = sp.coo_matrix((vv, (grow, cc)), shape=(nrow, cin)).tocsr()
        ip, ind, dat = ev.indptr, ev.indices, ev.data
        for r0 in range(0, nrow, rows):  # a tile of the output grid stays in cache
            r1 = min(r0 + rows, nrow)
            for ti, off in taps:
                e = min(r1, nrow - off)
                if e > r0:
                    _csr_add_product(ip[r0 + off:e + off + 1], ind, dat, cin,
                                     wm[ti * cin:(ti + 1) * cin], z[r0:e])
    zg = z.reshape(n, *grid, cout)[(slice(None),) + tuple(slice(0, o) for o in out)]
    return zg.reshape(n, -1, cout)


_GRID_BYTES = 32 << 20  # chunk the padded-grid GEMM so its buffers stay below this
_GRID_TILE_BYTES = 256 << 10  # rows of input and output one tile's GEMMs share


def _grid_taps(p):
    """Stride 1, groups 1: (padded spatial shape, flat offset of every tap)."""
    sp_in = tuple(int(s) for s in p["in_shape"][1:])
    padded = tuple(s + a + b for s, a, b in zip(sp_in, p["lo"], p["hi"]))
    offs = []
    for tap in itertools.product(*[range(k) for k in p["kernel"]]):
        off, mul = 0, 1
        for d in reversed(range(len(padded))):
            off += tap[d] * p["dil"][d] * mul
            mul *= padded[d]
        offs.append(off)
    return padded, offs


def _conv32_grid(p, x) -> np.ndarray:
    """Dense stride-1 conv (groups 1) without im2col: channels last on the padded grid, a
    tap is a constant offset into the flattened grid, so each tap is one GEMM over a
    contiguous slice, accumulated in place by sgemm(beta=1); the grid's margin outputs are
    computed and dropped. (rows x out positions, C_out) float32, no bias."""
    from scipy.linalg import blas
    n = x.shape[0]
    cin = int(p["in_shape"][0])
    cout = p["w"].shape[0]
    out = tuple(int(o) for o in p["out"])
    padded, offs = _grid_taps(p)
    npad = int(np.prod(padded))
    wm = _conv32_wmat(p)
    if "_grid_w" not in p:  # per tap (C_out, C_in) in Fortran order: BLAS reads it in place
        p["_grid_w"] = [np.asfortranarray(wm[i * cin:(i + 1) * cin].T) for i in range(len(offs))]
    y = np.empty((n, *out, cout), dtype=np.float32)
    chunk = max(1, _GRID_BYTES // max(npad * (cin + cout) * 4, 1))
    tile = max(256, _GRID_TILE_BYTES // (4 * (cin + cout)))
    maxoff = max(offs)
    inner = (slice(None),) + tuple(slice(a, a + s) for a, s in zip(p["lo"], p["in_shape"][1:]))
    for s0 in range(0, n, chunk):
        xs = x[s0:s0 + chunk]
        m = xs.shape[0]
        xp = _scratch((m, *padded, cin), np.float32)
        xp[inner] = np.moveaxis(xs, 1, -1)
        flat = xp.reshape(m * npad, cin)
        L = m * npad - maxoff
        z = np.zeros((m * npad, cout), dtype=np.float32)
        for r0 in range(0, L, tile):  # a tile of outputs stays in cache through the taps
            r1 = min(L, r0 + tile)
            zt = z[r0:r1].T  # (C_out, rows), Fortran order: sgemm accumulates into it in place
            for off, wt in zip(offs, p["_grid_w"]):
                r = blas.sgemm(1.0, wt, flat[r0 + off:r1 + off].T, beta=1.0, c=zt, overwrite_c=1)
                if not np.shares_memory(r, z):  # the wrapper copied: keep the sum
                    zt[...] = r
        y[s0:s0 + m] = z.reshape(m, *padded, cout)[(slice(None),) + tuple(slice(0, o) for o in out)]
    return y.reshape(n, -1, cout)


def _conv32_dense(p, x) -> np.ndarray:
    """The float32 dense path: (rows x out positions, C_out), channels last, no bias. The
    padded-grid GEMMs where the grid's margins cost little, else im2col + GEMM."""
    n = x.shape[0]
    opos = int(np.prod(p["out"]))
    if p["g"] == 1 and all(st == 1 for st in p["stride"]):
        padded, _ = _grid_taps(p)
        if np.prod(padded) <= 1.5 * opos:
            return _conv32_grid(p, x)
    return np.moveaxis(conv_forward_im2col(p, x, bias=False), 1, -1).reshape(n, opos, -1)


def _conv_forward32(p, x):
    """float32 conv: per step block, the cheaper of the event path and the dense path
    (measured costs, see machine_costs)."""
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    mask = _given_mask(p, x2)
    xe = p.pop("_events")  # what the event path reads: x2, or the mask of unit spikes
    mask = nonzero_mask(x2) if mask is None else mask
    cout = p["w"].shape[0]
    taps = int(np.prod(p["kernel"]))
    opos = int(np.prod(p["out"]))
    c = machine_costs()
    grid, phases = _phase_plan(p)
    gpos = int(np.prod(grid))
    cin = int(p["in_shape"][0])
    in_size = int(np.prod(p["in_shape"]))
    dense_macs = opos * int(np.prod(p["w"].shape[1:])) * cout
    fixed_row = gpos * taps * c.conv_row + (in_size + gpos * cin) * c.conv_scan
    op_s, dense_row_s = c.conv_op, dense_macs * c.mac["float32"] * 1.5  # im2col copies first
    block = int(p.get("_block") or n)
    key = _layer_key(p, ("cost32", block)) if CONV_EVENT_MAX_DENSITY is None else None
    learned = _CACHE.get(key) if key else None
    if learned is not None and learned[0] is p["_src"]:
        op_s, dense_row_s = learned[1]
    elif key and n >= block:
        # this layer's own costs, measured once per process on its busiest step block:
        # both paths run on the same rows, best of 3 (results discarded; the plan recomputes)
        import time
        nb = n // block
        busiest = int(np.argmax(np.count_nonzero(mask[:nb * block].reshape(nb, -1), axis=1)))
        sl = slice(busiest * block, (busiest + 1) * block)
        t_ev = t_de = float("inf")
        for _ in range(3):  # interleaved, best of 3: a shared CPU's preemption hits one run
            t0 = time.perf_counter()
            _conv32_events(p, x2[sl], mask[sl])
            t1 = time.perf_counter()
            _conv32_dense(p, x[sl])
            t2 = time.perf_counter()
            t_ev, t_de = min(t_ev, t1 - t0), min(t_de, t2 - t1)
        e0 = int(np.count_nonzero(mask[sl]))
        op_s = max((t_ev - block * fixed_row) / max(e0 * taps * cout, 1), 1e-13)
        dense_row_s = t_de / block
        _cache_put(key, (p["_src"], (op_s, dense_row_s)))
    ev_cost = lambda e, rows: e * taps * cout * op_s + rows * fixed_row  # noqa: E731
    de_cost = lambda rows: rows * dense_row_s  # noqa: E731
    if CONV_EVENT_MAX_DENSITY is not None:  # forced crossover (tests)
        ev_cost = lambda e, rows: e / (rows * in_size) - CONV_EVENT_MAX_DENSITY  # noqa: E731
        de_cost = lambda rows: 0.0  # noqa: E731
    k = jit.kernels()
    b32 = p["b"].astype(np.float32)
    if k is not None:  # each block's channels-last sums + bias, written channels first in one pass
        out = np.empty((n, cout, opos), dtype=np.float32)
        for r0, r1, ev in step_blocks(mask, p.get("_block"), ev_cost, de_cost):
            z = _conv32_events(p, xe[r0:r1], mask[r0:r1]) if ev else _conv32_dense(p, x[r0:r1])
            k.nchw_bias(np.ascontiguousarray(z), b32, out[r0:r1])
        return out.reshape(n, cout, *p["out"])
    y = np.empty((n, opos, cout), dtype=np.float32)
    for r0, r1, ev in step_blocks(mask, p.get("_block"), ev_cost, de_cost):
        if ev:
            y[r0:r1] = _conv32_events(p, xe[r0:r1], mask[r0:r1])
        else:
            y[r0:r1] = _conv32_dense(p, x[r0:r1])
    y += b32
    return np.ascontiguousarray(np.moveaxis(y, 2, 1)).reshape(n, cout, *p["out"])


def conv_forward_im2col(p, x, bias: bool = True):
    """im2col in channels-last order (the gather copies contiguous channel runs), then one
    matmul per group, in chunks of the batch so the im2col buffer stays bounded. In the
    params' dtype (float64, or float32 under precision 'float32')."""
    n = x.shape[0]
    w, g, nd = p["w"], p["g"], p["nd"]
    cout, cg = w.shape[0], w.shape[1]
    og = cout // g
    ksz = int(np.prod(p["kernel"]))
    opos = int(np.prod(p["out"]))
    dt = p.get("dtype", np.dtype(np.float64))
    wmats = p.get("_wmats")
    if (wmats is None or wmats[0].dtype != dt) and g == 1 and dt == np.float32:
        wmats = p["_wmats"] = [_conv32_wmat(p)]  # the same (taps x C_in, C_out) matrix, cached
    if wmats is None or wmats[0].dtype != dt:  # (*k, cg, og) per group, flattened to (k*cg, og)
        wmats = [np.ascontiguousarray(np.moveaxis(w[gi * og:(gi + 1) * og], 0, -1)
                                      .transpose(*range(1, nd + 1), 0, nd + 1)
                                      .reshape(ksz * cg, og), dtype=dt) for gi in range(g)]
        p["_wmats"] = wmats
    out = np.empty((n, *p["out"], cout), dtype=dt)
    chunk = max(1, _IM2COL_BYTES // max(opos * cg * ksz * dt.itemsize, 1))
    pad = [(0, 0)] + [(a, b) for a, b in zip(p["lo"], p["hi"])] + [(0, 0)]
    taps = list(itertools.product(*[range(k) for k in p["kernel"]]))
    for s0 in range(0, n, chunk):
        xc = np.moveaxis(as_dtype(x[s0:s0 + chunk], dt), 1, -1)  # channels last
        if any(a or b for a, b in pad):  # zero borders, the interior copied (np.pad is slower)
            xp = _scratch(tuple(s + a + b for s, (a, b) in zip(xc.shape, pad)), dt, "pad")
            xp[tuple(slice(a, a + s) for s, (a, _) in zip(xc.shape, pad))] = xc
            xc = xp
        m = xc.shape[0]
        cols = _scratch((m, *p["out"], ksz, cg), dt, "cols", zero=False)  # every entry written below
        for gi in range(g):
            for ti, tap in enumerate(taps):
                sl = (slice(None),) + tuple(
                    slice(k * d, k * d + (o - 1) * st + 1, st)
                    for k, d, o, st in zip(tap, p["dil"], p["out"], p["stride"])) \
                    + (slice(gi * cg, (gi + 1) * cg),)
                cols[..., ti, :] = xc[sl]
            out[s0:s0 + m, ..., gi * og:(gi + 1) * og] = (
                cols.reshape(m * opos, ksz * cg) @ wmats[gi]).reshape(m, *p["out"], og)
    if bias:
        out += p["b"].astype(dt)
    return np.moveaxis(out, -1, 1)


def _pool_prepare(node, name, ctx):
    in_shape = ctx.info.in_shapes[name]
    kernel, stride, dil, lo, hi, out = conv_geometry(node, 2, tuple(in_shape[1:]))
    scale = 1.0 / float(np.prod(kernel)) if type(node).__name__ == "AvgPool2d" else 1.0
    return {"kernel": kernel, "stride": stride, "dil": dil, "lo": lo, "hi": hi, "out": out,
            "nd": 2, "scale": scale, "dtype": _work_dtype(ctx)}


def _pool_forward(p, x):
    pad = [(0, 0), (0, 0)] + [(a, b) for a, b in zip(p["lo"], p["hi"])]
    if any(a or b for a, b in pad):
        x = np.pad(x, pad)
    y = np.zeros((x.shape[0], x.shape[1], *p["out"]), dtype=p.get("dtype", np.float64))
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
    p["out_dtype"] = _work_dtype(ctx)  # scan outputs and membrane (float32 under precision 'float32')
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


def _per_neuron(shape, dtype, *params):
    """Each parameter as a contiguous (n,) vector over the neuron shape (no batch axis), in
    ``dtype``; None when one varies over the batch (the compiled scan takes per-neuron ones)."""
    out = []
    for a in params:
        a = np.asarray(a, dtype=dtype)
        if a.ndim > len(shape):
            return None
        try:
            out.append(np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1))
        except ValueError:
            return None
    return out


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
    # the drive, written into the output buffer (step i reads drive[i] before writing out[i]);
    # under precision 'float32' the buffer (drive and outputs) and the membrane are float32
    vdt = np.dtype(p.get("out_dtype", np.float64))  # precision 'float32': membrane and params too
    cast = (lambda a: a) if vdt == np.float64 else (lambda a: np.asarray(a, dtype=vdt))  # noqa: E731
    out = np.empty(inp.shape, dtype=vdt)
    spiking = t in ("IF", "LIF")
    # the compiled loop (hardware/jit.py neuron_scan) runs a same-step IF / LIF whose
    # parameters are per neuron: decided first, because it alone may read the input as drive
    k = jit.kernels() if spiking and not p["next_step"] and T else None
    vecs = None if k is None else _per_neuron(
        tuple(inp.shape[2:]), vdt, p["a"] if t == "LIF" else 1.0, p["thr"], p["v_reset"], p["spike_amplitude"])
    drive = out
    if t in ("IF", "I"):
        if vecs is not None and inp.dtype == vdt and np.all(np.asarray(p["if_scale"]) == 1):
            drive = inp  # 1 * I is I exactly: the compiled scan reads the input itself
        else:
            np.multiply(cast(p["if_scale"]), inp, out=out)  # v = v + if_scale * I
        a = None
    else:
        np.multiply(cast(p["r"]), inp, out=out)         # v = a*v + c*(v_leak + r*I)
        np.add(cast(p["v_leak"]), out, out=out)
        np.multiply(cast(p["c"]), out, out=out)
        a = cast(p["a"])
    v = np.array(st["v"], dtype=vdt)  # own copy: updated in place
    if spiking:
        thr = np.broadcast_to(cast(p["thr"]), v.shape)
        # the spike masks of every step, kept: out != 0 exactly where s when the amplitude is
        # nonzero, so counts and the next layer's events need not scan the outputs again
        smask = np.empty(out.shape, dtype=bool)
        sub_buf = np.empty(v.shape, dtype=vdt)
        ge = p["threshold_test"] == "ge"
        subtract = p["reset"] == "subtract"
        v_reset = np.broadcast_to(cast(p["v_reset"]), v.shape)
        amp = p["spike_amplitude"]
        pending = st.get("pending") if p["next_step"] else None
        if p["next_step"]:
            pending = None if pending is None else np.array(pending, dtype=np.float64)
            pend_buf = np.empty(v.shape, dtype=np.float64)
        if vecs is not None:  # the loop below, compiled
            B, n = v.shape[0], int(np.prod(v.shape[1:]))
            if drive is inp and inp.strides[0] == 0:  # the same input every step (direct
                d3 = np.ascontiguousarray(inp[:1]).reshape(1, B, n)  # encoding): one step of it
            else:
                d3 = np.ascontiguousarray(drive).reshape(T, B, n)
            k.neuron_scan(d3, out.reshape(T, B, n), v.reshape(B, n), vecs[0], t == "LIF", vecs[1], ge,
                          subtract, vecs[2], vecs[3], smask.reshape(T, B, n))
            T = 0  # done: skip the loop
    for i in range(T):
        if a is not None:
            np.multiply(a, v, out=v)
        np.add(v, out[i], out=v)
        if not spiking:
            out[i] = v
            continue
        if pending is not None:
            np.subtract(v, pending, out=v)
        s = smask[i]
        (np.greater_equal if ge else np.greater)(v, thr, out=s)
        if subtract:
            if p["next_step"]:  # snnTorch: theta is subtracted inside the next update
                pend_buf[...] = 0.0
                np.copyto(pend_buf, thr, where=s)
                pending = pend_buf
            else:  # v - where(s, theta, 0): theta*s is theta or exactly 0 (theta finite), and
                # two plain passes are faster than one masked one
                np.multiply(s, thr, out=sub_buf)
                np.subtract(v, sub_buf, out=v)
        else:
            np.copyto(v, v_reset, where=s)              # where(s, v_reset, v)
        np.multiply(s, amp, out=out[i])
    st = {**st, "v": v}
    if spiking and p["next_step"]:
        st["pending"] = None if pending is None else pending.copy()
    if spiking and np.all(np.asarray(amp) != 0):
        st["_spike_mask"] = smask  # (T, B, *shape) bool == (out != 0); not part of the state
        st["_spike_unit"] = bool(np.all(np.asarray(amp) == 1))  # out == smask as floats
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
