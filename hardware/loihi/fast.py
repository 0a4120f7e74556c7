"""The fast integer model of the Loihi plan: bit-exact with ``reference.run_qplan`` (and so
with Lava's fixed_pt models), layer by layer over all steps instead of step by step.

The plan is feed-forward (``plan.lower`` refuses cycles) and every connection is aligned
in time, so each population's input over all S steps and B samples depends only on its
sources' spikes over those steps. Per population, in topological order:

1. the synaptic sums of every incoming connection for all (S x B) rows at once, as ONE
   matrix product. The operands are integers (spikes 0/1, input integers up to 2^23,
   8-bit effective weights), so a float product is exact whenever every partial sum
   stays below the float's integer range: ``bound = max_i sum_j |W_ij| * max|x_j|``
   below 2^24 -> float32 BLAS, below 2^53 -> float64 BLAS (order of summation then does
   not matter); otherwise int64 (numpy's exact integer product, no BLAS). The product is
   one dense BLAS call (an Affine), one per block of rows reading one input window (a
   convolution: ``row_blocks``), scipy's CSR x dense over the input events when the
   input is sparser than a crossover measured on this machine (``event_factor``), or a
   CSR weight matrix for large sparse connections without blocks. A direct-encoded input
   (the same at every step) is summed once. Each connection's sum is then wrapped to
   int32, shifted by its weight exponent and wrapped again, as Lava's Dense/Sparse do
   (DelayDense: shift before the wrap);
2. the neuron scan over S steps, vectorised over (B, n), with Lava's arithmetic:
   u = fold24(wrap32(decay(u, du) + wrap32(a_in << 6))), v = clip(wrap32(wrap32(decay(v,
   dv) + u) + bias)), spike v > vth << 6, v = 0 where it spiked. Where u is replaced
   every step (du = 4095: IF and the folded LIF) u needs no scan and is computed for all
   steps at once; where dv = 0 the v decay is the identity and is skipped.

State arithmetic is int32 where Lava wraps at 32 bits (numpy's int32 wraps the same way),
with int64 temporaries for the decays: the same wrap points as the reference, which is the
test oracle (tests/hardware/test_loihi_fast.py).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from spikebridge.hardware import jit
from spikebridge.hardware.loihi.fixedpoint import (DECAY_UNITY, UV_MAX, effective_bias, lava_effective_weights,
                                                   sign_mode)
from spikebridge.hardware.loihi.plan import BIAS_SOURCE
from spikebridge.hardware.loihi.reference import uses_dense, wrap32

F32_EXACT = 1 << 24   # every integer below this magnitude is a float32
F64_EXACT = 1 << 53   # ... a float64
# A connection with more weights than this that has no cheaper row blocks is kept as CSR.
DENSE_WEIGHTS_MAX = 4_000_000
# What one more block costs beyond its multiply-adds, in multiply-adds per input row (~20 us
# of call overhead at ~2e10 MAC/s over a 256-row batch); row blocks are used when they
# cost less than 0.7x the dense product.
BLOCK_OVERHEAD = 1500
# A row joins a block that already reads this fraction of its columns: a convolution's rows at
# one position differ only where an 8-bit weight rounded to 0; neighbouring positions of a 3x3
# window overlap by at most 6/9.
MERGE_OVERLAP = 0.75


_THREADPOOLS: list = []
_EVENT_FACTOR: list = []


def event_factor() -> tuple[float, float]:
    """(cost of one event through one weight, cost of looking at one input for events), both
    in multiply-adds of a float32 BLAS product: the compiled integer loop of ``event_sums``
    (scipy's CSR x dense product without it, whose scan cost is counted in the first), measured
    once per process on this machine (~10 ms). A product of rows x (R, K) with N outputs goes
    the event way when ``R*K*scan + events*N*per_event < R*K*N`` (``use_events``)."""
    if not _EVENT_FACTOR:
        rng = np.random.default_rng(0)  # a layer of the size the crossover matters for
        xb = rng.random((128, 784)) < 0.1
        x = xb.astype(np.float32)
        w = rng.integers(-128, 128, size=(784, 512)).astype(np.float32)
        wi = w.astype(np.int16)

        def best(f):
            t = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                f()
                t = min(t, time.perf_counter() - t0)
            return t
        with blas_threads(1):
            per_mac = max(best(lambda: x @ w) / x.size / w.shape[1], 1e-15)
            if jit.kernels() is not None:
                x0 = np.zeros_like(xb)
                event_sums(xb, wi)  # compiled (or loaded) before it is timed
                t_scan = best(lambda: event_sums(x0, wi))
                per_event = max(best(lambda: event_sums(xb, wi)) - t_scan, 0.0)
            else:
                t_scan, per_event = 0.0, best(lambda: sp.csr_matrix(x) @ w)
            per_event /= np.count_nonzero(x) * w.shape[1]
        _EVENT_FACTOR.append((max(per_event / per_mac, 1.0), t_scan / x.size / per_mac))
    return _EVENT_FACTOR[0]


def use_events(x: np.ndarray, n_out: int) -> bool:
    """Whether the event loop is cheaper than a BLAS product for rows x and n_out outputs."""
    if not x.size:
        return False
    per_event, scan = event_factor()
    return x.size * scan + np.count_nonzero(x) * n_out * per_event < x.size * n_out


def event_sums(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w for integer (or bool) rows x and integer weights w, accumulated in int32 event by
    event (hardware/jit.py): each nonzero x[r, c] adds x[r, c] * w[c] to row r. Integer sums
    do not depend on their order; exact while no partial sum leaves int32 (the caller's
    bound), and wrapping like Lava's int32 accumulation otherwise."""
    k = jit.kernels()
    y = np.zeros((x.shape[0], w.shape[1]), dtype=np.int32)
    if x.dtype == np.bool_:
        k.mask_add(x, w, y)
    else:
        k.value_add(x if x.dtype == np.int32 else x.astype(np.int32), w, y)
    return y


@contextlib.contextmanager
def blas_threads(n: int):
    """Limit BLAS to ``n`` threads inside the block. The products here are small (a batch of
    a few hundred rows): OpenBLAS' threads cost more than they give, and on shared cores they
    thrash (measured 7x slower with 2 threads on a loaded 2-core machine)."""
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    with _THREADPOOLS[0].limit(limits=n, user_api="blas"):
        yield


def _wrap32(a: np.ndarray) -> np.ndarray:
    """int64 -> its int32 wrap-around value, as int64 (a cast: cheaper than ``wrap32``'s modulo)."""
    return a.astype(np.int32).astype(np.int64)


def row_blocks(csr: sp.csr_matrix, max_supports: int = 4096) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Rows grouped by the columns they read, as (rows, cols) index pairs: a row joins the group
    whose columns contain most of its support, if that is at least MERGE_OVERLAP of it (largest
    supports first; the group's columns grow to the union, the missing weights are zeros). A
    convolution's output neurons at one position read one input window: one group per
    position, each a small dense block, so the product costs the true multiply-adds instead of
    the dense matrix's. None when there are more than ``max_supports`` distinct supports."""
    csr = csr.copy()
    csr.sort_indices()
    by_support: dict[bytes, list[int]] = {}
    for i in range(csr.shape[0]):
        by_support.setdefault(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tobytes(), []).append(i)
    if len(by_support) > max_supports or len(by_support) * csr.shape[1] > 64_000_000:  # the masks below
        return None
    supports = sorted(((np.frombuffer(k, dtype=csr.indices.dtype), r) for k, r in by_support.items()),
                      key=lambda t: -t[0].size)
    masks = np.zeros((len(supports), csr.shape[1]), dtype=bool)
    members: list[list[int]] = []
    for cols, rows in supports:
        if members and cols.size:
            overlap = masks[:len(members), cols].sum(axis=1)
            g = int(np.argmax(overlap))
            if overlap[g] >= MERGE_OVERLAP * cols.size:  # inside, or nearly (weights rounded to 0)
                masks[g, cols] = True
                members[g] += rows
                continue
        elif members:  # an empty row joins any group
            members[0] += rows
            continue
        masks[len(members), cols] = True
        members.append(list(rows))
    return [(np.asarray(sorted(r), dtype=np.int64), np.flatnonzero(masks[g])) for g, r in enumerate(members)]


class Synapse:
    """One connection's effective integer weights, ready for the products of step 1: one
    dense block (an Affine), blocks of rows that read the same columns (a convolution:
    see ``row_blocks``), or, for large sparse matrices without such blocks, scipy CSR."""

    def __init__(self, conn: dict, arrays: dict, wrap_first: bool):
        key = conn["terms"][0][0]
        rows, cols = (int(s) for s in arrays[key + "_shape"])
        r = np.asarray(arrays[key + "_rows"], np.int64)
        c = np.asarray(arrays[key + "_cols"], np.int64)
        vals = np.asarray(arrays[key + "_vals"]).astype(np.int64)
        csr = sp.coo_matrix((vals, (r, c)), shape=(rows, cols)).tocsr()  # sums duplicates (np.add.at)
        csr.sum_duplicates()
        # Lava's clip and drop of the lowest bit act on each summed weight and map 0 to 0; the
        # sign mode of the whole matrix (zeros included) is that of its nonzero values
        mode = conn.get("sign_mode") or sign_mode(csr.data)
        csr.data = lava_effective_weights(csr.data, mode)
        csr.eliminate_zeros()
        self.source, self.id = conn["source"], conn["id"]
        self.wexp = int(conn.get("weight_exp", 0))
        self.wrap_first = wrap_first
        self.rows, self.cols = rows, cols
        self.row_abs = np.asarray(abs(csr).sum(axis=1)).reshape(-1).astype(np.float64)
        dense_cost = rows * cols
        blocks = row_blocks(csr) if csr.nnz < 0.5 * dense_cost else None
        if blocks is not None and (sum(len(b[0]) * len(b[1]) for b in blocks) + BLOCK_OVERHEAD * len(blocks)
                                   > 0.7 * dense_cost):
            blocks = None
        if blocks is None and dense_cost <= DENSE_WEIGHTS_MAX:
            blocks = [(np.arange(rows), np.arange(cols))]
        self.csr = csr if blocks is None else None
        self.whole = blocks is not None and len(blocks) == 1 and len(blocks[0][0]) == rows \
            and len(blocks[0][1]) == cols
        # whole: W^T (cols, rows) for x @ W^T; blocks: W[rows_b][:, cols_b] for W_b @ x^T[cols_b]
        self.blocks = None if blocks is None else [
            (rb, cb, np.ascontiguousarray(csr.toarray().T if self.whole else csr[rb][:, cb].toarray()))
            for rb, cb in blocks]
        self._cast: dict = {}
        # the effective weights as the narrowest integers for the event loop (8-bit mantissas
        # times 2^k: int16 unless a weight exponent made them wider)
        self._wint = None
        if self.whole:
            w = self.blocks[0][2]
            self._wint = w.astype(np.int16 if np.abs(w).max(initial=0) < 2 ** 15 else np.int32)

    def _weights(self, dtype) -> list:
        if dtype not in self._cast:
            self._cast[dtype] = [w.astype(dtype) for _, _, w in self.blocks]
        return self._cast[dtype]

    def sums(self, x: np.ndarray, dtype) -> np.ndarray:
        """x @ W^T in ``dtype`` (exact by the caller's bound): events (each nonzero input adds
        its weight row) when x is sparse enough, else BLAS."""
        if self.blocks is None:
            w = self.csr.astype(dtype)
            return np.asarray(w @ x.astype(dtype, copy=False).T).T
        ws = self._weights(dtype)
        if self.whole:
            if use_events(x, self.rows):
                return np.asarray(sp.csr_matrix(x, dtype=dtype) @ ws[0])
            return x.astype(dtype, copy=False) @ ws[0]
        xt = np.ascontiguousarray(x.T)  # (spikes: bool, 4x less to move); rows of x^T gather contiguously
        out_t = np.empty((self.rows, x.shape[0]), dtype=dtype)
        for (rb, cb, _), w in zip(self.blocks, ws):
            out_t[rb] = w @ xt[cb].astype(dtype, copy=False)
        return out_t.T

    def synapse(self, x: np.ndarray, x_max: float) -> np.ndarray:
        """Lava's a_syn for rows x (R, cols) of integers with |x| <= x_max, as int32: the int32
        accumulation (wraps), then the weight exponent's shift (DelayDense: int64 accumulation,
        shift, then the wrap; the same unless the accumulation leaves int32)."""
        bound = float(self.row_abs.max(initial=0.0)) * x_max
        if self._wint is not None and bound < 2 ** 31 and jit.kernels() is not None and use_events(x, self.rows):
            acc = event_sums(x, self._wint)  # exact: no partial sum leaves int32
            return acc << self.wexp if self.wexp > 0 else acc >> (-self.wexp)
        if bound < F32_EXACT:  # also below 2^31: the int32 accumulation cannot wrap
            acc = self.sums(x, np.float32).astype(np.int32)
            return acc << self.wexp if self.wexp > 0 else acc >> (-self.wexp)  # int32 << wraps
        acc = self.sums(x, np.float64 if bound < F64_EXACT else np.int64).astype(np.int64)
        if self.wrap_first:
            acc = _wrap32(acc)
        acc = acc << self.wexp if self.wexp > 0 else acc >> (-self.wexp)
        return acc.astype(np.int32)  # the wrap into a_buff


def compile_qplan(meta: dict, arrays: dict) -> dict:
    """The per-plan data of ``run_qplan_fast`` (effective weights, neuron parameters); reusable
    across calls on the same plan."""
    conns = meta["connections"]
    dmax = int(meta.get("dense_max_elements", 250_000))
    syn = {}
    for c in conns:
        wrap_first = True
        if int(c.get("delay", 0)) > 0:  # DelayDense accumulates in int64 before its shift
            key = c["terms"][0][0]
            nnz = np.unique(np.asarray(arrays[key + "_rows"], np.int64) * int(c["cols"])
                            + np.asarray(arrays[key + "_cols"], np.int64)).size
            wrap_first = not uses_dense(int(c["rows"]), int(c["cols"]), nnz, dmax)
        syn[c["id"]] = Synapse(c, arrays, wrap_first)
    prm = {}
    for p in meta["populations"]:
        n = p["name"]
        bias = wrap32(effective_bias(np.asarray(arrays[n + "__bias_mant"]).astype(np.int16).astype(np.int64),
                                     arrays[n + "__bias_exp"]))
        du = np.asarray(arrays.get(n + "__du", int(p["du"])), dtype=np.int64)
        dv = np.asarray(arrays.get(n + "__dv", int(p["dv"])), dtype=np.int64)
        vth = np.asarray(arrays.get(n + "__vth", int(p["vth"])), dtype=np.int64)
        fu, fv = DECAY_UNITY - (du + 1), DECAY_UNITY - dv
        vth6 = vth << 6
        prm[n] = {"bias": bias.astype(np.int32),  # wrapped to int32 already
                  "fu": fu, "fv": fv, "u_replaced": bool(np.all(fu == 0)), "v_kept": bool(np.all(fv == DECAY_UNITY)),
                  # v is int32: a threshold beyond int32 compares in int64
                  "vth": vth6.astype(np.int32) if np.all(np.abs(vth6) < 2 ** 31) else vth6,
                  "vinit": (wrap32(np.asarray(arrays[n + "__vinit"], dtype=np.int64)).astype(np.int32)
                            if p.get("has_vinit") else None)}
        size = int(p["size"])  # the compiled scan's per-neuron vectors (int64)
        prm[n].update({k: np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.int64), (size,)))
                       for k, a in (("fu_n", fu), ("fv_n", fv), ("bias_n", prm[n]["bias"]), ("vth_n", vth6))})
    return {"syn": syn, "prm": prm}


