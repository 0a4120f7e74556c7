"""The run report: ``report.json`` (strict JSON), ``report.html`` (one self-contained file)
and the PNG plots beside it.

Two callers, one shape:

* the demo pipeline: ``make_report(out, graph, trace, accuracy={"torch": .., "eventsim": ..,
  "lava": ..}, seed=.., graph_path=..)`` with the trace of one backend (eventsim);
* ``spikebridge report GRAPH.nir (--input X.npy | --dataset NAME)``: ``report_graph``
  loads the graph, runs a backend to get a trace (and accuracy when labels are given) and
  calls the same function;
* ``spikebridge report --compare RUN_A RUN_B``: ``spikebridge.toolchain.compare``.

``build_report`` is pure (dict out, nothing written); ``write_report`` writes every file
atomically (spikebridge.base.fileio). Every string that reaches the HTML is escaped with
``html.escape``; the page has no scripts and no external resources.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import os
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

from spikebridge.hardware import energy as _energy  # noqa: E402
from spikebridge.hardware import latency as _latency  # noqa: E402
from spikebridge.base.errors import InputError  # noqa: E402
from spikebridge.base.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from spikebridge.hardware.trace import Trace  # noqa: E402
from spikebridge.hardware import neurobench as _neurobench  # noqa: E402

SCHEMA_VERSION = 2
DEFAULT_ENERGY_MODELS = ("horowitz-45nm", "loihi", "truenorth", *_energy.KERAS_SPIKING_DEVICES)
DEFAULT_CHIPS = ("loihi",)
RASTER_MAX_NEURONS_PER_LAYER = 1000

SECTIONS = (
    ("accuracy", "Accuracy per backend"),
    ("firing", "Per-layer firing rates"),
    ("sops", "Synaptic operations per layer"),
    ("neurobench", "NeuroBench metrics"),
    ("energy", "Energy per model"),
    ("latency", "Latency"),
    ("raster", "Spike raster (one sample)"),
    ("sweep", "Accuracy vs T"),
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
    "ANN-device energy (keras-spiking's cpu, gpu, arm): the equivalent ANN on a conventional "
    "device, E = e_synop x ANN MACs + e_neuron x ANN activations (one per neuron), once per "
    "inference, independent of the trace and of T. SpiNNaker / SpiNNaker 2 (keras-spiking's "
    "spiking devices) are chip-style with one cost for every neuron update and no spike term.",
    "Energy ratio SNN/ANN (GPU-style models): E_SNN / E_ANN under the same constants.",
    "Mapping (Loihi-style): cores per layer = max(ceil(neurons/1024) x ceil(fan-in/4096), "
    "ceil(synapses x weight bits / (128 KB x 8))); synapses = nonzero (source, target) pairs "
    "(no weight sharing on Loihi; exact for one weighted node, neurons x fan-in for a fused "
    "chain); weight bits default to 8; only weight bits are counted (a lower bound); chips = "
    "ceil(cores/128). A width outside 1-8 bits or more chips than allowed is refused.",
    "Latency (Loihi-style): step time = barrier + slowest core's work (active updates x 8.4 "
    "ns + inactive x 5.3 ns + SOPs and analog MACs x 3.5 ns, a layer's work spread evenly over "
    "its cores); latency = (T + synaptic depth) x mean step time, each fused synaptic "
    "connection adding one step of delay; samples/s = 1 / latency (one sample at a time); "
    "time to first output = (first step with a nonzero output + depth) x mean step time.",
    "Measured baseline: the ANN branch's ONNX model in onnxruntime on this CPU (one thread), "
    "latency of one sample and throughput of the whole batch, wall clock: measured, not "
    "modelled, and not comparable across machines.",
    "Accuracy: the class is the argmax of the output summed over T (analog readout) or the "
    "most spikes (spiking readout); accuracy vs T re-runs the same graph at each T with "
    "direct encoding.",
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
                 versions: dict | None = None, extra: dict | None = None,
                 measured: dict | None = None, sweep=None, weight_bits=None,
                 max_chips: int | None = None, inputs: dict | None = None, samples=None) -> dict:
    """The report as a dict (nothing written).

    accuracy: backend name -> fraction in [0, 1] (None when a backend was not run).
    energy_models: names of built-in models or ``EnergyModel`` objects (e.g. from
    ``spikebridge.hardware.energy.load_energy_model_toml``). chips: chip models for latency.
    graph_sha256: the file's hash; else computed from ``graph_path`` if given, else from
    the graph's content (``graph_sha256_of`` says which). versions: merged over the
    detected versions (e.g. {"torch": ..., "lava-nc": ...}).
    first_layer: "per_step" or "once", the rule of GPU-style models (the other is shown
    beside it). measured: the ONNX baseline as the demo stores it in run.json's ``onnx``
    (``latency_seconds_per_sample``, ``throughput_samples_per_second``, ``accuracy``).
    sweep: accuracy vs T (see ``normalise_sweep``). weight_bits, max_chips: the mapping's
    (``spikebridge.hardware.latency.map_cores``). inputs: what was run (graph, data, backend...).
    samples: the run's input (T, batch, ...), for the NeuroBench metrics' eventsim replay.
    """
    if first_layer not in _energy.FIRST_LAYER_RULES:
        raise InputError(f"first-layer rule must be one of {_energy.FIRST_LAYER_RULES}, got "
                         f"{first_layer!r}", place="--first-layer")
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
        "neurobench": _neurobench.report_entry(graph, trace, x=samples, profile=(inputs or {}).get("profile")),
        "first_layer": first_layer,
        "first_layer_rule": FIRST_LAYER_TEXT[first_layer],
        "input_layer": _energy.input_layer_rule(graph, trace),  # binary input: synaptic ops; analog: MACs
        "measured": _measured(measured),
        "sweep": normalise_sweep(sweep) if sweep is not None else None,
        "inputs": inputs or {},
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
            r = _latency.estimate_latency(trace, graph, c, weight_bits=weight_bits,
                                          max_chips=max_chips)
            report["latency"][r["chip"]] = r
    if extra:
        report["extra"] = extra
    return report


FIRST_LAYER_TEXT = {
    "per_step": "per_step: the analog first layer's MACs count at each of the T steps (what "
                "the trace measured under direct encoding)",
    "once": "once: the analog first layer's MACs count once per sample (the trace's MACs / T; "
            "the convention of papers that compute the first layer once and reuse it)",
}


def _measured(m: dict | None) -> dict:
    """The measured ONNX baseline, labelled; {} when none."""
    if not isinstance(m, dict) or not m:
        return {}
    out = {}
    for k in ("latency_seconds_per_sample", "throughput_samples_per_second", "accuracy", "threads"):
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
            out[k] = v
    if isinstance(m.get("provider"), str):
        out["provider"] = m["provider"][:100]
    if not out:
        return {}
    return {"onnx": {**out, "label": "measured (onnxruntime on this CPU, wall clock)"}}


def normalise_sweep(sweep) -> list[dict]:
    """Accuracy vs T as ``[{"timesteps": T, "accuracy": {backend: fraction}}, ...]`` sorted by T.

    Accepts that list (accuracy a fraction or a dict per backend), a dict
    ``{"timesteps": [...], "accuracy": [...]}``, or an array of shape (N, 2) of (T, accuracy).
    Raises InputError on anything else (T a positive integer, accuracy in [0, 1])."""
    place = "sweep"
    if isinstance(sweep, np.ndarray):
        if sweep.ndim != 2 or sweep.shape[1] != 2 or sweep.dtype.kind not in "iuf":
            raise InputError("a sweep array must be numeric of shape (N, 2): T, accuracy", place=place)
        sweep = [{"timesteps": t, "accuracy": a} for t, a in sweep.tolist()]
    elif isinstance(sweep, dict):
        ts, acc = sweep.get("timesteps"), sweep.get("accuracy")
        if not isinstance(ts, list) or not isinstance(acc, list) or len(ts) != len(acc):
            raise InputError("a sweep object needs lists 'timesteps' and 'accuracy' of one length",
                             place=place)
        sweep = [{"timesteps": t, "accuracy": a} for t, a in zip(ts, acc)]
    if not isinstance(sweep, list) or not sweep:
        raise InputError("a sweep must be a non-empty list of {timesteps, accuracy}", place=place)
    out = []
    for i, row in enumerate(sweep):
        where = f"{place}[{i}]"
        if not isinstance(row, dict):
            raise InputError("each entry must be an object {timesteps, accuracy}", place=where)
        t = row.get("timesteps")
        if isinstance(t, float) and t.is_integer():
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise InputError(f"timesteps {t!r} must be a positive integer", place=where)
        acc = row.get("accuracy")
        acc = acc if isinstance(acc, dict) else {"accuracy": acc}
        clean = {}
        for k, v in acc.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0.0 <= v <= 1.0:
                raise InputError(f"accuracy {v!r} must be a fraction in [0, 1]", place=f"{where}.{k}")
            clean[str(k)] = float(v)
        out.append({"timesteps": t, "accuracy": clean})
    return sorted(out, key=lambda r: r["timesteps"])


MAX_SWEEP_ROWS = 10_000
MAX_SWEEP_JSON_BYTES = 4 << 20


def load_sweep(path) -> list[dict]:
    """A sweep file: .json (see ``normalise_sweep``) or .npy of shape (N, 2) (never unpickled;
    at most MAX_SWEEP_ROWS rows, bounded by the header before allocation)."""

    from spikebridge.base.fileio import load_npy, read_json

    p = Path(path)
    if not os.path.lexists(p):
        raise InputError("sweep file not found", file=str(p))
    if p.suffix == ".npy":  # bounded by its header before anything is allocated
        data = load_npy(p, MAX_SWEEP_ROWS * 2 * 8, InputError, kinds="iuf")
    else:
        data = read_json(p, MAX_SWEEP_JSON_BYTES, InputError, allow_nan=True)  # NaN accuracies refused below
    if len(data) > MAX_SWEEP_ROWS:
        raise InputError(f"{len(data)} sweep rows, above the limit {MAX_SWEEP_ROWS}", file=str(p))
    try:
        return normalise_sweep(data)
    except InputError as e:
        raise InputError(e.rule, file=str(p), place=e.place) from None


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
    en = report.get("energy") or {}
    if en:
        names = list(en)
        vals = [max(float(en[n]["total_pj_per_sample"]), 1e-12) for n in names]
        colors = {_energy.GPU_STYLE: "#4878a8", _energy.CHIP_STYLE: "#6aa84f",
                  _energy.ANN_DEVICE: "#b45f5f"}
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(names) + 2), 3.4))
        y = np.arange(len(names))
        ax.barh(y, vals, color=[colors.get(en[n]["kind"], "0.5") for n in names])
        ax.set_yticks(y, [f"{_label(n)} ({en[n]['kind']})" for n in names])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("pJ per sample (log scale)")
        ax.set_title("energy per sample by model")
        plots["energy.png"] = _png(fig)
    sweep = report.get("sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        backends = sorted({b for r in sweep for b in r["accuracy"]})
        for b in backends:
            pts = [(r["timesteps"], r["accuracy"][b]) for r in sweep if b in r["accuracy"]]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=_label(b))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted({r["timesteps"] for r in sweep})))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("T (time steps)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy vs T")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        plots["accuracy_vs_T.png"] = _png(fig)
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


def _img(plots: dict[str, bytes], name: str, alt: str) -> str:
    if name not in plots:
        return "<p>(no data for this plot)</p>"
    b64 = base64.b64encode(plots[name]).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
         "color:#222;line-height:1.4}h1{margin-bottom:.2em}h2{border-bottom:2px solid #4878a8;"
         "padding-bottom:.2em;margin-top:1.6em}h3{margin:1em 0 .3em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
         "padding:2px 8px;text-align:left;vertical-align:top}th{background:#eef2f7}"
         "td.n{text-align:right;font-variant-numeric:tabular-nums}"
         "img{max-width:100%}.note{color:#555;font-size:.92em}"
         ".measured{background:#fff4e0}.src{font-size:.85em;color:#444}"
         "nav a{margin-right:1em}")


def _n(x) -> str:
    """A numeric table cell (right-aligned)."""
    return f'<td class="n">{_num(x)}</td>'


def _table(header: list[str], rows: list[list], numeric: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v) -> str:
    return "not run" if v is None else f"{100 * float(v):.2f}%"


def _html_accuracy(report) -> str:
    acc = report.get("accuracy") or {}
    rows = [[_e(k), _pct(v)] for k, v in acc.items()]
    head = ""
    inp = report.get("inputs") or {}
    if inp:
        head = "<p class=\"note\">" + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in inp.items()) + "</p>"
    return head + (_table(["backend", "accuracy"], rows, (1,)) if rows
                   else "<p>No accuracy was measured (no labels).</p>")


def _html_energy(report, plots) -> str:
    en = report.get("energy") or {}
    if not en:
        return "<p>No trace: no energy estimate.</p>"
    fl = report.get("first_layer_rule") or report.get("first_layer")
    out = [f"<p>First-layer rule of the GPU-style models: <b>{_e(fl)}</b>. The other rule is "
           "shown beside each GPU-style estimate.</p>",
           _img(plots, "energy.png", "energy per sample by model")]
    rows = []
    for name, r in en.items():
        alt = r.get("other_first_layer_rule") or {}
        rows.append([_e(name), _e(r.get("kind")), _num(r.get("total_pj_per_sample")),
                     _num((r.get("total_pj_per_sample") or 0) * 1e-6),
                     _num(r.get("ann_pj_per_sample")), _num(r.get("snn_over_ann_ratio")),
                     (f"{_num(alt['total_pj_per_sample'])} ({_e(alt['first_layer'])})"
                      if alt else "")])
    out.append(_table(["model", "kind", "pJ / sample", "uJ / sample", "equivalent ANN pJ",
                       "SNN / ANN", "other first-layer rule pJ"], rows, (2, 3, 4, 5, 6)))
    out.append("<p class=\"note\">gpu-style: MACs and accumulates (the convention of SNN "
               "papers); chip-style: a neuromorphic chip's per-operation costs; ann-device: the "
               "equivalent ANN on a conventional device (keras-spiking's cpu, gpu, arm).</p>")
    for name, r in en.items():
        ops = [[_e(k.replace("_pj_per_sample", "")), _num(v)]
               for k, v in r.get("per_operation_pj_per_sample", {}).items()]
        nodes = [[_e(k), _num(v)] for k, v in r.get("per_node_pj_per_sample", {}).items()]
        out.append(f"<h3>{_e(name)} <span class=\"note\">({_e(r.get('kind'))}, first layer: "
                   f"{_e(r.get('first_layer'))})</span></h3>"
                   f"<p class=\"note\">{_e(r.get('description', ''))}</p>"
                   "<div style=\"display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start\">"
                   + _table(["operation", "pJ / sample"], ops, (1,))
                   + _table(["node", "pJ / sample"], nodes, (1,)) + "</div>")
    return "".join(out)


def _html_latency(report) -> str:
    la = report.get("latency") or {}
    meas = (report.get("measured") or {}).get("onnx")
    out = []
    if la or meas:
        rows = []
        for chip, r in la.items():
            rows.append([f"{_e(chip)} (SNN, T = {_num(r.get('timesteps'))})", "modelled",
                         _num(r.get("seconds_per_sample")), _num(r.get("samples_per_second")),
                         _num(r.get("time_to_first_output_s"))])
        if meas:
            rows.append(["onnxruntime, ANN branch, this CPU (1 thread)",
                         "<b>measured</b>", _num(meas.get("latency_seconds_per_sample")),
                         _num(meas.get("throughput_samples_per_second")), "n/a"])
        out.append(_table(["what", "kind", "s / sample", "samples / s", "time to first output s"],
                          rows, (2, 3, 4)))
        out.append("<p class=\"note\">Modelled numbers come from the Loihi-style model below; "
                   "the measured row is wall-clock time on the machine that wrote this report "
                   "(throughput over the whole batch).</p>")
    for chip, r in la.items():
        rows = [[_e(k), _e(v.get("role", "")), _num(v["neurons"]), _num(v["fan_in"]),
                 _num(v.get("synapses")), _num(v.get("weight_bits")),
                 _num(v.get("synaptic_memory_bytes")), _num(v["cores"]),
                 _e(v.get("limited_by", "")), _num(v["mean_core_work_ns_per_step"])]
                for k, v in r.get("per_layer", {}).items()]
        out.append(
            f"<h3>{_e(chip)}: mapping and step time</h3><p>{_num(r.get('cores'))} cores on "
            f"{_num(r.get('chips'))} chip(s), {_num(r.get('synaptic_memory_bytes'))} bytes of "
            f"synaptic weights; T = {_num(r.get('timesteps'))}, synaptic depth "
            f"{_num(r.get('synaptic_depth'))}; mean step time "
            f"{_num((r.get('mean_step_time_s') or 0) * 1e9)} ns (barrier "
            f"{_num(r.get('barrier_ns'))} ns); <b>{_num(r.get('seconds_per_sample'))} s per "
            f"sample</b>, {_num(r.get('samples_per_second'))} samples/s.</p>"
            + _table(["layer", "role", "neurons", "fan-in", "synapses", "weight bits",
                      "synaptic bytes", "cores", "cores limited by", "mean core work ns/step"],
                     rows, (2, 3, 4, 5, 6, 7, 9)))
    return "".join(out) or "<p>No trace: no latency estimate.</p>"


def _html_sweep(report, plots) -> str:
    sw = report.get("sweep")
    if not sw:
        return ("<p>No sweep was run. Run one with <code>spikebridge report ... "
                "--sweep-timesteps 1,2,4,8</code> or pass <code>--sweep FILE</code>.</p>")
    backends = sorted({b for r in sw for b in r["accuracy"]})
    rows = [[_num(r["timesteps"])] + [_pct(r["accuracy"].get(b)) if b in r["accuracy"] else "n/a"
                                       for b in backends] for r in sw]
    return (_img(plots, "accuracy_vs_T.png", "accuracy vs T")
            + _table(["T"] + backends, rows, tuple(range(len(backends) + 1))))


def _html_method(report) -> str:
    m = "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in report.get("rules", [])) + "</ul>"
    m += f"<p>First-layer rule used: <b>{_e(report.get('first_layer_rule') or report.get('first_layer'))}</b>.</p>"
    m += f"<p>Input-layer rule used: <b>{_e((report.get('input_layer') or {}).get('rule', 'not recorded'))}</b>.</p>"
    crow = []
    for name, r in (report.get("energy") or {}).items():
        for op, c in r.get("constants", {}).items():
            crow.append([_e(name), _e(op), f"{_num(c['value_pj'])} pJ",
                         f'<span class="src">{_e(c["source"])}</span>'])
    for chip, r in (report.get("latency") or {}).items():
        for k, c in r.get("constants", {}).items():
            crow.append([_e(chip), _e(k), _num(c["value"]),
                         f'<span class="src">{_e(c["source"])}</span>'])
    if crow:
        m += "<h3>Constants and their sources</h3>" + _table(["model", "constant", "value", "source"], crow)
    prov = [[_e(k), _e(v)] for k, v in (report.get("versions") or {}).items()]
    prov += [["seed", _e(report.get("seed"))], ["graph sha256", _e(report.get("graph_sha256"))],
             ["graph sha256 of", _e(report.get("graph_sha256_of"))],
             ["schema version", _e(report.get("schema_version"))]]
    m += "<h3>Provenance</h3>" + _table(["what", "value"], prov)
    return m


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    sec = dict(SECTIONS)
    pl = report.get("per_layer", [])
    rows = [[_e(r["node"]), _e(r["type"]), _num(r["neurons"]), _num(r["firing_rate"]),
             _num(r["synaptic_ops_per_sample"]), _num(r["macs_per_sample"]),
             _num(r["spikes_per_sample"]), _num(r["ann_macs_per_sample"])] for r in pl]
    firing = (_img(plots, "firing_rates.png", "firing rate per layer")
              + _table(["node", "type", "neurons", "firing rate", "SOPs/sample",
                        "MACs/sample", "spikes/sample", "ANN MACs/sample"], rows,
                       (2, 3, 4, 5, 6, 7)))
    tot = (f"<p>Total per sample: <b>{_num(report.get('synaptic_ops_per_sample'))}</b> synaptic "
           f"ops, {_num(report.get('macs_per_sample'))} analog MACs, "
           f"{_num(report.get('spikes_per_sample'))} spikes, "
           f"{_num(report.get('neuron_updates_per_sample'))} neuron updates; equivalent ANN: "
           f"{_num(report.get('ann_macs_per_sample'))} MACs.</p>")
    parts = [("accuracy", _html_accuracy(report)), ("firing", firing),
             ("sops", _img(plots, "synaptic_ops.png", "synaptic ops per layer") + tot),
             ("neurobench", _neurobench.render_section(report.get("neurobench"))),
             ("energy", _html_energy(report, plots)), ("latency", _html_latency(report)),
             ("raster", _img(plots, "spike_raster.png", "spike raster")),
             ("sweep", _html_sweep(report, plots)), ("method", _html_method(report))]
    nav = "<nav>" + "".join(f'<a href="#{k}">{_e(sec[k])}</a>' for k, _ in SECTIONS) + "</nav>"
    body = "".join(f'<section id="{key}"><h2>{_e(sec[key])}</h2>{content}</section>'
                   for key, content in parts)
    sub = (f"<p class=\"note\">backend {_e(report.get('backend'))}, T = "
           f"{_num(report.get('timesteps'))}, {_num(report.get('samples'))} samples; graph "
           f"sha256 {_e(str(report.get('graph_sha256'))[:16])}...</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>spikebridge report</title>"
            f"<style>{STYLE}</style></head><body><h1>spikebridge report</h1>{sub}{nav}{body}"
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


# --------------------------------------------------------------------------- any graph


def parse_timesteps_list(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8] (positive integers, at most 16 values)."""
    try:
        ts = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise InputError(f"{text!r} is not a comma-separated list of integers",
                         place="--sweep-timesteps") from None
    if not ts or ts[0] < 1 or len(ts) > 16:
        raise InputError("give 1 to 16 positive integers, e.g. 1,2,4,8", place="--sweep-timesteps")
    return ts


