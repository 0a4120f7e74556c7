"""Quantisation of a lowered Lava plan to Loihi's fixed-point formats (numpy only).

``quantize(plan)`` turns the float plan of ``spikebridge.hardware.loihi.plan.lower`` (folded so that
every population has vth = 1, du = 1, scalar dv) into integer parameters that Lava's
``fixed_pt`` process models (PyDenseModelBitAcc / PySparseModelBitAcc,
PyLifResetModelBitAcc) run bit-accurately, and that ``spikebridge.hardware.loihi``'s integer model
reproduces bit for bit. The result is plain data (``QPlan.meta`` JSON-able,
``QPlan.arrays`` integers) plus a per-layer report (``QPlan.layers``).

Loihi formats used (lava-nc 0.10.0, lava/proc/lif/models.py, lava/utils/weightutils.py):

* weights: 8-bit, clipped to [-256, 255] (mixed sign: the lowest bit is dropped, so
  even values in [-256, 254]), [0, 255] (excitatory) or [-255, 0] (inhibitory); the
  synaptic accumulation is shifted by ``weight_exp`` (<< for > 0, arithmetic >> for < 0,
  i.e. floor); range used here [-8, 7];
* u, v: 24-bit; a_in is shifted left by 6 into u; threshold vth (17 bit unsigned) is
  compared as ``v > vth << 6``; bias = bias_mant (13-bit signed) << bias_exp (0..7),
  NOT shifted by 6;
* decays: 12 bit; u <- u * (4096 - (du + 1)) >> 12 (so du = 4095 replaces u each step:
  IF and our folded LIF; CubaLIF: du = round(4096 dt/tau_syn) - 1), v <- v * (4096 - dv)
  >> 12 (sign-magnitude shift);
* skip connections: DelayDense / DelaySparse with 6-bit delays (at most 63 extra steps).

Mapping from the float plan (units of the folded threshold theta = 1): one threshold is
``vth << 6`` in v units, so a synaptic input ``a_in`` is worth ``a_in / vth`` thresholds:
``W_int * 2**weight_exp ~= M * vth`` (divided by ``2**input_frac`` for connections from
the Input, whose analog values are sent as integers ``round(x * 2**input_frac)``),
``bias_mant << bias_exp ~= b * vth * 64``, ``dv_int = round(dv * 4096)``. vth and the
dominant connection's weight_exp are chosen so that its largest weight uses the full
8-bit range and vth lies in [2**vth_bits, 2**(vth_bits+1)); the other connections into
the same population get their own weight_exp. Analog readouts (Output fed by an
Affine) are integer accumulations ``a_out`` read back as ``a_out / out_scale + bias``.

Per-neuron thresholds are folded before quantisation: row i of M is w_i / theta_i. One
weight scale serves the whole matrix, so rows of neurons with a large threshold use
fewer of the 8 bits; ``row_rel_err_max`` in the report measures that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.loihi.plan import Coo

WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7
VTH_MAX = (1 << 17) - 1
BIAS_MANT_MIN, BIAS_MANT_MAX = -(1 << 12), (1 << 12) - 1
BIAS_EXP_MAX = 7
DECAY_UNITY = 1 << 12
UV_MAX = 1 << 23           # 24-bit state: |u| wraps beyond, v is clipped to +-(UV_MAX - 1)
ACT_SHIFT = VTH_SHIFT = 6
INPUT_FRAC_DEFAULT = 8     # analog inputs sent as round(x * 2**8)
VTH_BITS_DEFAULT = 10      # vth in [1024, 2048): one threshold = 2**16..2**17 in v; v range +-64..128 thresholds
GRADED_MAX = UV_MAX - 1    # 24-bit graded spike payload
CLIP_PERCENTILE_DEFAULT = 97.0
OUTLIER_FACTOR = 4.0
DELAY_MAX = 63             # DelayDense / DelaySparse fixed_pt: 6-bit delays


# ----------------------------------------------------------------------------- Lava's weight handling


def du_int(du: float) -> int:
    """Lava's fixed-point current decay: u <- u * (4096 - (du + 1)) >> 12, so the float
    decay du (u <- u * (1 - du)) maps to round(du * 4096) - 1, in [0, 4095]."""
    return int(np.clip(np.rint(du * DECAY_UNITY) - 1, 0, DECAY_UNITY - 1))


def sign_mode(w: np.ndarray) -> str:
    """lava.utils.weightutils.determine_sign_mode on a (dense) weight matrix."""
    w = np.asarray(w)
    if w.size == 0 or np.min(w) >= 0:
        return "excitatory"
    if np.max(w) <= 0:
        return "inhibitory"
    return "mixed"


def lava_effective_weights(w: np.ndarray, mode: str | None = None) -> np.ndarray:
    """What PyDenseModelBitAcc / PySparseModelBitAcc actually use: clip_weights(num_bits=8)
    then truncate_weights(num_weight_bits=8) (mixed sign drops the lowest bit)."""
    w = np.asarray(w).astype(np.int64)
    mode = mode or sign_mode(w)
    if mode == "inhibitory":
        w = -w
    lo = -(1 << 8) if mode == "mixed" else 0
    w = np.clip(w, lo, (1 << 8) - 1)
    if mode == "mixed":
        w = (w >> 1) << 1
    if mode == "inhibitory":
        w = -w
    return w


def weight_limit(mode: str) -> int:
    return 254 if mode == "mixed" else 255


def quantize_matrix(m: np.ndarray, scale: float, wexp: int, mode: str) -> np.ndarray:
    """Round m * scale / 2**wexp to Lava-legal 8-bit integers (round to nearest, then what
    Lava would do anyway: even values for mixed sign, clipped)."""
    q = m * (scale / 2.0 ** wexp)
    if mode == "mixed":
        w = 2 * np.rint(q / 2.0)
        w = np.clip(w, -256, 254)
    elif mode == "inhibitory":
        w = np.clip(np.rint(q), -255, 0)
    else:
        w = np.clip(np.rint(q), 0, 255)
    return w.astype(np.int64)


def _exp_for(mag: float, scale: float, lim: int) -> int:
    """Smallest weight_exp in range with mag * scale / 2**e <= lim."""
    if mag <= 0:
        return 0
    e = int(np.ceil(np.log2(mag * scale / lim))) if mag * scale > 0 else WEIGHT_EXP_MIN
    while e > WEIGHT_EXP_MIN and mag * scale / 2.0 ** (e - 1) <= lim:
        e -= 1
    while mag * scale / 2.0 ** e > lim * (1 + 1e-12) and e < WEIGHT_EXP_MAX:
        e += 1
    return int(np.clip(e, WEIGHT_EXP_MIN, WEIGHT_EXP_MAX))


def quantize_bias(b_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bias in v units -> (bias_mant 13-bit signed, bias_exp 0..7), per neuron, nearest."""
    b_v = np.asarray(b_v, dtype=np.float64)
    # smallest exponent whose mantissa fits
    exp = np.zeros(b_v.shape, dtype=np.int64)
    for e in range(BIAS_EXP_MAX, -1, -1):
        m = np.rint(b_v / 2.0 ** e)
        ok = (m >= BIAS_MANT_MIN) & (m <= BIAS_MANT_MAX)
        exp = np.where(ok, e, exp)
    big = np.abs(np.rint(b_v / 2.0 ** BIAS_EXP_MAX)) > BIAS_MANT_MAX
    exp = np.where(big, BIAS_EXP_MAX, exp)
    mant = np.clip(np.rint(b_v / 2.0 ** exp), BIAS_MANT_MIN, BIAS_MANT_MAX).astype(np.int64)
    return mant, exp


