"""The run report: ``report.json`` (strict JSON), ``report.html`` (one self-contained file)
and the PNG plots beside it.

Two callers, one shape:

* the demo pipeline: ``make_report(out, graph, trace, accuracy={"torch": .., "eventsim": ..,
  "lava": ..}, seed=.., graph_path=..)`` with the trace of one backend (eventsim);
* ``spikebridge report GRAPH.nir --input X.npy``: the CLI loads the graph, runs a backend
  on X to get a trace (and accuracy when labels are given) and calls the same function.

``build_report`` is pure (dict out, nothing written); ``write_report`` writes every file
atomically (hardware.fileio). Every string that reaches the HTML is escaped with
``html.escape``; the page has no scripts and no external resources.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import platform
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import nir  # noqa: E402
import numpy as np  # noqa: E402

from hardware import energy as _energy  # noqa: E402
from hardware import latency as _latency  # noqa: E402
from hardware.errors import InputError  # noqa: E402
from hardware.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from hardware.trace import Trace  # noqa: E402

SCHEMA_VERSION = 1
DEFAULT_ENERGY_MODELS = ("horowitz-45nm", "loihi", "truenorth")
DEFAULT_CHIPS = ("loihi",)
RASTER_MAX_NEURONS_PER_LAYER = 1000

SECTIONS = (
    ("accuracy", "Accuracy per backend"),
    ("firing", "Per-layer firing rates"),
    ("sops", "Synaptic operations per layer"),
    ("energy", "Energy per model"),
    ("latency", "Latency"),
    ("raster", "Spike raster (one sample)"),
    ("method", "How these numbers were computed"),
)

RULES = (
    "Synaptic op (SOP): one input spike event through one nonzero weight, counted exactly "
    "by the simulator, per node and step, summed over the batch; reported per sample.",
    "MAC: one nonzero analog input value through one nonzero weight (synapse nodes whose "
    "input is not spikes, e.g. the first layer under direct encoding, at every step).",
    "Firing rate: spikes / (neurons x T x samples), i.e. spikes per neuron per step.",
    "ANN MACs: one forward pass of the equivalent ANN from the graph (Affine/Linear: nonzero "
    "weights; Conv2d: in-bounds taps of nonzero weights, exact with padding; pools: output "
    "elements x kernel area).",
    "GPU-style energy: E_SNN = E_MAC x analog-layer MACs + E_AC x SOPs; E_ANN = E_MAC x ANN "
    "MACs. First-layer rule 'per_step' charges the MACs the trace measured at each of the T "
    "steps; 'once' divides them by T.",
    "Chip-style energy: synaptic ops + neuron updates (active/inactive) + spikes routed. "
    "Analog-layer MACs are charged as graded-spike synaptic ops. Active updates: all of a "
    "layer's updates in a step in which it received any input event, has a nonzero bias, or "
    "spiked (upper bound); otherwise inactive. Spikes: one within-tile message each (lower "
    "bound).",
    "Latency (Loihi-style): cores per layer = ceil(neurons/1024) x ceil(fan-in/4096); step "
    "time = barrier + slowest core's work (active updates x 8.4 ns + inactive x 5.3 ns + SOPs "
    "x 3.5 ns, a layer's work spread evenly over its cores); latency = (T + synaptic depth) "
    "x mean step time; samples/s = 1 / latency.",
)


# --------------------------------------------------------------------------- data


def graph_digest(graph: nir.NIRGraph) -> str:
    """sha256 of the graph's content (node names, types, parameters, edges, metadata)."""
    h = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
            a = np.ascontiguousarray(obj)
            h.update(f"nd{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(obj, dict):
            h.update(b"{")
            for k in sorted(obj, key=str):
                feed(str(k))
                feed(obj[k])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for v in obj:
                feed(v)
            h.update(b"]")
        else:
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        feed(name)
        feed(type(node).__name__)
        if is_dataclass(node):
            for f in fields(node):
                if f.name not in ("input_type", "output_type"):
                    feed(f.name)
                    feed(getattr(node, f.name, None))
    feed(sorted((str(a), str(b)) for a, b in graph.edges))
    feed(getattr(graph, "metadata", None) or {})
    return h.hexdigest()


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sum(trace: Trace, node: str, kind: str) -> float:
    c = trace.counts.get(node, {})
    return float(np.asarray(c[kind]).sum()) if kind in c else 0.0


def per_layer_stats(trace: Trace | None, graph: nir.NIRGraph) -> list[dict]:
    """One row per node that has neurons, weights or counts, in topological order.

    neurons (0 for non-neuron nodes), firing_rate (spikes per neuron per step; None for
    non-neuron nodes or without a trace), and per-sample synaptic ops, MACs, spikes and
    neuron updates as measured by the trace, plus the equivalent ANN's MACs.
    """
    info = _energy.analyse(graph)
    ann = _energy.ann_macs(graph)
    rows = []
    batch = max(int(trace.batch), 1) if trace else 1
    T = max(int(trace.timesteps), 1) if trace else 1
    names = list(info.order)
    if trace is not None:
        names += [n for n in trace.counts if n not in graph.nodes]
    for n in names:
        node = graph.nodes.get(n)
        is_neuron = isinstance(node, _energy.NEURON_TYPES)
        has_counts = trace is not None and n in trace.counts
        if not (is_neuron or n in ann or has_counts):
            continue
        neurons = int(np.prod(info.shapes[n])) if is_neuron and info.shapes[n] else 0
        row = {"node": n, "type": type(node).__name__ if node is not None else "unknown",
               "neurons": neurons, "firing_rate": None,
               "synaptic_ops_per_sample": None, "macs_per_sample": None,
               "spikes_per_sample": None, "neuron_updates_per_sample": None,
               "ann_macs_per_sample": ann.get(n, 0)}
        if trace is not None:
            spikes = _sum(trace, n, "spikes")
            row.update(synaptic_ops_per_sample=_sum(trace, n, "synaptic_ops") / batch,
                       macs_per_sample=_sum(trace, n, "macs") / batch,
                       spikes_per_sample=spikes / batch,
                       neuron_updates_per_sample=_sum(trace, n, "neuron_updates") / batch)
            if is_neuron and neurons and isinstance(node, _energy.SPIKING_TYPES):
                row["firing_rate"] = spikes / (neurons * T * batch)
        rows.append(row)
    return rows


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "nir": getattr(nir, "__version__", None), "matplotlib": matplotlib.__version__,
           "platform": platform.platform()}
    try:
        out["spikebridge"] = metadata.version("spikebridge")
    except metadata.PackageNotFoundError:
        out["spikebridge"] = None
    torch = sys.modules.get("torch")  # only if the caller already imported it
    if torch is not None:
        out["torch"] = getattr(torch, "__version__", None)
    return out


