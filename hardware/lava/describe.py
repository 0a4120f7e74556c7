"""`spikebridge inspect --lava`: the Lava lowering of a graph, layer by layer (numpy only)."""
from __future__ import annotations

import numpy as np

from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.loihi.fixedpoint import chain_matrix, format_layers, quantize
from spikebridge.hardware.loihi.groups import row_errors, split_threshold_groups
from spikebridge.hardware.loihi.plan import BIAS_SOURCE, lower
from spikebridge.hardware.loihi.reference import uses_dense


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


def _groups_summary(plan, q) -> list[str]:
    """What `--threshold-groups` would do: the split and the whole-row error it leaves."""
    sp = split_threshold_groups(plan)
    tg = sp.meta.get("threshold_groups")
    if not tg:
        return ["threshold groups: none needed (every population's folded rows lie within 4x)"]
    qs = quantize(sp)
    by = {L["name"]: L for L in qs.layers}
    e0, e1 = row_errors(plan, q), row_errors(sp, qs)
    out = ["threshold groups (simulate --threshold-groups, profile loihi-fixed-groups): populations whose "
           "per-neuron thresholds spread the folded rows over more than 4x, split into LIF processes "
           "with their own vth and weight exponents (same float function); whole-row weight error "
           "folded -> split:"]
    for n, g in tg.items():
        Ls = [by[gn] for gn in g["groups"]]
        sizes = ", ".join(str(L["size"]) for L in Ls)
        out.append(f"  {n}: {len(Ls)} groups ({sizes} neurons), vth {', '.join(str(L['vth']) for L in Ls)}; "
                   f"row rel.err max {e0[n].max():.2e} -> {e1[n].max():.2e}, "
                   f"mean {e0[n].mean():.2e} -> {e1[n].mean():.2e}")
    return out


def describe(graph, timesteps: int | None = None, allow_reset_to_zero: bool = False) -> str:
    """Per population/readout: process, shape, depth (raw delay), decays, threshold, the
    connections feeding it, and the fixed-point quantisation (bits, exponent, error)."""
    md = (getattr(graph, "metadata", None) or {}).get("spikebridge", {}) or {}
    T = int(timesteps or md.get("timesteps") or 1)
    lines = []
    try:
        plan = lower(graph, T, allow_reset_to_zero=allow_reset_to_zero)
    except UnsupportedError as e:
        if allow_reset_to_zero:
            return f"Lava: not lowerable: {e}"
        try:
            plan = lower(graph, T, allow_reset_to_zero=True)
        except UnsupportedError:
            return f"Lava: not lowerable: {e}"
        lines.append(f"NOTE: does NOT run as is: {e.rule}. Shown as lowered with --allow-reset-to-zero "
                     "(an approximation: measure its cost with `simulate --backend lava --allow-reset-to-zero`)")
    meta = plan.meta
    if meta.get("profile"):
        lines.append(f"read with profile {meta['profile']} (the eventsim reading of each neuron), dt = {meta['dt']:g}")
    approx = sorted({a for p in meta["populations"] for a in p.get("approximations", ())})
    if approx:
        lines.append("approximations (--allow-reset-to-zero): " + "; ".join(approx))
    if any(p.get("threshold_test") == "ge" for p in meta["populations"]):
        lines.append("threshold test v >= theta: float vth = nextafter(1, 0) (exact); fixed point compares "
                     "v > vth << 6 at the quantised threshold (ties differ)")
    if any(p.get("recurrent") for p in meta["populations"]):
        lines.append("recurrent connections: a Dense from the population to itself (Lava's one step of delay = "
                     "the back edge's t-1; its bias is in the population's bias from t = 0); window "
                     f"{meta['window']} steps: idle steps after each sample, the last one gating recurrent "
                     "populations so no spike reaches the next sample")
    readouts = [p["name"] for p in meta["populations"] if p.get("readout")]
    if readouts:
        lines.append(f"membrane readouts ({', '.join(readouts)}): LIF that never fires, v read by a Monitor; "
                     "float: vth = inf; fixed point: v in units of twice a bound on |v| (v_units below), "
                     "threshold 1, read as v_int * v_units / (vth << 6)")
    lines.insert(0, f"Lava lowering (lava-nc 0.10.0, T={T}, window {meta['window']}, dt={meta['dt']:g}); "
                    "float: Loihi2SimCfg(select_tag='floating_pt'), fixed: 'fixed_pt'")
    lines.append(f"{'population':<14}{'process':<10}{'shape':<11}{'depth':>6}{'du':>7}{'dv':>9}{'vth':>5}  "
                 "reset   fed by")
    for p in meta["populations"]:
        fed = []
        for c in meta["connections"]:
            if c["target"] == p["name"]:
                m = chain_matrix(plan.arrays, c["terms"], int(c["rows"]), int(c["cols"]))
                nnz = int(np.count_nonzero(m))
                kind = "Dense" if uses_dense(m.shape[0], m.shape[1], nnz) else "Sparse"
                extra = int(c.get("delay", 0))
                if extra:
                    kind = f"Delay{kind}(+{extra})"
                src = "const 1 (synaptic bias into the current)" if c["source"] == BIAS_SOURCE else c["source"]
                fed.append(f"{src} via {kind} {m.shape[0]}x{m.shape[1]} (nnz {nnz})")
        lines.append(f"{p['name']:<14}{'LIFReset':<10}{_shape(p['shape']):<11}{p['depth']:>6}{p['du']:>7.3g}"
                     f"{p['dv']:>9.4g}{p['vth']:>5g}  {p['reset']:<7} {'; '.join(fed)}")
    for r in meta["readouts"]:
        lines.append(f"{r['name']:<14}{'sink':<10}{_shape(r['shape']):<11}{r['depth']:>6}"
                     f"{'':>21}  {r['kind']} readout" + (f" of {r['source']}" if r["kind"] != "analog" else ""))
    lines.append("per-neuron thresholds: folded exactly (float) into row-scaled weights and bias, vth = 1")
    lines.append("timing: raw = Lava step k*window + j + depth + 1 for step j of sample k (one step of delay "
                 "per synaptic layer); aligned = step j (what simulate returns)")
    if any(c.get("delay") for c in meta["connections"]):
        lines.append("skip connections: paths of different synaptic depth into one population; the shallower "
                     "source's connection is a DelayDense/DelaySparse delayed by the difference (+k), so every "
                     "input of a population arrives aligned")
    lines.append("")
    try:
        q = quantize(plan)
    except UnsupportedError as e:
        lines.append(f"fixed point: not lowerable: {e.rule}")
        return "\n".join(lines)
    lines.append(format_layers(q))
    lines += _groups_summary(plan, q)
    sat = [(L["name"], c["rows_saturated"]) for L in q.layers for c in L["connections"] if c.get("rows_saturated")]
    if sat:
        lines.append("saturated rows (neurons whose folded weights exceed the 8-bit range fitted to the "
                     f"{q.meta['clip_percentile']:g}th percentile of row maxima; mostly tiny thresholds): "
                     + ", ".join(f"{n} {k}" for n, k in sat))
    return "\n".join(lines)
