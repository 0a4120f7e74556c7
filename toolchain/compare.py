"""``spikebridge report --compare RUN_A RUN_B --out DIR``: two runs side by side.

Each run is a directory holding report.json (written by any ``spikebridge report``), a
demo run directory without one (its report is built first, into that directory), or a
report.json file. Writes DIR/compare.json (strict JSON) and DIR/compare.html (one
self-contained page, every input string escaped) and DIR/compare_energy.png.
Columns: A, B and B / A (None when A is 0 or either is missing).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from spikebridge.base.errors import InputError
from spikebridge.base.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from spikebridge.toolchain import report as _report

COMPARE_SCHEMA_VERSION = 1
TOTALS = ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample",
          "neuron_updates_per_sample", "ann_macs_per_sample")
COMPARE_SECTIONS = (("runs", "Runs"), ("accuracy", "Accuracy per backend"),
                    ("activity", "Operations and spikes per sample"), ("energy", "Energy per model"),
                    ("latency", "Latency"))


MAX_REPORT_BYTES = 64 << 20


def load_run_report(path) -> tuple[dict, str]:
    """(report dict, label) of a run directory or a report.json file."""
    p = Path(path)
    if p.is_dir():
        f = p / "report.json"
        if not f.is_file():
            if (p / "run.json").is_file():
                from spikebridge.toolchain.demo import report_run_dir
                report_run_dir(p)
            else:
                raise InputError("no report.json (and not a demo run directory): run "
                                 "`spikebridge report` on it first", file=str(p))
    elif p.is_file():
        f = p
    else:
        raise InputError("not found", file=str(p))
    from spikebridge.base.fileio import read_json
    data = read_json(f, MAX_REPORT_BYTES, InputError, allow_nan=True)  # bounded; nesting <= 64 levels
    if not isinstance(data, dict) or "schema_version" not in data or "energy" not in data:
        raise InputError("not a spikebridge report.json (no schema_version/energy)", file=str(f), place="top level")
    mj = f.parent / "checkpoint" / "model.json"  # a demo run: the training method, for the label
    if "method" not in data and os.path.lexists(mj):
        try:
            m = read_json(mj, 1 << 20, InputError).get("method")
            if isinstance(m, str):
                data["method"] = m[:40]
        except (InputError, AttributeError):
            pass
    return data, p.name if p.is_dir() else p.parent.name


def _num(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _ratio(a, b):
    a, b = _num(a), _num(b)
    return b / a if a not in (None, 0.0) and b is not None else None


def _row(a, b) -> dict:
    return {"a": _num(a), "b": _num(b), "b_over_a": _ratio(a, b)}


def _method(rep: dict):
    if isinstance(rep.get("method"), str):
        return rep["method"]
    train = ((rep.get("extra") or {}).get("train")) or {}
    return train.get("method") if isinstance(train, dict) else None


def compare_reports(a: dict, b: dict, label_a: str = "A", label_b: str = "B") -> dict:
    """The comparison as a dict (nothing written)."""
    def keys(field):
        out = list((a.get(field) or {}))
        return out + [k for k in (b.get(field) or {}) if k not in out]

    acc = {k: _row((a.get("accuracy") or {}).get(k), (b.get("accuracy") or {}).get(k))
           for k in keys("accuracy")}
    energy = {}
    for m in keys("energy"):
        ea, eb = (a.get("energy") or {}).get(m) or {}, (b.get("energy") or {}).get(m) or {}
        energy[m] = {**_row(ea.get("total_pj_per_sample"), eb.get("total_pj_per_sample")),
                     "kind": ea.get("kind") or eb.get("kind"),
                     "first_layer": [ea.get("first_layer"), eb.get("first_layer")],
                     "source": ea.get("source") or eb.get("source")}
    latency = {}
    for c in keys("latency"):
        la, lb = (a.get("latency") or {}).get(c) or {}, (b.get("latency") or {}).get(c) or {}
        latency[c] = {"seconds_per_sample": _row(la.get("seconds_per_sample"), lb.get("seconds_per_sample")),
                      "cores": _row(la.get("cores"), lb.get("cores")),
                      "chips": _row(la.get("chips"), lb.get("chips")),
                      "kind": "modelled"}
    ma = ((a.get("measured") or {}).get("onnx") or {})
    mb = ((b.get("measured") or {}).get("onnx") or {})
    if ma or mb:
        latency["onnxruntime (ANN, this CPU)"] = {
            "seconds_per_sample": _row(ma.get("latency_seconds_per_sample"), mb.get("latency_seconds_per_sample")),
            "kind": "measured"}
    runs = {side: {"label": lab, "graph_sha256": r.get("graph_sha256"), "backend": r.get("backend"),
                   "timesteps": r.get("timesteps"), "samples": r.get("samples"), "method": _method(r),
                   "first_layer": r.get("first_layer"), "schema_version": r.get("schema_version")}
            for side, lab, r in (("a", label_a, a), ("b", label_b, b))}
    return {"compare_schema_version": COMPARE_SCHEMA_VERSION, "runs": runs, "accuracy": acc,
            "totals": {k: _row(a.get(k), b.get(k)) for k in TOTALS}, "energy": energy,
            "latency": latency,
            "note": "b_over_a = B / A; energy and latency are modelled unless marked measured"}


def _plot(cmp: dict) -> bytes | None:
    import matplotlib.pyplot as plt

    en = {m: r for m, r in cmp["energy"].items() if r["a"] or r["b"]}
    if not en:
        return None
    names = list(en)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    la, lb = cmp["runs"]["a"]["label"], cmp["runs"]["b"]["label"]
    ax.barh(y - 0.2, [max(en[m]["a"] or 0, 1e-12) for m in names], 0.4, label=f"A: {_report._label(la)}",
            color="#4878a8")
    ax.barh(y + 0.2, [max(en[m]["b"] or 0, 1e-12) for m in names], 0.4, label=f"B: {_report._label(lb)}",
            color="#e0a040")
    ax.set_yticks(y, [_report._label(n) for n in names])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("pJ per sample (log scale)")
    ax.legend(fontsize="small")
    ax.set_title("energy per sample, A vs B")
    return _report._png(fig)


def render_compare_html(cmp: dict, png: bytes | None) -> str:
    e, num = _report._e, _report._num

    def trio(r, pct=False):
        f = (lambda v: "n/a" if v is None else f"{100 * v:.2f}%") if pct else num
        return [f(r["a"]), f(r["b"]), num(r["b_over_a"])]

    ra, rb = cmp["runs"]["a"], cmp["runs"]["b"]
    fields = ("label", "method", "backend", "timesteps", "samples", "first_layer", "graph_sha256")
    def cell(k, v):
        if v is None:
            return "n/a"
        return e(str(v)[:16] + "...") if k == "graph_sha256" else e(v)

    same = "same graph" if ra.get("graph_sha256") == rb.get("graph_sha256") else "different graphs"
    runs = _report._table(["", "A", "B"], [[e(k), cell(k, ra.get(k)), cell(k, rb.get(k))] for k in fields]) \
        + f"<p class=\"note\">{same} (sha256 in compare.json)</p>"
    acc = _report._table(["backend", "A", "B", "B / A"],
                         [[e(k)] + trio(r, True) for k, r in cmp["accuracy"].items()], (1, 2, 3))
    act = _report._table(["per sample", "A", "B", "B / A"],
                         [[e(k.replace("_per_sample", "").replace("_", " "))] + trio(r)
                          for k, r in cmp["totals"].items()], (1, 2, 3))
    img = ""
    if png:
        import base64
        img = f'<img alt="energy A vs B" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    en = img + _report._table(["model", "kind", "A pJ", "B pJ", "B / A", "first-layer rule (A, B)"],
                              [[e(m), e(r["kind"])] + trio(r) + [e(", ".join(str(x) for x in r["first_layer"]))]
                               for m, r in cmp["energy"].items()], (2, 3, 4))
    lat_rows = []
    for c, r in cmp["latency"].items():
        lat_rows.append([e(c), e(r["kind"])] + trio(r["seconds_per_sample"])
                        + ([num(r["cores"]["a"]), num(r["cores"]["b"])] if "cores" in r else ["", ""]))
    lat = _report._table(["what", "kind", "A s/sample", "B s/sample", "B / A", "A cores", "B cores"],
                         lat_rows, (2, 3, 4, 5, 6))
    content = {"runs": runs, "accuracy": acc, "activity": act, "energy": en, "latency": lat}
    sec = dict(COMPARE_SECTIONS)
    body = "".join(f'<section id="{k}"><h2>{e(sec[k])}</h2>{content[k]}</section>' for k, _ in COMPARE_SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>spikebridge comparison</title><style>{_report.STYLE}</style></head><body>"
            f"<h1>spikebridge comparison: A = {e(ra['label'])}, B = {e(rb['label'])}</h1>"
            f"<p class=\"note\">{e(cmp['note'])}</p>{body}</body></html>\n")


def compare_runs(run_a, run_b, out_dir) -> dict:
    """Load both runs, compare, write compare.json/html/png into ``out_dir``."""
    a, la = load_run_report(run_a)
    b, lb = load_run_report(run_b)
    if la == lb:
        la, lb = str(run_a), str(run_b)
    cmp = compare_reports(a, b, la, lb)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _plot(cmp)
    if png:
        atomic_write_bytes(out / "compare_energy.png", png)
    atomic_write_json(out / "compare.json", cmp)
    atomic_write_text(out / "compare.html", render_compare_html(cmp, png))
    return cmp
