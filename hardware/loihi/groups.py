"""Threshold groups: split a population with per-neuron thresholds into several Lava LIF
processes, each with its own scalar vth (numpy only).

Folding per-neuron thresholds into row-scaled weights is exact in float, but in fixed
point one population has one vth and each connection one weight exponent: rows whose
folded weights are much smaller than the largest use few of the 8 weight bits, rows far
above it saturate (spikebridge.hardware.loihi.fixedpoint.robust_max). Splitting the neurons into groups of
similar folded row scale (the largest folded incoming weight of each neuron) gives every
group its own vth and weight exponents, so each group's rows use the full 8-bit range.

The split is a re-indexing, exact in float: group g of population n holds the neurons
``index_g`` (arrays ``<n>~g<k>__index``); a connection into n becomes one connection per
group with the rows ``index_g`` (a selection factor appended to its chains); a connection
out of n becomes one connection per source group with a scatter factor prepended (group
spikes -> their columns). Depth, delays, du, dv, reset are unchanged. After a run,
``merge_outputs`` puts spikes and u/v of the groups back into the population's order.
"""
from __future__ import annotations

import copy

import numpy as np

from spikebridge.hardware.loihi.fixedpoint import INPUT_FRAC_DEFAULT, chain_matrix
from spikebridge.hardware.loihi.plan import Coo, Plan

SEP = "~g"  # group population name: f"{population}{SEP}{k}"


def _groups(scale: np.ndarray, max_span: float, max_groups: int) -> list[np.ndarray]:
    """Neuron indices per group: sorted by scale, contiguous runs whose largest/smallest
    scale is at most ``max_span`` (widened when that would make more than max_groups).
    Neurons of scale 0 (no input weights) join the smallest group."""
    g = np.abs(np.asarray(scale, dtype=np.float64))
    pos = g[g > 0]
    g = np.where(g > 0, g, pos.min() if pos.size else 1.0)
    order = np.argsort(g, kind="stable")
    lg = np.log2(np.maximum(g[order], 1e-300))
    span = np.log2(max_span)
    if lg.size and (lg[-1] - lg[0]) / span > max_groups:
        span = (lg[-1] - lg[0]) / max_groups * (1 + 1e-9)
    cuts = [0]
    for i in range(1, lg.size):
        if lg[i] - lg[cuts[-1]] > span:
            cuts.append(i)
    bounds = cuts + [lg.size]
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _put(arrays: dict, key: str, f: Coo) -> None:
    arrays[key + "_rows"] = f.rows
    arrays[key + "_cols"] = f.cols
    arrays[key + "_vals"] = f.vals
    arrays[key + "_shape"] = np.asarray(f.shape, dtype=np.int64)


def row_scales(plan: Plan) -> dict[str, np.ndarray]:
    """Per population, each neuron's largest folded incoming weight (connections from the
    Input in units of one input integer, as the quantiser sees them): what one vth and one
    weight exponent per connection must cover."""
    meta, arrays = plan.meta, plan.arrays
    out = {p["name"]: np.zeros(int(p["size"])) for p in meta["populations"]}
    for c in meta["connections"]:
        if c["target"] not in out:
            continue
        m = np.abs(chain_matrix(arrays, c["terms"], int(c["rows"]), int(c["cols"])))
        rm = m.max(axis=1) if m.size else np.zeros(int(c["rows"]))
        if c["source"] == meta["input"]["name"]:
            rm = rm / 2.0 ** INPUT_FRAC_DEFAULT
        out[c["target"]] = np.maximum(out[c["target"]], rm)
    return out