def run_sweep(prep, x: np.ndarray, y: np.ndarray, timesteps: list[int], progress: bool = False,
              label: str | None = None) -> list[dict]:
    """Accuracy of a prepared graph (``hardware.backends.prepare``: backend and run options) at
    each T, direct encoding of the samples x; rows keyed by ``label`` (default the backend's name)."""
    from spikebridge.toolchain import pipeline

    label = label or prep.backend.name
    rows = []
    for T in timesteps:
        tr = pipeline.run(prep, pipeline.direct_encode(x, T), progress=progress, desc=f"{label} T={T}")
        acc, _ = pipeline.accuracy_of(prep.graph, tr, y)
        rows.append({"timesteps": int(T), "accuracy": {label: float(acc)}})
    return rows


def report_graph(graph_path, out_dir, *, input_npy=None, dataset: str | None = None, split: str = "test",
                 limit: int | None = None, timesteps: int | None = None, backend: str = "eventsim",
                 options=None, energy_models=DEFAULT_ENERGY_MODELS, first_layer: str = "per_step",
                 sweep=None, sweep_timesteps: list[int] | None = None, weight_bits=None,
                 max_chips: int | None = None, progress: bool = True, samples: dict | None = None) -> dict:
    """``spikebridge report GRAPH.nir``: run ``backend`` with ``options``
    (``hardware.backends.RunOptions``: profile, dt, precision, ...; the same as ``simulate``)
    on X.npy or a dataset (direct encoding over T = --timesteps or the graph's metadata), then
    write the report into ``out_dir``.

    Accuracy is measured only with a dataset (labels). ``sweep_timesteps`` re-runs the graph
    at each T on the same samples (dataset only) with the same backend and options for the
    accuracy-vs-T plot; ``sweep`` is an already-computed sweep (``normalise_sweep``)."""
    from dataclasses import replace

    from spikebridge.hardware.backends import RunOptions, prepare
    from spikebridge.toolchain import pipeline

    if (input_npy is None) == (dataset is None):
        raise InputError("give exactly one of --input X.npy or --dataset NAME", place="report")
    if input_npy is not None and sweep_timesteps:
        raise InputError("--sweep-timesteps needs --dataset (labels)", place="report")
    options = options or RunOptions()
    if limit is not None:
        options = replace(options, limit=limit)
    prep = prepare(graph_path, backend, options, file=str(graph_path))
    graph = prep.graph
    x_tb, labels, desc = pipeline.load_samples(prep, input_npy=input_npy, dataset=dataset, split=split,
                                               limit=limit, timesteps=timesteps, file=str(graph_path), **(samples or {}))
    inputs = {"graph": str(graph_path), "backend": backend, "profile": options.profile or "spikebridge", **desc}
    trace = pipeline.run(prep, x_tb, progress=progress)
    accuracy = {}
    if labels is not None:
        accuracy[backend], _ = pipeline.accuracy_of(graph, trace, labels)
        if sweep_timesteps:
            if desc.get("encoding") != "direct":  # run_sweep repeats x_tb[0]: right for direct encoding only
                raise InputError(f"--sweep-timesteps re-runs with direct encoding; this run's is {desc.get('encoding')}")
            sweep = run_sweep(prep, x_tb[0], labels, sweep_timesteps, progress, label=backend)
    models = [_energy.get_model(m) for m in energy_models]
    report = build_report(graph, trace, accuracy=accuracy, energy_models=models, first_layer=first_layer,
                          graph_path=graph_path, versions=pipeline.versions(), sweep=sweep,
                          weight_bits=weight_bits, max_chips=max_chips, inputs=inputs, samples=x_tb)
    write_report(out_dir, report, trace=trace, graph=graph)
    return report