def effective_bias(mant, exp) -> np.ndarray:
    mant = np.asarray(mant, dtype=np.int64)
    exp = np.asarray(exp, dtype=np.int64)
    return np.where(exp >= 0, mant << np.maximum(exp, 0), mant >> np.maximum(-exp, 0))


# ----------------------------------------------------------------------------- plan


@dataclass
class QPlan:
    """A fixed-point plan: ``meta``/``arrays`` in the worker's format (precision 'fixed'),
    ``layers`` one report row per population / readout, ``input_frac``."""

    meta: dict
    arrays: dict[str, np.ndarray]
    layers: list[dict] = field(default_factory=list)

    @property
    def input_frac(self) -> int:
        return int(self.meta["input_frac"])

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Analog input -> the integers the spike source sends (24-bit graded payload)."""
        q = np.asarray(x, dtype=np.float64) * 2.0 ** self.input_frac
        np.rint(q, out=q)
        return np.clip(q, -GRADED_MAX, GRADED_MAX, out=q)


def chain_matrix(arrays: dict, terms: list[list[str]], rows: int, cols: int) -> np.ndarray:
    """Dense product of a connection's factor chains (the worker does the same with scipy)."""
    total = np.zeros((rows, cols))
    for keys in terms:
        m = None
        for k in keys:
            f = Coo(arrays[k + "_rows"], arrays[k + "_cols"], arrays[k + "_vals"],
                    tuple(int(s) for s in arrays[k + "_shape"]))
            m = f.to_dense() if m is None else f.matvec(m)
        total += m
    return total