def _decay(x: np.ndarray, factor) -> np.ndarray:
    """sign(x) * ((|x| * factor) >> 12) in int64 (the reference's decay)."""
    prod = x.astype(np.int64) * factor
    return np.sign(prod) * (np.abs(prod) >> 12)


def _fold24(u: np.ndarray) -> np.ndarray:
    """The reference's one-step fold of u (int32) into 24 bits (in place)."""
    np.subtract(u, 2 * UV_MAX, out=u, where=u > UV_MAX)
    np.add(u, 2 * UV_MAX, out=u, where=u <= -UV_MAX)
    return u


def run_qplan_fast(meta: dict, arrays: dict, x_int: np.ndarray, record_state: bool = False,
                   compiled: dict | None = None, check_integer: bool = True) -> dict:
    """``reference.run_qplan`` computed layer by layer over all steps; identical results.

    x_int: (S, B, n_in) integer valued. Returns {"spikes": {pop: (S, B, n) bool},
    "a_out": {readout: (S, B, n) int64}, "outputs": {readout: float64}} and with
    record_state {"u": ..., "v": ...} per population (S, B, n) int64.
    ``compiled``: ``compile_qplan(meta, arrays)`` when the caller keeps it across calls;
    ``check_integer=False`` when x_int comes from ``QPlan.quantize_input`` (integers already).
    """
    x = np.asarray(x_int)
    if check_integer and not np.all(x == np.rint(x)):
        raise ValueError("x_int must be integer valued")
    S, B = x.shape[:2]
    R = S * B
    cp = compiled if compiled is not None else compile_qplan(meta, arrays)
    syn, prm = cp["syn"], cp["prm"]
    in_name = meta["input"]["name"]
    x2 = x.reshape(R, -1)
    # direct encoding sends the same input at every step: its synaptic sums once, broadcast
    static = S > 1 and np.array_equal(x[-1], x[0]) and bool((x == x[:1]).all())
    # the activity each population sends: (R, n) with its largest magnitude
    act = {in_name: (x[0] if static else x2, float(np.abs(x2).max(initial=0.0))),
           BIAS_SOURCE: (np.ones((B, 1), np.float32), 1.0)}  # 1 at every step
    once = {in_name, BIAS_SOURCE} if static else {BIAS_SOURCE}
    conns = meta["connections"]
    into: dict[str, list] = {}
    loops: dict[str, list] = {}  # recurrent connections (a population to itself): step by step
    for c in conns:
        (loops if c.get("recurrent") else into).setdefault(c["target"], []).append(syn[c["id"]])
    spikes, a_out, us, vs, mem = {}, {}, {}, {}, {}
    for p in meta["populations"]:  # topological order
        n, size = p["name"], int(p["size"])
        q = prm[n]
        a_in = np.zeros((S, B, size), dtype=np.int32)
        for s in into.get(n, []):  # int32 adds wrap, as Lava's accumulation does
            a_in += s.synapse(*act[s.source]).reshape((1 if s.source in once else S), B, size)
        if q["vinit"] is not None:
            a_in[0] += q["vinit"][None, :]
        spk = np.empty((S, B, size), dtype=bool)
        if record_state:
            us[n] = np.empty((S, B, size), dtype=np.int64)
            vs[n] = np.empty((S, B, size), dtype=np.int64)
        if p.get("readout"):  # a membrane readout (LI): v every step
            mem[n] = np.empty((S, B, size), dtype=np.int64)
        rec = loops.get(n, [])
        k = jit.kernels()
        if k is not None and not rec:  # the loop below, compiled (the same integer operations)
            none = np.zeros((0, 0, 0), dtype=np.int64)
            v_rec = vs[n] if record_state else mem.get(n, none)
            k.loihi_scan(a_in, q["fu_n"], q["fv_n"], q["bias_n"], q["vth_n"], q["u_replaced"], q["v_kept"],
                         UV_MAX, spk, v_rec, us[n] if record_state else none)
            if record_state and n in mem:
                mem[n][...] = v_rec
            spikes[n] = spk
            act[n] = (spk.reshape(R, size), 1.0)
            continue
        drive = a_in << 6  # int32: wrap32(a_in << 6)
        if q["u_replaced"] and not rec:  # u(t) = fold24(a_in << 6): no dependence on u(t-1)
            u_all = _fold24(drive)
        u = np.zeros((B, size), dtype=np.int32)
        v = np.zeros((B, size), dtype=np.int32)
        bias, vth, lim = q["bias"], q["vth"], UV_MAX - 1
        for j in range(S):
            if rec:  # the last step's spikes through the recurrent Dense (int32 adds wrap)
                a_j = a_in[j].copy()
                if j:
                    for s in rec:
                        a_j += s.synapse(spk[j - 1], 1.0)
                d_j = a_j << 6
                u = _fold24(d_j) if q["u_replaced"] else _fold24((_decay(u, q["fu"]) + d_j).astype(np.int32))
            elif q["u_replaced"]:
                u = u_all[j]
            else:
                u = _fold24((_decay(u, q["fu"]) + drive[j]).astype(np.int32))
            if not q["v_kept"]:
                v = _decay(v, q["fv"]).astype(np.int32)
            v += u  # int32: wraps
            v += bias
            np.clip(v, -lim, lim, out=v)
            sj = np.greater(v, vth, out=spk[j])
            np.copyto(v, 0, where=sj)
            if n in mem:
                mem[n][j] = v
            if record_state:
                us[n][j], vs[n][j] = u, v
        spikes[n] = spk
        act[n] = (spk.reshape(R, size), 1.0)
    analog = [r for r in meta["readouts"] if r["kind"] == "analog"]
    for r in analog:
        acc = np.zeros((S, B, int(r["size"])), dtype=np.int32)
        for s in into.get(r["name"], []):
            acc += s.synapse(*act[s.source]).reshape((1 if s.source in once else S), B, int(r["size"]))
        a_out[r["name"]] = acc.astype(np.int64)
    outputs = {r["name"]: a_out[r["name"]] * np.asarray(arrays[r["name"] + "__scale"])
               + np.asarray(arrays[r["name"] + "__bias"])[None, None, :] for r in analog}
    res = {"spikes": spikes, "a_out": a_out, "outputs": outputs, "membrane": mem}
    if record_state:
        res["u"], res["v"] = us, vs
    return res