def energy_models_with(user_files) -> list:
    """The default models plus the user's TOML models (a name may not repeat)."""
    models = [_energy.get_model(m) for m in DEFAULT_ENERGY_MODELS]
    for f in user_files or ():
        m = _energy.load_energy_model_toml(f)
        if any(m.name == o.name for o in models):
            raise InputError(f"energy model name {m.name!r} is already used", file=str(f), place="name")
        models.append(m)
    return models


def sweep_for_run(run_dir, timesteps: list[int], out_dir=None, progress: bool = False, backend: str = "eventsim",
                  options=None) -> list[dict]:
    """Accuracy vs T for a demo run directory: ``backend`` (default eventsim) with ``options``
    on run.json's dataset and split at each T; written to OUT_DIR/sweep.json (default the run
    directory) so later reports reuse it."""
    from spikebridge.base.fileio import atomic_write_json, read_json
    from spikebridge.hardware.backends import prepare
    from spikebridge.toolchain import pipeline

    d = Path(run_dir)
    run = read_json(d / "run.json", 4 << 20, InputError)
    try:
        dataset, split = run["dataset"], run.get("split", "test")
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"run.json names no dataset ({e})", file=str(d / "run.json")) from None
    prep = prepare(d / "graph.nir", backend, options, file=str(d / "graph.nir"))
    x, y = pipeline.dataset_samples(dataset, split, run.get("samples"), prep.input_shape)
    sweep = run_sweep(prep, x, y, timesteps, progress=progress, label=str(backend))
    atomic_write_json(Path(out_dir or d) / "sweep.json", sweep)
    return sweep