def _rel(err, ref) -> float:
    n = float(np.linalg.norm(ref))
    return float(np.linalg.norm(err)) / n if n > 0 else float(np.linalg.norm(err))


def robust_max(m: np.ndarray, percentile: float) -> float:
    """The weight magnitude the 8-bit range is fitted to: the largest |w|, unless it lies
    more than OUTLIER_FACTOR times above the given percentile of the rows' largest |w|
    (rows of neurons with tiny folded thresholds); then that percentile, and the rows
    above it saturate at +-254/255."""
    if m.size == 0:
        return 0.0
    rm = np.max(np.abs(m), axis=1)
    rm = rm[rm > 0]
    if rm.size == 0:
        return 0.0
    top = float(rm.max())
    if percentile >= 100:
        return top
    p = float(np.percentile(rm, percentile, method="lower"))
    return top if top <= OUTLIER_FACTOR * p else p


def quantize(plan, vth_bits: int = VTH_BITS_DEFAULT, input_frac: int | None = None,
             clip_percentile: float = CLIP_PERCENTILE_DEFAULT) -> QPlan:
    """Quantise a float Plan (``spikebridge.hardware.loihi.plan.lower``) to Loihi fixed point.

    clip_percentile: when a connection's largest row lies more than OUTLIER_FACTOR times above
    this percentile of its rows' largest |w|, the 8-bit range is fitted to the percentile
    (per-neuron thresholds folded into the rows spread them over orders of magnitude;
    fitting the largest would round most rows to zero)."""
    meta = plan.meta
    arrays = plan.arrays
    in_name = meta["input"]["name"]
    conns = meta["connections"]
    long = [f"{c['source']} -> {c['target']}: {c['delay']}" for c in conns if int(c.get("delay", 0)) > DELAY_MAX]
    if long:
        raise UnsupportedError(f"skip connections need more than {DELAY_MAX} steps of extra delay "
                               f"(Loihi's 6-bit synaptic delays): {'; '.join(long)}", place="lava fixed point")
    mats = {c["id"]: chain_matrix(arrays, c["terms"], int(c["rows"]), int(c["cols"])) for c in conns}
    # Membrane readouts (LI: a LIF that never fires). Loihi's LIF fires when v > vth << 6 and
    # vth has 17 bits, so "never" needs a scale: the membrane is represented in units of S, twice
    # a bound on |v| over a window of spikes (|s| <= 1): |u| <= A min(P, 1/du), A = the row's
    # sum of |w|, |v| <= (|u| + |bias|) min(P, 1/dv) + |v(0)|. In those units v stays below 1/2,
    # the threshold is 1, and the readout is v_int * S / (vth << 6).
    v_units: dict[str, float] = {}
    P = int(meta.get("window", meta.get("timesteps", 1)))
    for p in meta["populations"]:
        if not p.get("readout"):
            continue
        into = [c for c in conns if c["target"] == p["name"]]
        if any(c["source"] == in_name for c in into):
            raise UnsupportedError(f"{p['name']}: a membrane readout fed by the Input has no bound for its fixed-point "
                                   "scale (inputs are not spikes); use --precision float", place="lava fixed point")
        A = sum((np.abs(mats[c["id"]]).sum(axis=1) for c in into), np.zeros(int(p["size"])))
        du, dv = float(p.get("du", 1.0)), float(p["dv"])
        U = A * min(P, 1.0 / du if du > 0 else P)
        V = (U + np.abs(arrays[p["name"] + "__bias"])) * min(P, 1.0 / dv if dv > 0 else P) \
            + np.abs(arrays[p["name"] + "__vinit"])
        S = 2.0 * max(float(np.max(V, initial=0.0)), 1e-12)
        v_units[p["name"]] = S
        for c in into:
            mats[c["id"]] = mats[c["id"]] / S
    # input resolution: 8 fractional bits unless the first layer's exponent would leave the range
    frac = INPUT_FRAC_DEFAULT if input_frac is None else int(input_frac)
    out = {k: v for k, v in meta.items() if k not in ("populations", "connections", "readouts")}
    out["precision"] = "fixed"
    qarr: dict[str, np.ndarray] = {}
    qconns, pops, readouts, layers = [], [], [], []

    def eff(c):  # matrix in "per input integer" units
        m = mats[c["id"]]
        return m / 2.0 ** frac if c["source"] == in_name else m

    def emit(c, w, wexp, mode):
        key = f"{c['id']}_q"
        r, cc = np.nonzero(w)
        qarr[key + "_rows"] = r.astype(np.int64)
        qarr[key + "_cols"] = cc.astype(np.int64)
        qarr[key + "_vals"] = w[r, cc].astype(np.int64)
        qarr[key + "_shape"] = np.asarray(w.shape, dtype=np.int64)
        qconns.append({"id": c["id"], "source": c["source"], "target": c["target"], "terms": [[key]],
                       "rows": int(c["rows"]), "cols": int(c["cols"]), "weight_exp": int(wexp),
                       "sign_mode": mode, "delay": int(c.get("delay", 0)),
                       **({"recurrent": True} if c.get("recurrent") else {})})

    for p in meta["populations"]:
        name = p["name"]
        into = [c for c in conns if c["target"] == name]
        mags = [robust_max(eff(c), clip_percentile) for c in into]
        modes = [sign_mode(mats[c["id"]]) for c in into]
        lo = 1 << vth_bits
        vth = lo
        if into and max(mags) > 0:
            i0 = int(np.argmax(mags))
            lim = weight_limit(modes[i0])
            # choose weight_exp of the dominant connection so that vth = lim*2^e/mag is in [lo, 2lo)
            e = int(np.floor(np.log2(lo * mags[i0] / lim))) + 1
            e = int(np.clip(e, WEIGHT_EXP_MIN, WEIGHT_EXP_MAX))
            vth = int(np.clip(np.floor(lim * 2.0 ** e / mags[i0]), 1, VTH_MAX))
        rows = []
        werr_max = 0.0
        row_rel = []
        for c, mag, mode in zip(into, mags, modes):
            m = eff(c)
            wexp = _exp_for(mag, vth, weight_limit(mode))
            w = quantize_matrix(m, vth, wexp, mode)
            emit(c, w, wexp, mode)
            back = w * 2.0 ** wexp / vth
            if c["source"] == in_name:
                back = back * 2.0 ** frac
            ref = mats[c["id"]]
            werr_max = max(werr_max, float(np.max(np.abs(back - ref))) if ref.size else 0.0)
            rn = np.linalg.norm(ref, axis=1)
            ok = rn > 0
            if ok.any():
                row_rel.append(np.linalg.norm(back - ref, axis=1)[ok] / rn[ok])
            rows.append({"source": c["source"], "weight_exp": wexp, "sign_mode": mode,
                         "weight_bits": 7 if mode == "mixed" else 8,
                         "weight_max_int": int(np.max(np.abs(w))) if w.size else 0,
                         "rows_saturated": int(np.sum(np.max(np.abs(m), axis=1) * vth / 2.0 ** wexp
                                                      > weight_limit(mode) + 1)) if m.size else 0,
                         "weight_rel_err": _rel(back - ref, ref)})
        S = v_units.get(name, 1.0)
        b = np.asarray(arrays[name + "__bias"], dtype=np.float64) / S
        mant, bexp = quantize_bias(b * vth * 64.0)
        b_back = effective_bias(mant, bexp) / (64.0 * vth)
        dv = int(np.clip(np.rint(float(p["dv"]) * DECAY_UNITY), 0, DECAY_UNITY - 1))
        du = du_int(float(p.get("du", 1.0)))  # du = 1 (IF, LIF): 4095, u replaced every step
        vinit = np.rint(np.asarray(arrays[name + "__vinit"], dtype=np.float64) / S * vth).astype(np.int64)
        qarr[name + "__bias_mant"] = mant
        qarr[name + "__bias_exp"] = bexp
        qarr[name + "__vinit"] = vinit
        q = dict(p)
        q.update({"du": du, "dv": dv, "vth": vth})
        if name in v_units:  # membrane readout: value = v_int * v_scale
            q["v_scale"] = v_units[name] / float(vth << VTH_SHIFT)
        pops.append(q)
        rr = np.concatenate(row_rel) if row_rel else np.zeros(1)
        layers.append({"name": name, "process": "LIFReset", "shape": p["shape"], "size": p["size"],
                       "depth": p["depth"], "vth": vth, "threshold_v": vth << VTH_SHIFT,
                       "du": du, "dv": dv, "dv_float": float(p["dv"]),
                       "dv_err": abs(dv / DECAY_UNITY - float(p["dv"])),
                       "du_float": float(p.get("du", 1.0)),
                       "du_err": abs((du + 1) / DECAY_UNITY - float(p.get("du", 1.0))),
                       "kind": p.get("kind", "IF"),
                       "delays": {c["source"]: int(c.get("delay", 0)) for c in into if c.get("delay")},
                       "connections": rows, "weight_abs_err_max": werr_max,
                       "row_rel_err_max": float(rr.max()), "row_rel_err_mean": float(rr.mean()),
                       "bias_exp_max": int(bexp.max()) if bexp.size else 0,
                       "bias_abs_err_max": float(np.max(np.abs(b_back - b))) if b.size else 0.0,
                       "bias_saturated": int(np.sum(np.abs(b * vth * 64.0) > BIAS_MANT_MAX * 2 ** BIAS_EXP_MAX)),
                       "reset": p["reset"],
                       # membrane readout: v in units of v_units (weights, bias errors above in them too)
                       **({"v_units": v_units[name], "fan_in": int(max(
                           (int(np.max(np.count_nonzero(mats[c["id"]], axis=1), initial=0)) for c in into),
                           default=0))} if name in v_units else {})})
    for r in meta["readouts"]:
        r = dict(r)
        name = r["name"]
        if r["kind"] != "analog":
            readouts.append(r)
            continue
        into = [c for c in conns if c["target"] == name]
        mags = [robust_max(eff(c), clip_percentile) for c in into]
        modes = [sign_mode(mats[c["id"]]) for c in into]
        top = max(mags) if mags else 0.0
        # a_out = sum_c (W_c . s) << e_c ~= y * scale; the dominant connection gets weight_exp 6
        scale = weight_limit(modes[int(np.argmax(mags))]) * 64.0 / top if top > 0 else 1.0
        rows = []
        for c, mag, mode in zip(into, mags, modes):
            wexp = _exp_for(mag, scale, weight_limit(mode))
            w = quantize_matrix(eff(c), scale, wexp, mode)
            emit(c, w, wexp, mode)
            back = w * 2.0 ** wexp / scale * (2.0 ** frac if c["source"] == in_name else 1.0)
            ref = mats[c["id"]]
            rows.append({"source": c["source"], "weight_exp": wexp, "sign_mode": mode,
                         "weight_bits": 7 if mode == "mixed" else 8,
                         "weight_max_int": int(np.max(np.abs(w))) if w.size else 0,
                         "weight_rel_err": _rel(back - ref, ref)})
        qarr[name + "__bias"] = np.asarray(arrays[name + "__bias"], dtype=np.float64)
        qarr[name + "__scale"] = np.asarray([1.0 / scale])
        r["out_scale"] = scale
        readouts.append(r)
        layers.append({"name": name, "process": "Dense readout", "shape": r["shape"], "size": r["size"],
                       "depth": r["depth"], "out_scale": scale, "connections": rows})
    out.update({"populations": pops, "connections": qconns, "readouts": readouts,
                "input_frac": frac, "vth_bits": vth_bits,
                "clip_percentile": clip_percentile})
    return QPlan(meta=out, arrays=qarr, layers=layers)


