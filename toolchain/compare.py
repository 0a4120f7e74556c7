"""``spikebridge report --compare RUN RUN [RUN ...] --out DIR``: any number of runs side by side.

Each run is a directory holding report.json (written by any ``spikebridge report``), a
demo run directory without one (its report is built first, into that directory), or a
report.json file. Writes into DIR:

- compare.json (strict JSON): per row one value per run, in the order given, and the ratio
  of each run to the first (``over_first``);
- compare.csv: one line per run (label, method, T, accuracy, energy per chip model, latency,
  NeuroBench metrics);
- compare.html: one self-contained page (every input string escaped);
- compare_pareto.svg and compare_pareto.png (200 dpi): accuracy versus energy per inference
  (and versus latency) under one chip model, the Pareto front marked (runs no other run beats
  on both accuracy and cost).

The same plot (``pareto_figure``) is what ``spikebridge bench methods`` draws for every
method and T.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from spikebridge.base.errors import InputError
from spikebridge.base.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from spikebridge.toolchain import report as _report

COMPARE_SCHEMA_VERSION = 2
MAX_RUNS = 64
TOTALS = ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample",
          "neuron_updates_per_sample", "ann_macs_per_sample")
NEUROBENCH_ROWS = (("footprint_bytes", "footprint (B)"), ("connection_sparsity", "connection sparsity"),
                   ("activation_sparsity", "activation sparsity"),
                   ("synaptic_operations.Effective_MACs", "Effective MACs"),
                   ("synaptic_operations.Effective_ACs", "Effective ACs"),
                   ("synaptic_operations.Dense", "Dense synaptic ops"),
                   ("membrane_updates", "membrane updates"),
                   ("neuron_operations.Effective Neuron Ops", "neuron ops (effective)"))
COMPARE_SECTIONS = (("runs", "Runs"), ("pareto", "Accuracy versus energy and latency"),
                    ("accuracy", "Accuracy per backend"),
                    ("activity", "Operations and spikes per sample"), ("energy", "Energy per model"),
                    ("latency", "Latency"), ("neurobench", "NeuroBench metrics"))
# The chip model of the Pareto plot (the first of these every run has), and its axis name.
PARETO_ENERGY_MODELS = ("loihi", "truenorth", "spinnaker2", "spinnaker")
CHIP_AXIS = {"loihi": "Loihi (Davies et al. 2018, Table 2)", "truenorth": "TrueNorth (Merolla et al. 2014)",
             "spinnaker": "SpiNNaker (keras-spiking table)", "spinnaker2": "SpiNNaker 2 (keras-spiking table)"}
# The accuracy a run is placed by: the report's own backend, else the first of these present.
ACCURACY_ORDER = ("eventsim", "lava", "lava-fixed", "lava-float", "loihi-fixed", "torch")
MAX_REPORT_BYTES = 64 << 20
REPORT_ADVICE = ("give a folder holding report.json, a demo run directory, or a report.json file "
                 "(`spikebridge report GRAPH.nir --dataset NAME --out DIR` writes one)")


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
                raise InputError(f"no report.json in this folder and it is not a demo run directory; "
                                 f"{REPORT_ADVICE}", file=str(p))
    elif p.is_file():
        f = p
    else:
        raise InputError(f"not found; {REPORT_ADVICE}", file=str(p))
    from spikebridge.base.fileio import read_json
    data = read_json(f, MAX_REPORT_BYTES, InputError, allow_nan=True)  # bounded; nesting <= 64 levels
    if not isinstance(data, dict) or "schema_version" not in data or "energy" not in data:
        raise InputError(f"not a spikebridge report.json (no schema_version/energy); {REPORT_ADVICE}",
                         file=str(f), place="top level")
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


def _row(values) -> dict:
    """{"values": [...], "over_first": [v / first]} (None where missing or first is 0)."""
    vals = [_num(v) for v in values]
    first = vals[0]
    over = [None if first in (None, 0.0) or v is None else v / first for v in vals]
    return {"values": vals, "over_first": over}


def _get(d, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _method(rep: dict):
    if isinstance(rep.get("method"), str):
        return rep["method"]
    train = ((rep.get("extra") or {}).get("train")) or {}
    return train.get("method") if isinstance(train, dict) else None


def headline_accuracy(rep: dict) -> tuple[str | None, float | None]:
    """(backend, accuracy) a run is placed by on the Pareto plot: the accuracy of the report's
    own backend, else the first of ACCURACY_ORDER present, else the first recorded (None when
    the report has no accuracy, e.g. a graph run on X.npy without labels)."""
    acc = {k: _num(v) for k, v in (rep.get("accuracy") or {}).items() if _num(v) is not None}
    for k in (rep.get("backend"), *ACCURACY_ORDER):
        if k in acc:
            return k, acc[k]
    for k, v in acc.items():
        if k != "onnx_ann":
            return k, v
    return None, None


def pareto_front(points: list[tuple[float | None, float | None]]) -> list[bool]:
    """For (accuracy, cost) points: True where no other point has accuracy >= and cost <=
    with one of them strictly better. Points with a missing value are never on the front."""
    out = []
    for i, (a, c) in enumerate(points):
        if a is None or c is None:
            out.append(False)
            continue
        dominated = any(j != i and a2 is not None and c2 is not None and a2 >= a and c2 <= c
                        and (a2 > a or c2 < c) for j, (a2, c2) in enumerate(points))
        out.append(not dominated)
    return out


def _common(reports: list[dict], field: str, prefer: tuple[str, ...]) -> str | None:
    have = [set((r.get(field) or {})) for r in reports]
    common = set.intersection(*have) if have else set()
    for k in prefer:
        if k in common:
            return k
    return sorted(common)[0] if common else None


def compare_reports(reports: list[dict], labels: list[str]) -> dict:
    """The N-way comparison as a dict (nothing written); ratios are to the first run."""
    if len(reports) != len(labels):
        raise ValueError("one label per report")

    def keys(field):
        out: list[str] = []
        for r in reports:
            out += [k for k in (r.get(field) or {}) if k not in out]
        return out

    acc = {k: _row([(r.get("accuracy") or {}).get(k) for r in reports]) for k in keys("accuracy")}
    energy = {}
    for m in keys("energy"):
        es = [(r.get("energy") or {}).get(m) or {} for r in reports]
        energy[m] = {**_row([e.get("total_pj_per_sample") for e in es]),
                     "kind": next((e.get("kind") for e in es if e.get("kind")), None),
                     "first_layer": [e.get("first_layer") for e in es],
                     "source": next((e.get("source") for e in es if e.get("source")), None)}
    latency = {}
    for c in keys("latency"):
        ls = [(r.get("latency") or {}).get(c) or {} for r in reports]
        latency[c] = {"seconds_per_sample": _row([x.get("seconds_per_sample") for x in ls]),
                      "cores": _row([x.get("cores") for x in ls]),
                      "chips": _row([x.get("chips") for x in ls]), "kind": "modelled"}
    ms = [((r.get("measured") or {}).get("onnx") or {}) for r in reports]
    if any(ms):
        latency["onnxruntime (ANN, this CPU)"] = {
            "seconds_per_sample": _row([m.get("latency_seconds_per_sample") for m in ms]), "kind": "measured"}
    nb = {key: _row([_get(r.get("neurobench"), key) for r in reports]) for key, _ in NEUROBENCH_ROWS}
    runs = []
    for lab, r in zip(labels, reports):
        backend, a = headline_accuracy(r)
        runs.append({"label": lab, "graph_sha256": r.get("graph_sha256"), "backend": r.get("backend"),
                     "timesteps": r.get("timesteps"), "samples": r.get("samples"), "method": _method(r),
                     "first_layer": r.get("first_layer"), "schema_version": r.get("schema_version"),
                     "accuracy": a, "accuracy_backend": backend})
    em = _common(reports, "energy", PARETO_ENERGY_MODELS)
    chip = _common(reports, "latency", ("loihi",))
    pts_acc = [r["accuracy"] for r in runs]
    e_pj = [_num(_get(r, f"energy.{em}.total_pj_per_sample")) if em else None for r in reports]
    lat = [_num(_get(r, f"latency.{chip}.seconds_per_sample")) if chip else None for r in reports]
    fe, fl = pareto_front(list(zip(pts_acc, e_pj))), pareto_front(list(zip(pts_acc, lat)))
    pareto = {"energy_model": em, "latency_chip": chip,
              "points": [{"label": r["label"], "accuracy": r["accuracy"], "accuracy_backend": r["accuracy_backend"],
                          "energy_pj_per_sample": e, "latency_seconds_per_sample": t,
                          "on_energy_front": a, "on_latency_front": b}
                         for r, e, t, a, b in zip(runs, e_pj, lat, fe, fl)]}
    return {"compare_schema_version": COMPARE_SCHEMA_VERSION, "runs": runs, "accuracy": acc,
            "totals": {k: _row([r.get(k) for r in reports]) for k in TOTALS}, "energy": energy,
            "latency": latency, "neurobench": nb, "pareto": pareto,
            "note": "values are per run in the order given; over_first = run / first run; energy and "
                    "latency are modelled unless marked measured"}


# ---------------------------------------------------------------------------- the plot

def _si_time(seconds: list[float]) -> tuple[float, str]:
    m = max((s for s in seconds if s), default=1.0)
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if m >= scale:
            return scale, unit
    return 1e-9, "ns"


def pareto_figure(points: list[dict], axes: list[tuple[str, str]],
                  title: str = "accuracy versus cost") -> tuple[bytes, bytes] | None:
    """(SVG, PNG at 200 dpi): accuracy versus each cost in ``axes``, one panel each; Pareto
    front points filled and joined, the others hollow; runs at the same point share a label.

    points: dicts with ``label``, ``accuracy`` (fraction) and the cost keys. axes: (key,
    what it is, e.g. the chip model) pairs; ``energy_pj_per_sample`` is drawn in µJ,
    ``latency_seconds_per_sample`` in s/ms/µs/ns, any other key as a plain count.
    None when no point has an accuracy and a cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for key, axis in axes:
        pts = [p for p in points if _num(p.get("accuracy")) is not None and _num(p.get(key))]
        if pts:
            panels.append((key, axis, pts))
    if not panels:
        return None
    big = max(len(p) for _, _, p in panels) > 10
    fig, axes = plt.subplots(1, len(panels), figsize=((7.5 if big else 5.6) * len(panels), 5.6 if big else 4.4),
                             squeeze=False)
    for ax, (key, axis, pts) in zip(axes[0], panels):
        if key == "energy_pj_per_sample":
            scale, xlabel = 1e6, f"energy per inference (µJ), {axis}"
        elif key == "latency_seconds_per_sample":
            scale, unit = _si_time([p[key] for p in pts])
            xlabel = f"latency per inference ({unit}), {axis}"
        else:
            scale, xlabel = 1.0, axis
        xs = [p[key] / scale for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        front = pareto_front(list(zip(ys, xs)))
        ax.scatter([x for x, f in zip(xs, front) if not f], [y for y, f in zip(ys, front) if not f],
                   facecolors="none", edgecolors="#4878a8", s=40, label="dominated")
        fx = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
        ax.plot([x for x, _ in fx], [y for _, y in fx], "o-", color="#c0392b", ms=7, lw=1.5,
                drawstyle="steps-post", label="Pareto front")
        at: dict = {}  # runs at the same point share one label
        for x, y, p in zip(xs, ys, pts):
            at.setdefault((x, y), []).append(str(p.get("label", ""))[:32])
        for (x, y), names in at.items():
            ax.annotate(_report._label(", ".join(names)), (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.margins(0.12)
        if len(xs) > 1 and max(xs) / max(min(xs), 1e-300) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(_report._label(xlabel), fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.suptitle(_report._label(title), fontsize=11)
    fig.tight_layout()
    svg, png = io.BytesIO(), io.BytesIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    fig.savefig(png, format="png", dpi=200, bbox_inches="tight")
    plt.close(fig)
    return svg.getvalue(), png.getvalue()


# ---------------------------------------------------------------------------- the page

def _csv(cmp: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    energy = list(cmp["energy"])
    lat = [c for c, r in cmp["latency"].items() if r.get("kind") == "modelled"]
    w.writerow(["label", "method", "timesteps", "backend", "accuracy", "accuracy_backend",
                *[f"energy_pj_per_sample[{m}]" for m in energy], *[f"latency_s_per_sample[{c}]" for c in lat],
                *TOTALS, *[f"neurobench.{k}" for k, _ in NEUROBENCH_ROWS]])
    for i, r in enumerate(cmp["runs"]):
        w.writerow([r["label"], r["method"], r["timesteps"], r["backend"], r["accuracy"], r["accuracy_backend"],
                    *[cmp["energy"][m]["values"][i] for m in energy],
                    *[cmp["latency"][c]["seconds_per_sample"]["values"][i] for c in lat],
                    *[cmp["totals"][k]["values"][i] for k in TOTALS],
                    *[cmp["neurobench"][k]["values"][i] for k, _ in NEUROBENCH_ROWS]])
    return buf.getvalue()


def render_compare_html(cmp: dict, png: bytes | None) -> str:
    e, num, table = _report._e, _report._num, _report._table
    runs = cmp["runs"]
    n = len(runs)
    head = [""] + [f"{i + 1}: {r['label']}" for i, r in enumerate(runs)]
    cols = tuple(range(1, n + 1))

    def vals(r, pct=False):
        f = (lambda v: "n/a" if v is None else f"{100 * v:.2f}%") if pct else num
        out = [f(v) for v in r["values"]]
        if n > 1:
            out = [out[0]] + [f"{v} <span class=\"note\">(x{num(o)})</span>" if o is not None else v
                              for v, o in zip(out[1:], r["over_first"][1:])]
        return out

    fields = ("label", "method", "backend", "timesteps", "samples", "first_layer", "accuracy_backend",
              "graph_sha256")

    def cell(k, v):
        if v is None:
            return "n/a"
        return e(str(v)[:16] + "...") if k == "graph_sha256" else e(v)

    shas = {r.get("graph_sha256") for r in runs}
    same = "all the same graph" if len(shas) == 1 else f"{len(shas)} different graphs"
    sec_runs = table(head, [[e(k)] + [cell(k, r.get(k)) for r in runs] for k in fields]) \
        + f"<p class=\"note\">{same} (sha256 in compare.json); (xN) = that run / run 1</p>"
    p = cmp["pareto"]
    img = ""
    if png:
        import base64
        img = (f'<img alt="accuracy versus energy and latency" '
               f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    lat_scale, lat_unit = _si_time([q["latency_seconds_per_sample"] or 0.0 for q in p["points"]])
    prow = [[e(q["label"]), "n/a" if q["accuracy"] is None else f"{100 * q['accuracy']:.2f}%",
             e(q["accuracy_backend"] or "n/a"), num(None if q["energy_pj_per_sample"] is None
                                                    else q["energy_pj_per_sample"] / 1e6),
             num(None if q["latency_seconds_per_sample"] is None else q["latency_seconds_per_sample"] / lat_scale),
             "yes" if q["on_energy_front"] else "",
             "yes" if q["on_latency_front"] else ""] for q in p["points"]]
    sec_pareto = img + table(["run", "accuracy", "of backend", f"µJ per inference ({p['energy_model']})",
                              f"{lat_unit} per inference ({p['latency_chip']})", "on energy front",
                              "on latency front"],
                             prow, (1, 3, 4)) \
        + ("<p class=\"note\">Pareto front: no other run is at least as accurate and at most as costly "
           "(one of the two strictly). Energy and latency are modelled.</p>")
    acc = table(["backend"] + head[1:], [[e(k)] + vals(r, True) for k, r in cmp["accuracy"].items()], cols)
    act = table(["per sample"] + head[1:], [[e(k.replace("_per_sample", "").replace("_", " "))] + vals(r)
                                            for k, r in cmp["totals"].items()], cols)
    en = table(["model (pJ per sample)", "kind"] + head[1:],
               [[e(m), e(r["kind"])] + vals(r) for m, r in cmp["energy"].items()], tuple(c + 1 for c in cols))
    lat = table(["what", "kind"] + head[1:],
                [[e(c) + " s/sample", e(r["kind"])] + vals(r["seconds_per_sample"]) for c, r in cmp["latency"].items()]
                + [[e(c) + " cores", e(r["kind"])] + vals(r["cores"]) for c, r in cmp["latency"].items()
                   if "cores" in r], tuple(c + 1 for c in cols))
    nb = table(["NeuroBench metric"] + head[1:],
               [[e(name)] + vals(cmp["neurobench"][k]) for k, name in NEUROBENCH_ROWS], cols)
    content = {"runs": sec_runs, "pareto": sec_pareto, "accuracy": acc, "activity": act, "energy": en,
               "latency": lat, "neurobench": nb}
    sec = dict(COMPARE_SECTIONS)
    body = "".join(f'<section id="{k}"><h2>{e(sec[k])}</h2>{content[k]}</section>' for k, _ in COMPARE_SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>spikebridge comparison</title><style>{_report.STYLE}</style></head><body>"
            f"<h1>spikebridge comparison of {n} runs</h1>"
            f"<p class=\"note\">{e(cmp['note'])}</p>{body}</body></html>\n")


def compare_runs(runs, out_dir) -> dict:
    """Load every run (at least two), compare, write compare.json/csv/html and the Pareto plot
    (compare_pareto.svg/png) into ``out_dir``; returns the comparison dict."""
    runs = list(runs)
    if len(runs) < 2:
        raise InputError(f"--compare needs at least two runs, got {len(runs)}", place="--compare")
    if len(runs) > MAX_RUNS:
        raise InputError(f"--compare takes at most {MAX_RUNS} runs, got {len(runs)}", place="--compare")
    loaded = [load_run_report(r) for r in runs]
    labels = [lab for _, lab in loaded]
    if len(set(labels)) < len(labels):  # two folders of the same name: their paths tell them apart
        labels = [lab if labels.count(lab) == 1 else str(r) for lab, r in zip(labels, runs)]
    cmp = compare_reports([rep for rep, _ in loaded], labels)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", file=str(out), place="--out")
    out.mkdir(parents=True, exist_ok=True)
    p = cmp["pareto"]
    fig = pareto_figure(p["points"], [
        ("energy_pj_per_sample", CHIP_AXIS.get(p["energy_model"], f"{p['energy_model']} model")),
        ("latency_seconds_per_sample", f"{CHIP_AXIS.get(p['latency_chip'], p['latency_chip'])} timing and "
                                       "mapping model")], title=f"{len(runs)} runs: accuracy versus modelled cost")
    png = None
    if fig:
        svg, png = fig
        atomic_write_bytes(out / "compare_pareto.svg", svg)
        atomic_write_bytes(out / "compare_pareto.png", png)
    atomic_write_json(out / "compare.json", cmp)
    atomic_write_text(out / "compare.csv", _csv(cmp))
    atomic_write_text(out / "compare.html", render_compare_html(cmp, png))
    return cmp