def split_threshold_groups(plan: Plan, max_span: float = 4.0, max_groups: int = 8) -> Plan:
    """A new Plan in which every population whose neurons' folded row scales
    (``row_scales``: per-neuron thresholds folded into the rows spread them) span more than
    ``max_span`` is split into at most ``max_groups`` groups of similar scale. Populations
    that need no split are unchanged; a plan without any split is returned as is."""
    meta, arrays = plan.meta, plan.arrays
    split: dict[str, list[np.ndarray]] = {}
    # a recurrent population stays whole: its groups would feed each other within a step
    # order the integer models run population by population (plan.lower's recurrent Dense)
    recurrent = {p["name"] for p in meta["populations"] if p.get("recurrent")}
    for name, scale in row_scales(plan).items():
        if scale.size < 2 or name in recurrent:
            continue
        gs = _groups(scale, max_span, max_groups)
        if len(gs) > 1:
            split[name] = gs
    if not split:
        return plan
    arr = dict(arrays)
    pops = []
    info = {}
    for p in meta["populations"]:
        n = p["name"]
        if n not in split:
            pops.append(p)
            continue
        names = []
        for k, idx in enumerate(split[n]):
            gname = f"{n}{SEP}{k}"
            q = dict(p)
            q.update({"name": gname, "size": int(idx.size), "shape": [int(idx.size)], "group_of": n})
            for suffix in ("__bias", "__vinit"):
                if n + suffix in arrays:
                    arr[gname + suffix] = np.asarray(arrays[n + suffix])[idx]
            arr[gname + "__index"] = idx.astype(np.int64)
            q["has_vinit"] = bool(p.get("has_vinit")) and bool(np.any(arr[gname + "__vinit"] != 0))
            pops.append(q)
            names.append(gname)
        info[n] = {"groups": names, "population": p}
    conns = []
    for c in meta["connections"]:
        src, tgt = c["source"], c["target"]
        s_parts = [(src, None)] if src not in split else [
            (f"{src}{SEP}{k}", idx) for k, idx in enumerate(split[src])]
        t_parts = [(tgt, None)] if tgt not in split else [
            (f"{tgt}{SEP}{k}", idx) for k, idx in enumerate(split[tgt])]
        for sname, sidx in s_parts:
            for tname, tidx in t_parts:
                cid = f"{c['id']}_{sname}_{tname}" if (sidx is not None or tidx is not None) else c["id"]
                if cid == c["id"]:
                    conns.append(c)
                    continue
                terms = []
                for j, keys in enumerate(c["terms"]):
                    new = []
                    if sidx is not None:  # group spikes -> their columns of the full source vector
                        key = f"{cid}_t{j}_scatter"
                        _put(arr, key, Coo(sidx.astype(np.int64), np.arange(sidx.size, dtype=np.int64),
                                           np.ones(sidx.size), (int(c["cols"]), int(sidx.size))))
                        new.append(key)
                    new += list(keys)
                    if tidx is not None:  # the group's rows
                        key = f"{cid}_t{j}_select"
                        _put(arr, key, Coo(np.arange(tidx.size, dtype=np.int64), tidx.astype(np.int64),
                                           np.ones(tidx.size), (int(tidx.size), int(c["rows"]))))
                        new.append(key)
                    terms.append(new)
                d = dict(c)
                d.update({"id": cid, "source": sname, "target": tname, "terms": terms,
                          "rows": int(c["rows"] if tidx is None else tidx.size),
                          "cols": int(c["cols"] if sidx is None else sidx.size)})
                conns.append(d)
    m = copy.deepcopy(meta)
    m["populations"] = pops
    m["connections"] = conns
    m["threshold_groups"] = {n: {"groups": v["groups"], "population": v["population"]} for n, v in info.items()}
    return Plan(meta=m, arrays=arr, ops=plan.ops, shapes=plan.shapes, kinds=plan.kinds, preds=plan.preds,
                order=plan.order)


def merged_meta(meta: dict) -> dict:
    """``meta`` with every split population back as one entry (for assembling a Trace)."""
    tg = meta.get("threshold_groups")
    if not tg:
        return meta
    pops, done = [], set()
    for p in meta["populations"]:
        n = p.get("group_of")
        if n is None:
            pops.append(p)
        elif n not in done:
            pops.append(tg[n]["population"])
            done.add(n)
    out = dict(meta)
    out["populations"] = pops
    return out


def merge_outputs(meta: dict, arrays: dict, out: dict) -> dict:
    """Result arrays of a split plan (spikes__/u__/v__ per group) -> per population."""
    tg = meta.get("threshold_groups")
    if not tg:
        return out
    out = dict(out)
    for n, g in tg.items():
        size = int(g["population"]["size"])
        for prefix in ("spikes__", "u__", "v__"):
            parts = [(arrays[gn + "__index"], out.pop(prefix + gn)) for gn in g["groups"] if prefix + gn in out]
            if not parts:
                continue
            first = parts[0][1]
            full = np.zeros(first.shape[:-1] + (size,), dtype=first.dtype)
            for idx, val in parts:
                full[..., idx] = val
            out[prefix + n] = full
    return out


def row_errors(plan: Plan, qplan) -> dict[str, np.ndarray]:
    """Per population of the ORIGINAL graph: each neuron's relative error of its whole
    quantised input row (all incoming connections side by side, scaled back to the float
    plan's units) against the float plan: ||back - ref|| / ||ref||. Comparable between a
    folded and a split plan (a split row's pieces are put back together first)."""
    meta, qmeta = plan.meta, qplan.meta
    in_name = meta["input"]["name"]
    frac = int(qmeta.get("input_frac", 0))
    vth = {p["name"]: int(p["vth"]) for p in qmeta["populations"]}
    orig = {p["name"]: p.get("group_of", p["name"]) for p in meta["populations"]}
    size = {}
    for p in merged_meta(meta)["populations"]:
        size[p["name"]] = int(p["size"])
    qconns = {c["id"]: c for c in qmeta["connections"]}
    err2 = {n: np.zeros(s) for n, s in size.items()}
    ref2 = {n: np.zeros(s) for n, s in size.items()}
    for c in meta["connections"]:
        t = c["target"]
        if t not in orig:
            continue
        q = qconns[c["id"]]
        ref = chain_matrix(plan.arrays, c["terms"], int(c["rows"]), int(c["cols"]))
        w = chain_matrix(qplan.arrays, q["terms"], int(q["rows"]), int(q["cols"]))
        back = w * 2.0 ** int(q["weight_exp"]) / vth[t] * (2.0 ** frac if c["source"] == in_name else 1.0)
        ri = plan.arrays.get(t + "__index", np.arange(ref.shape[0]))
        np.add.at(err2[orig[t]], ri, ((back - ref) ** 2).sum(axis=1))
        np.add.at(ref2[orig[t]], ri, (ref ** 2).sum(axis=1))
    return {n: np.sqrt(err2[n]) / np.where(ref2[n] > 0, np.sqrt(ref2[n]), np.inf) for n in err2}