def format_layers(qplan: QPlan) -> str:
    """The per-layer table of `spikebridge inspect --lava`."""
    lines = [f"fixed point (Loihi): inputs sent as round(x * 2^{qplan.input_frac}) graded spikes; "
             "u/v 24 bit; a_in and vth << 6; bias = mant << exp"]
    hdr = f"{'layer':<14}{'process':<15}{'shape':<14}{'vth':>6}{'du':>6}{'dv':>6}  weights (source: bits, exp, rel.err)"
    lines.append(hdr)
    for L in qplan.layers:
        ws = "; ".join(f"{'const1' if c['source'] == '__one__' else c['source']}: {c['weight_bits']}b {c['sign_mode'][:3]}, exp {c['weight_exp']:+d}, "
                       f"err {c['weight_rel_err']:.2e}" for c in L["connections"])
        if L["process"] == "LIFReset":
            lines.append(f"{L['name']:<14}{L['process']:<15}{str(tuple(L['shape'])):<14}{L['vth']:>6}"
                         f"{L['du']:>6}{L['dv']:>6}  {ws}")
            lines.append(f"{'':<14}row-folded thresholds: row rel.err max {L['row_rel_err_max']:.2e} "
                         f"mean {L['row_rel_err_mean']:.2e}; bias err max {L['bias_abs_err_max']:.2e} "
                         f"(thresholds), dv err {L['dv_err']:.2e}"
                         + (f", du err {L['du_err']:.2e} ({L.get('kind', 'CubaLIF')} current decay)"
                            if L.get("du", DECAY_UNITY - 1) != DECAY_UNITY - 1 or L.get("kind") == "CubaLIF" else ""))
            if L.get("v_units"):
                lines.append(f"{'':<14}membrane readout (LI): v_units {L['v_units']:.4g} (twice a bound on |v|), "
                             f"value = v_int * {L['v_units'] / (L['vth'] << VTH_SHIFT):.3g}")
            if L.get("delays"):
                lines.append(f"{'':<14}skip connections delayed (DelayDense/DelaySparse): "
                             + ", ".join(f"{s} +{d} step(s)" for s, d in L["delays"].items()))
        else:
            lines.append(f"{L['name']:<14}{L['process']:<15}{str(tuple(L['shape'])):<14}{'-':>6}{'-':>6}{'-':>6}"
                         f"  {ws}; out = a_out / {L['out_scale']:.4g} + bias")
    return "\n".join(lines)