def build_report(graph: nir.NIRGraph, trace: Trace | None = None, *,
                 accuracy: dict[str, float | None] | None = None,
                 energy_models=DEFAULT_ENERGY_MODELS, chips=DEFAULT_CHIPS,
                 first_layer: str = "per_step", seed: int | None = None,
                 graph_path=None, graph_sha256: str | None = None,
                 versions: dict | None = None, extra: dict | None = None) -> dict:
    """The report as a dict (nothing written).

    accuracy: backend name -> fraction in [0, 1] (None when a backend was not run).
    energy_models: names of built-in models or ``EnergyModel`` objects (e.g. from
    ``hardware.energy.load_energy_model_toml``). chips: chip models for latency.
    graph_sha256: the file's hash; else computed from ``graph_path`` if given, else from
    the graph's content (``graph_sha256_of`` says which). versions: merged over the
    detected versions (e.g. {"torch": ..., "lava-nc": ...}).
    """
    acc = {}
    for k, v in (accuracy or {}).items():
        if v is not None:
            v = float(v)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise InputError(f"accuracy must be a fraction in [0, 1], got {v}",
                                 place=f"accuracy[{k!r}]")
        acc[str(k)] = v
    if graph_sha256 is not None:
        sha, sha_of = graph_sha256, "file"
    elif graph_path is not None:
        sha, sha_of = _file_sha256(graph_path), "file"
    else:
        sha, sha_of = graph_digest(graph), "graph content"
    md = (getattr(graph, "metadata", None) or {}).get("spikebridge", {}) or {}
    ann = _energy.ann_macs(graph)
    report = {
        "schema_version": SCHEMA_VERSION,
        "accuracy": acc,
        "backend": trace.backend if trace is not None else None,
        "timesteps": int(trace.timesteps) if trace is not None else md.get("timesteps"),
        "samples": int(trace.batch) if trace is not None else 0,
        "synaptic_ops_per_sample": trace.per_sample("synaptic_ops") if trace is not None else None,
        "macs_per_sample": trace.per_sample("macs") if trace is not None else None,
        "spikes_per_sample": trace.per_sample("spikes") if trace is not None else None,
        "neuron_updates_per_sample": trace.per_sample("neuron_updates") if trace is not None else None,
        "ann_macs_per_sample": int(sum(ann.values())),
        "energy": {},
        "latency": {},
        "per_layer": per_layer_stats(trace, graph),
        "first_layer": first_layer,
        "rules": list(RULES),
        "versions": {**_versions(), **(versions or {})},
        "seed": seed,
        "graph_sha256": sha,
        "graph_sha256_of": sha_of,
    }
    if trace is not None:
        for m in energy_models:
            model = _energy.get_model(m)
            r = _energy.estimate(trace, graph, model, first_layer)
            if model.kind == _energy.GPU_STYLE:  # show the other first-layer rule beside it
                other = "once" if first_layer == "per_step" else "per_step"
                o = _energy.estimate(trace, graph, model, other)
                r["other_first_layer_rule"] = {
                    "first_layer": other, "total_pj_per_sample": o["total_pj_per_sample"],
                    "snn_over_ann_ratio": o["snn_over_ann_ratio"]}
            report["energy"][model.name] = r
        for c in chips:
            r = _latency.estimate_latency(trace, graph, c)
            report["latency"][r["chip"]] = r
    if extra:
        report["extra"] = extra
    return report


