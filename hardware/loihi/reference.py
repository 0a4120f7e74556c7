"""The reference integer model of the Loihi plan: step by step, int64, bit-exact with Lava's
fixed_pt models (the oracle every faster path of the `loihi-fixed` profile is tested against).

It runs the same fixed-point plan the Lava worker runs (``spikebridge.hardware.loihi.fixedpoint.quantize``
of ``spikebridge.hardware.loihi.plan.lower``) with the arithmetic of lava-nc 0.10.0's
PyDenseModelBitAcc / PySparseModelBitAcc and PyLifResetModelBitAcc, in delay-free
(aligned) time: Lava's Dense sends at step t what it accumulated at t-1, so a
population at depth d sees, at Lava step kP + j + d + 1, what this model computes at
step j of sample k. Per population and step j (all int32 arithmetic wraps, as numpy's
int32 does in Lava):

    a_syn  = W_eff . s_src(j)                 W_eff: clip to 8 bits, mixed sign drops bit 0
    a_syn  = a_syn << e  (e > 0)  |  a_syn >> -e (floor)          e = weight_exp
    a_in   = sum over incoming connections (+ v_init injection at j = 0)
    u      = 0, v = 0 at j = 0 (LIFReset at the start of every sample window)
    u      = sgn(u) * ((|u| * (4096 - (du + 1))) >> 12) + (a_in << 6), wrapped to 24 bits
    v      = sgn(v) * ((|v| * (4096 - dv)) >> 12) + u + (bias_mant << bias_exp)
    v      = clip(v, -(2^23 - 1), 2^23 - 1);  s = v > (vth << 6);  v[s] = 0

Analog readouts are the integer accumulation a_out read back as a_out * (1/out_scale) + bias.

Skip connections (``delay`` > 0 on a connection: DelayDense / DelaySparse) are transparent
in aligned time: the extra delay makes the shallower source arrive with the deepest one.
Their arithmetic: DelaySparse wraps its int32 accumulation before the shift like Dense;
DelayDense sums its products in int64, shifts, then wraps (only differs on overflow).
CubaLIF populations simply have du < 4095 (a decaying current).
"""
from __future__ import annotations

import numpy as np

from spikebridge.hardware.loihi.fixedpoint import DECAY_UNITY, UV_MAX, effective_bias, lava_effective_weights

_M32 = 1 << 32


def wrap32(a: np.ndarray) -> np.ndarray:
    """int64 -> the int32 value numpy's wrapping int32 arithmetic gives (as int64)."""
    return ((np.asarray(a, dtype=np.int64) + (1 << 31)) % _M32) - (1 << 31)


def _decay(x: np.ndarray, factor) -> np.ndarray:
    prod = x * np.asarray(factor, dtype=np.int64)
    return np.sign(prod) * (np.abs(prod) >> 12)


def conn_weights(meta_conn: dict, arrays: dict) -> np.ndarray:
    """The effective int matrix Lava uses for one fixed-point connection (dense, int64)."""
    key = meta_conn["terms"][0][0]
    shp = tuple(int(s) for s in arrays[key + "_shape"])
    w = np.zeros(shp, dtype=np.int64)
    np.add.at(w, (arrays[key + "_rows"], arrays[key + "_cols"]), np.asarray(arrays[key + "_vals"], np.int64))
    return lava_effective_weights(w, meta_conn.get("sign_mode"))


def _synapse(w_t: np.ndarray, s: np.ndarray, wexp: int, wrap_first: bool = True) -> np.ndarray:
    """Dense/Sparse/DelaySparse: int32 accumulation (wraps), then the shift. DelayDense
    (wrap_first=False) sums its int32 products in int64, shifts, then wraps into a_buff."""
    acc = s @ w_t
    if wrap_first:
        acc = wrap32(acc)
    if wexp > 0:
        return wrap32(acc << wexp)
    return wrap32(acc >> (-wexp))


def uses_dense(rows: int, cols: int, nnz: int, dense_max: int = 250_000) -> bool:
    """The worker's choice between (Delay)Dense and (Delay)Sparse for one connection."""
    return rows * cols <= dense_max or nnz > 0.2 * rows * cols