# --------------------------------------------------------------------------- plots


def _label(s: str) -> str:
    """A node name as a matplotlib label: no mathtext ($) interpretation."""
    return str(s).replace("$", r"\$")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bar(names, values, title, ylabel) -> bytes:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    x = np.arange(len(names))
    ax.bar(x, values, color="#4878a8")
    ax.set_xticks(x, [_label(n) for n in names], rotation=45, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _png(fig)


def _raster(trace: Trace, order: list[str], sample: int = 0) -> bytes | None:
    layers = [n for n in order if n in trace.spikes] + [n for n in trace.spikes if n not in order]
    if not layers or trace.batch <= sample:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    total = sum(min(int(np.prod(np.shape(trace.spikes[n])[2:])), RASTER_MAX_NEURONS_PER_LAYER)
                for n in layers)
    size = float(np.clip(2000.0 / max(total, 1), 2.0, 60.0))
    offset = 0
    ticks, tick_names = [], []
    for n in layers:
        s = np.asarray(trace.spikes[n])
        s = s[:, sample].reshape(s.shape[0], -1)[:, :RASTER_MAX_NEURONS_PER_LAYER]
        t, i = np.nonzero(s)
        ax.scatter(t + 1, i + offset, s=size, marker="|")
        ticks.append(offset + s.shape[1] / 2)
        tick_names.append(_label(n))
        offset += s.shape[1]
        ax.axhline(offset - 0.5, color="0.8", lw=0.5)
    ax.set_yticks(ticks, tick_names)
    ax.set_xlabel("time step")
    ax.set_title(f"spikes of sample {sample} (first {RASTER_MAX_NEURONS_PER_LAYER} neurons per layer)")
    ax.set_xlim(0.5, trace.timesteps + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _png(fig)


def make_plots(report: dict, trace: Trace | None = None) -> dict[str, bytes]:
    """PNG bytes by file name."""
    rows = report.get("per_layer", [])
    plots = {}
    fr = [r for r in rows if r.get("firing_rate") is not None]
    if fr:
        plots["firing_rates.png"] = _bar([r["node"] for r in fr], [r["firing_rate"] for r in fr],
                                         "firing rate per layer", "spikes / neuron / step")
    ops = [r for r in rows if (r.get("synaptic_ops_per_sample") or 0) + (r.get("macs_per_sample") or 0) > 0]
    if ops:
        names = [r["node"] for r in ops]
        sop = np.array([r["synaptic_ops_per_sample"] or 0.0 for r in ops])
        mac = np.array([r["macs_per_sample"] or 0.0 for r in ops])
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
        x = np.arange(len(names))
        ax.bar(x, sop, color="#4878a8", label="synaptic ops (spike events)")
        ax.bar(x, mac, bottom=sop, color="#e0a040", label="MACs (analog input)")
        ax.set_xticks(x, [_label(n) for n in names], rotation=45, ha="right")
        ax.set_title("synaptic ops and analog MACs per layer")
        ax.set_ylabel("per sample")
        ax.set_ylim(0, max(float((sop + mac).max()), 1.0) * 1.35)
        ax.legend(fontsize="small", loc="upper right")
        plots["synaptic_ops.png"] = _png(fig)
    if trace is not None:
        order = [r["node"] for r in rows]
        png = _raster(trace, order)
        if png is not None:
            plots["spike_raster.png"] = png
    return plots


# --------------------------------------------------------------------------- HTML


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return "n/a" if not math.isfinite(float(x)) else f"{float(x):.4g}"
    return _e(x)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(plots: dict[str, bytes], name: str, alt: str) -> str:
    if name not in plots:
        return "<p>(no data for this plot)</p>"
    b64 = base64.b64encode(plots[name]).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    sec = dict(SECTIONS)
    parts = []
    # accuracy
    acc = report.get("accuracy") or {}
    rows = [[_e(k), "not run" if v is None else f"{100 * v:.2f}%"] for k, v in acc.items()]
    parts.append(("accuracy", _table(["backend", "accuracy"], rows) if rows
                  else "<p>No accuracy was measured (no labels).</p>"))
    # firing rates + per-layer table
    pl = report.get("per_layer", [])
    rows = [[_e(r["node"]), _e(r["type"]), _num(r["neurons"]), _num(r["firing_rate"]),
             _num(r["synaptic_ops_per_sample"]), _num(r["macs_per_sample"]),
             _num(r["spikes_per_sample"]), _num(r["ann_macs_per_sample"])] for r in pl]
    parts.append(("firing", _img(plots, "firing_rates.png", "firing rate per layer")
                  + _table(["node", "type", "neurons", "firing rate", "SOPs/sample",
                            "MACs/sample", "spikes/sample", "ANN MACs/sample"], rows)))
    tot = (f"<p>Total per sample: {_num(report.get('synaptic_ops_per_sample'))} synaptic ops, "
           f"{_num(report.get('macs_per_sample'))} analog MACs, "
           f"{_num(report.get('spikes_per_sample'))} spikes; equivalent ANN: "
           f"{_num(report.get('ann_macs_per_sample'))} MACs.</p>")
    parts.append(("sops", _img(plots, "synaptic_ops.png", "synaptic ops per layer") + tot))
    # energy
    en = []
    for name, r in (report.get("energy") or {}).items():
        ops = [[_e(k.replace("_pj_per_sample", "")), _num(v)]
               for k, v in r.get("per_operation_pj_per_sample", {}).items()]
        nodes = [[_e(k), _num(v)] for k, v in r.get("per_node_pj_per_sample", {}).items()]
        summary = (f"<p>kind: <b>{_e(r.get('kind'))}</b>; total "
                   f"<b>{_num(r.get('total_pj_per_sample'))} pJ per sample</b>; first-layer "
                   f"rule: {_e(r.get('first_layer'))}")
        if "ann_pj_per_sample" in r:
            summary += (f"; equivalent ANN {_num(r['ann_pj_per_sample'])} pJ per sample; "
                        f"SNN/ANN = {_num(r.get('snn_over_ann_ratio'))}")
        alt = r.get("other_first_layer_rule")
        if alt:
            summary += (f". With first-layer rule {_e(alt['first_layer'])}: "
                        f"{_num(alt['total_pj_per_sample'])} pJ per sample, SNN/ANN = "
                        f"{_num(alt['snn_over_ann_ratio'])}")
        summary += "</p>"
        en.append(f"<h3>{_e(name)}</h3>{summary}"
                  + _table(["operation", "pJ / sample"], ops)
                  + _table(["node", "pJ / sample"], nodes))
    parts.append(("energy", "".join(en) or "<p>No trace: no energy estimate.</p>"))
    # latency
    la = []
    for chip, r in (report.get("latency") or {}).items():
        rows = [[_e(k), _num(v["neurons"]), _num(v["fan_in"]), _num(v["cores"]),
                 _num(v["mean_core_work_ns_per_step"])] for k, v in r.get("per_layer", {}).items()]
        la.append(
            f"<h3>{_e(chip)}</h3><p>{_num(r.get('cores'))} cores on {_num(r.get('chips'))} "
            f"chip(s); T = {_num(r.get('timesteps'))}, synaptic depth "
            f"{_num(r.get('synaptic_depth'))}; mean step time "
            f"{_num((r.get('mean_step_time_s') or 0) * 1e9)} ns (barrier "
            f"{_num(r.get('barrier_ns'))} ns); <b>{_num(r.get('seconds_per_sample'))} s per "
            f"sample</b>, {_num(r.get('samples_per_second'))} samples/s; time to first "
            f"output {_num(r.get('time_to_first_output_s'))} s.</p>"
            + _table(["layer", "neurons", "fan-in", "cores", "mean core work ns/step"], rows))
    parts.append(("latency", "".join(la) or "<p>No trace: no latency estimate.</p>"))
    parts.append(("raster", _img(plots, "spike_raster.png", "spike raster")))
    # method
    m = "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in report.get("rules", [])) + "</ul>"
    crow = []
    for name, r in (report.get("energy") or {}).items():
        for op, c in r.get("constants", {}).items():
            crow.append([_e(name), _e(op), f"{_num(c['value_pj'])} pJ", _e(c["source"])])
    for chip, r in (report.get("latency") or {}).items():
        for k, c in r.get("constants", {}).items():
            crow.append([_e(chip), _e(k), _num(c["value"]), _e(c["source"])])
    if crow:
        m += _table(["model", "constant", "value", "source"], crow)
    prov = [[_e(k), _e(v)] for k, v in (report.get("versions") or {}).items()]
    prov += [["seed", _e(report.get("seed"))], ["graph sha256", _e(report.get("graph_sha256"))],
             ["schema version", _e(report.get("schema_version"))]]
    m += _table(["provenance", "value"], prov)
    parts.append(("method", m))

    body = "".join(f'<section id="{key}"><h2>{_e(sec[key])}</h2>{content}</section>'
                   for key, content in parts)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>spikebridge report</title>"
            f"<style>{style}</style></head><body><h1>spikebridge report</h1>{body}"
            "</body></html>\n")


def write_report(out_dir, report: dict, trace: Trace | None = None,
                 graph: nir.NIRGraph | None = None) -> dict[str, Path]:
    """Write report.json, report.html and the PNG plots into ``out_dir`` (atomically, each).

    ``trace`` supplies the spike raster; ``graph`` is accepted for callers that hold one
    (the layer order already comes from ``report["per_layer"]``). Returns paths by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(report, trace)
    paths = {}
    for name, data in plots.items():
        atomic_write_bytes(out / name, data)
        paths[name] = out / name
    atomic_write_json(out / "report.json", report)
    paths["report.json"] = out / "report.json"
    atomic_write_text(out / "report.html", render_html(report, plots))
    paths["report.html"] = out / "report.html"
    return paths


def make_report(out_dir, graph: nir.NIRGraph, trace: Trace | None = None, **kwargs) -> dict:
    """``build_report`` then ``write_report``; returns the report dict."""
    report = build_report(graph, trace, **kwargs)
    write_report(out_dir, report, trace=trace, graph=graph)
    return report