def run_qplan(meta: dict, arrays: dict, x_int: np.ndarray, record_state: bool = False) -> dict:
    """Run a fixed-point plan on integer inputs x_int (S, B, n_in) for S aligned steps per
    sample (all states start at zero at step 0, like LIFReset at a window start).

    Returns {"spikes": {pop: (S, B, n) bool}, "a_out": {readout: (S, B, n) int64},
    "outputs": {readout: float64}} and with record_state {"u": {pop: (S, B, n)}, "v": ...}.
    """
    x = np.asarray(x_int)
    if not np.all(x == np.rint(x)):
        raise ValueError("x_int must be integer valued")
    x = x.astype(np.int64)
    S, B = x.shape[:2]
    in_name = meta["input"]["name"]
    conns = meta["connections"]
    wts = {c["id"]: np.ascontiguousarray(conn_weights(c, arrays).T) for c in conns}
    dmax = int(meta.get("dense_max_elements", 250_000))
    # DelayDense accumulates in int64 before its shift; every other connection wraps first
    wrap_first = {}
    for c in conns:
        wrap_first[c["id"]] = True
        if int(c.get("delay", 0)) > 0:
            key = c["terms"][0][0]
            nnz = np.unique(np.asarray(arrays[key + "_rows"], np.int64) * int(c["cols"])
                            + np.asarray(arrays[key + "_cols"], np.int64)).size
            wrap_first[c["id"]] = not uses_dense(int(c["rows"]), int(c["cols"]), nnz, dmax)
    pops = meta["populations"]
    into = {p["name"]: [c for c in conns if c["target"] == p["name"]] for p in pops}
    analog = [r for r in meta["readouts"] if r["kind"] == "analog"]
    for r in analog:
        into[r["name"]] = [c for c in conns if c["target"] == r["name"]]
    prm = {}
    for p in pops:
        n = p["name"]
        bias = wrap32(effective_bias(np.asarray(arrays[n + "__bias_mant"]).astype(np.int16).astype(np.int64),
                                     arrays[n + "__bias_exp"]))
        # per-neuron du/dv/vth vectors (arrays NAME__du/__dv/__vth) when present, else the scalars
        du = np.asarray(arrays.get(n + "__du", int(p["du"])), dtype=np.int64)
        dv = np.asarray(arrays.get(n + "__dv", int(p["dv"])), dtype=np.int64)
        vth = np.asarray(arrays.get(n + "__vth", int(p["vth"])), dtype=np.int64)
        prm[n] = {"bias": bias, "fu": DECAY_UNITY - (du + 1), "fv": DECAY_UNITY - dv,
                  "vth": vth << 6, "vinit": np.asarray(arrays[n + "__vinit"], dtype=np.int64)}
    cur = {in_name: None}
    spikes = {p["name"]: np.zeros((S, B, int(p["size"])), dtype=bool) for p in pops}
    a_out = {r["name"]: np.zeros((S, B, int(r["size"])), dtype=np.int64) for r in analog}
    us = {p["name"]: np.zeros((S, B, int(p["size"])), dtype=np.int64) for p in pops} if record_state else None
    vs = {p["name"]: np.zeros((S, B, int(p["size"])), dtype=np.int64) for p in pops} if record_state else None
    mem = {p["name"]: np.zeros((S, B, int(p["size"])), dtype=np.int64) for p in pops if p.get("readout")}
    u = {p["name"]: np.zeros((B, int(p["size"])), dtype=np.int64) for p in pops}
    v = {p["name"]: np.zeros((B, int(p["size"])), dtype=np.int64) for p in pops}
    prev = {p["name"]: np.zeros((B, int(p["size"])), dtype=np.int64) for p in pops}  # last step's spikes
    for j in range(S):
        cur = {in_name: x[j], "__one__": np.ones((B, 1), dtype=np.int64)}  # BIAS_SOURCE
        for p in pops:  # topological order (the plan lists sinks in graph order)
            n = p["name"]
            q = prm[n]
            a_in = np.zeros((B, int(p["size"])), dtype=np.int64)
            for c in into[n]:  # a recurrent connection (to itself) carries the last step's spikes
                src = prev[c["source"]] if c.get("recurrent") else cur[c["source"]]
                a_in = wrap32(a_in + _synapse(wts[c["id"]], src, int(c.get("weight_exp", 0)),
                                              wrap_first[c["id"]]))
            if j == 0 and p.get("has_vinit"):
                a_in = wrap32(a_in + q["vinit"][None, :])
            uu = wrap32(_decay(u[n], q["fu"]) + wrap32(a_in << 6))
            w = np.where(uu > UV_MAX, uu - 2 * UV_MAX, uu)
            uu = np.where(w <= -UV_MAX, uu + 2 * UV_MAX, w)
            vv = wrap32(wrap32(_decay(v[n], q["fv"]) + uu) + q["bias"])
            vv = np.clip(vv, -UV_MAX + 1, UV_MAX - 1)
            s = vv > q["vth"]
            vv = np.where(s, 0, vv)
            u[n], v[n] = uu, vv
            spikes[n][j] = s
            if n in mem:  # a membrane readout (LI): v every step
                mem[n][j] = vv
            cur[n] = prev[n] = s.astype(np.int64)
            if record_state:
                us[n][j], vs[n][j] = uu, vv
        for r in analog:
            acc = np.zeros((B, int(r["size"])), dtype=np.int64)
            for c in into[r["name"]]:
                acc = wrap32(acc + _synapse(wts[c["id"]], cur[c["source"]], int(c.get("weight_exp", 0)),
                                            wrap_first[c["id"]]))
            a_out[r["name"]][j] = acc
    outputs = {r["name"]: a_out[r["name"]] * np.asarray(arrays[r["name"] + "__scale"])
               + np.asarray(arrays[r["name"] + "__bias"])[None, None, :] for r in analog}
    res = {"spikes": spikes, "a_out": a_out, "outputs": outputs, "membrane": mem}
    if record_state:
        res["u"], res["v"] = us, vs
    return res
