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
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.patches  # noqa: E402,F401
import matplotlib.ticker  # noqa: E402,F401
import nir  # noqa: E402
import numpy as np  # noqa: E402

from spikebridge.hardware import energy as _energy  # noqa: E402
from spikebridge.hardware import latency as _latency  # noqa: E402
from spikebridge.base.errors import InputError  # noqa: E402
from spikebridge.base.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from spikebridge.hardware.trace import Trace  # noqa: E402
from spikebridge.hardware import neurobench as _neurobench  # noqa: E402

SCHEMA_VERSION = 3
DEFAULT_ENERGY_MODELS = ("horowitz-45nm", "loihi", "truenorth", *_energy.KERAS_SPIKING_DEVICES)
DEFAULT_CHIPS = ("loihi",)
RASTER_MAX_NEURONS_PER_LAYER = 1000

SECTIONS = (
    ("summary", "Summary"),
    ("accuracy", "Accuracy per backend"),
    ("layers", "Per layer: firing rates and synaptic operations"),
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
    "input is not spikes, e.g. the first layer under direct encoding, at every step). A binary "
    "input (bool, or only 0 and 1 values: rate, latency or delta encoded) is spikes: its layer "
    "counts synaptic ops, as SpikingJelly's op counter and NeuroBench do (see the input-layer rule).",
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


def layer_rows(graph: nir.NIRGraph, per_node: list[dict]) -> list[dict]:
    """One row per layer: a neuron node (or an analog readout Output) merged with the synaptic
    chain that feeds it (``hardware.energy.incoming_chain``: Affine/Conv/pools/Flatten...), so
    a layer's synaptic ops, MACs, neurons and spikes sit on one row. ``per_node`` is
    ``per_layer_stats``; a counted node in no chain keeps a row of its own.

    Keys: layer, type (the neuron type, or ``readout``), synapse_nodes, neurons, firing_rate,
    synaptic_ops_per_sample, macs_per_sample, spikes_per_sample, neuron_updates_per_sample,
    ann_macs_per_sample (sums over the layer's nodes; None where the trace is absent)."""
    info = _energy.analyse(graph)
    by_node = {r["node"]: r for r in per_node}
    used: set[str] = set()
    rows = []

    def add(name, kind, members):
        rs = [by_node[m] for m in members if m in by_node]
        used.update(members)

        def total(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(sum(vals)) if vals else None

        head = by_node.get(name, {})
        rows.append({"layer": name, "type": kind, "synapse_nodes": [m for m in members if m != name],
                     "neurons": None if kind == "readout" else int(head.get("neurons") or 0),
                     "firing_rate": head.get("firing_rate"),
                     "synaptic_ops_per_sample": total("synaptic_ops_per_sample"),
                     "macs_per_sample": total("macs_per_sample"),
                     "spikes_per_sample": total("spikes_per_sample"),
                     "neuron_updates_per_sample": total("neuron_updates_per_sample"),
                     "ann_macs_per_sample": int(sum(r.get("ann_macs_per_sample") or 0 for r in rs))})

    for n in info.order:
        node = graph.nodes[n]
        if isinstance(node, _energy.NEURON_TYPES):
            chain = sorted(_energy.incoming_chain(graph, info, n), key=info.order.index)
            add(n, type(node).__name__, [*chain, n])
        elif isinstance(node, nir.Output):
            chain = sorted(_energy.incoming_chain(graph, info, n), key=info.order.index)
            if chain and not set(chain) <= used:
                add(n, "readout", [c for c in chain if c not in used] + [n])
    work = ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample", "ann_macs_per_sample")
    for r in per_node:  # anything that does work and no layer covers
        if r["node"] not in used and any(r.get(k) for k in work):
            add(r["node"], r["type"], [r["node"]])
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
                 max_chips: int | None = None, inputs: dict | None = None,
                 backend_labels: dict[str, str] | None = None, not_run: dict[str, str] | None = None,
                 model_info: dict | None = None, samples=None,
                 neurobench: dict | None = None) -> dict:
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
    samples: the run's input (T, batch, ...), for the NeuroBench metrics' eventsim replay;
    neurobench: those metrics already computed with the input (a run directory's neurobench.json).
    backend_labels: how to name each accuracy key on the page (default ``backend_label``);
    not_run: backend -> why it was not run. model_info: method, arch, dataset... (default: the
    graph's spikebridge metadata). The ``summary`` key (``build_summary``) is the headline.
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
    model = {"method": md.get("method"), "arch": md.get("arch"),
             "timesteps": int(trace.timesteps) if trace is not None else md.get("timesteps"),
             "dataset": (inputs or {}).get("dataset")}
    model.update({k: v for k, v in (model_info or {}).items() if v is not None})
    labels = {k: backend_label(k, model.get("method")) for k in acc}
    labels.update({str(k): str(v) for k, v in (backend_labels or {}).items() if k in acc})
    per_node = per_layer_stats(trace, graph)
    report = {
        "schema_version": SCHEMA_VERSION,
        "summary": None,  # filled below (first key: the headline)
        "model": model,
        "accuracy": acc,
        "accuracy_labels": labels,
        "not_run": {str(k): str(v) for k, v in (not_run or {}).items()},
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
        "per_layer": per_node,
        "layers": layer_rows(graph, per_node),
        "neurobench": neurobench if neurobench is not None else
        _neurobench.report_entry(graph, trace, x=samples, profile=(inputs or {}).get("profile")),
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
    report["summary"] = build_summary(report)
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


# --------------------------------------------------------------------------- labels, units, summary

BACKEND_LABELS = {
    "torch": "torch (the SNN in PyTorch)",
    "eventsim": "eventsim (event-driven simulator, float64)",
    "lava": "Lava floating point (CPU simulation of the Loihi plan)",
    "lava_fixed": "Lava fixed point (Loihi number formats, fixed_pt)",
    "loihi-fixed": "loihi-fixed (integer model of the Loihi plan)",
}
# what ``export --format onnx`` writes for each method, named so that nobody reads it as a
# separately trained ANN baseline (models/methods/*: MethodSpec.onnx)
ONNX_LABELS = {
    "snn2ann": "shared-weight ANN branch (not trained as an ANN), onnxruntime",
    "qcfs": "the QCFS ANN the SNN was converted from, onnxruntime",
    "parallel": "the source ANN of the conversion, onnxruntime",
    "ann": "the ANN itself (trained as an ANN), onnxruntime",
    "bridge": "the SNN unrolled over T, onnxruntime",
    "lasnn": "the SNN unrolled over T, onnxruntime",
}


def backend_label(key: str, method: str | None = None) -> str:
    """How an accuracy key is named on the page: ``onnx_ann`` depends on the method (SNN2ANN's
    ANN branch shares the SNN's weights and was never trained as an ANN on its own)."""
    if key == "onnx_ann":
        return ONNX_LABELS.get(method or "", "the checkpoint's ONNX form (export --format onnx), onnxruntime")
    return BACKEND_LABELS.get(key, str(key))


ENERGY_UNITS = (("pJ", 1.0), ("nJ", 1e3), ("µJ", 1e6), ("mJ", 1e9), ("J", 1e12))
TIME_UNITS = (("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0))


def _finite(values) -> list[float]:
    return [abs(float(v)) for v in values
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))]


def _pick(units, values) -> tuple[str, float]:
    vals = sorted(v for v in _finite(values) if v > 0)
    if not vals:
        return units[0]
    m = vals[(len(vals) - 1) // 2]  # the (lower) median: most of the column reads in whole units
    best = units[0]
    for name, scale in units:
        if m >= scale * 0.9995:  # 999.96 pJ reads as 1 nJ, not 1000 pJ
            best = (name, scale)
    return best


def energy_unit(values_pj) -> tuple[str, float]:
    """(unit, pJ per unit) for a column of energies in pJ: the largest SI unit (pJ, nJ, µJ, mJ,
    J) the column's median value reaches, so one column has one unit (4 significant digits
    keep the small values readable)."""
    return _pick(ENERGY_UNITS, values_pj)


def time_unit(values_s) -> tuple[str, float]:
    """(unit, seconds per unit) for a column of durations in s: ns, µs, ms or s (as ``energy_unit``)."""
    return _pick(TIME_UNITS, values_s)


def _sig(x: float) -> str:
    """4 significant digits without an exponent for values in [1e-3, 1e6)."""
    x = float(f"{float(x):.4g}")  # round first: 999.96 -> 1000 (4 digits), 0.99996 -> 1
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e6:
        digits = max(0, 3 - int(math.floor(math.log10(abs(x)))))
        return f"{x:,.{digits}f}"
    return f"{x:.4g}"


def fmt_energy(pj, unit: tuple[str, float] | None = None) -> str:
    """'159.6 nJ' (unit chosen for this value unless given)."""
    if pj is None or not _finite([pj]):
        return "n/a"
    name, scale = unit or energy_unit([pj])
    return f"{_sig(float(pj) / scale)} {name}"


def fmt_time(s, unit: tuple[str, float] | None = None) -> str:
    """'375.2 µs' (unit chosen for this value unless given)."""
    if s is None or not _finite([s]):
        return "n/a"
    name, scale = unit or time_unit([s])
    return f"{_sig(float(s) / scale)} {name}"


def _short_source(model_name: str, r: dict) -> str:
    return {"loihi": "Davies et al. 2018, Table 2", "truenorth": "Merolla et al. 2014",
            "horowitz-45nm": "Horowitz 2014, 45 nm", "spinnaker": "keras-spiking device table",
            "spinnaker2": "keras-spiking device table"}.get(model_name, "user model" if r.get("source") is None
                                                            else "see constants")


def build_summary(report: dict) -> dict:
    """The headline of a report (pure; from the report's own keys): model, accuracy per
    backend (with its label), energy per inference under each chip-style model in µJ and the
    spread across them, latency (modelled, and measured where there is a measurement),
    synaptic ops and spikes per inference, and the SNN/ANN energy ratio under the GPU-style
    model. Every modelled number names its model."""
    model = dict(report.get("model") or {})
    model["samples"] = report.get("samples")
    labels = report.get("accuracy_labels") or {}
    accuracy = [{"backend": k, "label": labels.get(k) or backend_label(k, model.get("method")),
                 "accuracy": v, "not_run": (report.get("not_run") or {}).get(k)}
                for k, v in (report.get("accuracy") or {}).items()]
    for k, why in (report.get("not_run") or {}).items():
        if k not in (report.get("accuracy") or {}):
            accuracy.append({"backend": k, "label": labels.get(k) or backend_label(k, model.get("method")),
                             "accuracy": None, "not_run": why})
    en = report.get("energy") or {}
    chips = {n: {"uj_per_inference": r["total_pj_per_sample"] * 1e-6, "kind": r.get("kind"),
                 "source": _short_source(n, r)}
             for n, r in en.items() if r.get("kind") == _energy.CHIP_STYLE}
    vals = [c["uj_per_inference"] for c in chips.values()]
    energy = {"unit": "µJ per inference", "label": "modelled; chip-style energy models (constants cited below)",
              "chip_models": chips,
              "spread_uj": ({"min": min(vals), "max": max(vals),
                             "min_model": min(chips, key=lambda n: chips[n]["uj_per_inference"]),
                             "max_model": max(chips, key=lambda n: chips[n]["uj_per_inference"])}
                            if vals else None)}
    latency = None
    for chip, r in (report.get("latency") or {}).items():
        latency = {"chip": chip, "seconds_per_inference": r.get("seconds_per_sample"),
                   "text": fmt_time(r.get("seconds_per_sample")),
                   "time_to_first_output_s": r.get("time_to_first_output_s"),
                   "label": f"modelled: {chip}-style mapping and step time, T = {r.get('timesteps')}"}
        break
    meas = (report.get("measured") or {}).get("onnx")
    measured = ({"seconds_per_inference": meas.get("latency_seconds_per_sample"),
                 "text": fmt_time(meas.get("latency_seconds_per_sample")),
                 "label": f"measured: {backend_label('onnx_ann', model.get('method'))} on this CPU, 1 thread"}
                if meas and meas.get("latency_seconds_per_sample") is not None else None)
    ratio = None
    for n, r in en.items():
        if r.get("kind") == _energy.GPU_STYLE and r.get("snn_over_ann_ratio") is not None:
            ratio = {"value": r["snn_over_ann_ratio"], "model": n, "first_layer": r.get("first_layer"),
                     "label": f"modelled: {n} (GPU-style E_MAC/E_AC), first layer {r.get('first_layer')}; "
                              "the ANN is the same graph computed as an ANN"}
            break
    return {"model": model, "accuracy": accuracy, "energy": energy, "latency": latency,
            "measured_latency": measured,
            "synaptic_ops_per_inference": report.get("synaptic_ops_per_sample"),
            "analog_macs_per_inference": report.get("macs_per_sample"),
            "spikes_per_inference": report.get("spikes_per_sample"),
            "snn_over_ann_energy_ratio": ratio}


def _pct(v) -> str:
    return "not run" if v is None else f"{100 * float(v):.2f}%"


def _count(x) -> str:
    if x is None or not _finite([x]):
        return "n/a"
    x = float(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    t = _sig(x)
    return t.rstrip("0").rstrip(".") if "." in t else t


def summary_lines(summary: dict) -> list[str]:
    """The summary as plain-text lines (what ``spikebridge report`` and ``demo`` print)."""
    m = summary.get("model") or {}
    what = " ".join(str(x) for x in (m.get("method"), m.get("arch")) if x) or "graph"
    head = f"summary: {what}, T = {m.get('timesteps')}"
    if m.get("dataset"):
        head += f", {m['dataset']}"
    if m.get("samples"):
        head += f" ({m['samples']} samples)"
    lines = [head]
    for a in summary.get("accuracy") or []:
        acc = _pct(a["accuracy"]) if a["accuracy"] is not None else f"not run ({a.get('not_run') or 'not run'})"
        lines.append(f"  accuracy  {a['label']}: {acc}")
    e = summary.get("energy") or {}
    for n, c in (e.get("chip_models") or {}).items():
        lines.append(f"  energy    {_sig(c['uj_per_inference'])} µJ/inference (modelled, {n}, {c['source']})")
    if e.get("spread_uj"):
        s = e["spread_uj"]
        lines.append(f"  energy    spread over the chip models: {_sig(s['min'])}-{_sig(s['max'])} µJ "
                     f"({s['min_model']} to {s['max_model']})")
    if summary.get("latency"):
        la = summary["latency"]
        lines.append(f"  latency   {la['text']}/inference, {la['label']}")
    if summary.get("measured_latency"):
        me = summary["measured_latency"]
        lines.append(f"  latency   {me['text']}/inference, {me['label']}")
    if summary.get("synaptic_ops_per_inference") is not None:
        lines.append(f"  activity  {_count(summary['synaptic_ops_per_inference'])} synaptic ops, "
                     f"{_count(summary.get('analog_macs_per_inference'))} analog MACs, "
                     f"{_count(summary.get('spikes_per_inference'))} spikes per inference (measured by the simulator)")
    r = summary.get("snn_over_ann_energy_ratio")
    if r:
        lines.append(f"  SNN/ANN   energy ratio {_sig(r['value'])}, {r['label']}")
    return lines


# --------------------------------------------------------------------------- plots

CHIP_COLORS = ("#4878a8", "#e0a040", "#6aa84f", "#b45f5f", "#8e6fb5", "#5fb4b0", "#c77fb3", "#999999")
PNG_DPI = 200


def _label(s: str) -> str:
    """A node name as a matplotlib label: no mathtext ($) interpretation."""
    return str(s).replace("$", r"\$")


def _save(fig) -> tuple[bytes, bytes]:
    """(SVG bytes, PNG bytes at 200 dpi) of a figure (SVG text kept as text, no timestamps)."""
    svg, png = io.BytesIO(), io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "spikebridge"}):
        fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight")
    plt.close(fig)
    return svg.getvalue(), png.getvalue()


def _png(fig) -> bytes:
    """A figure as PNG bytes at 200 dpi (for modules that embed one PNG, e.g. compare)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bar(names, values, title, ylabel):
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    x = np.arange(len(names))
    ax.bar(x, values, color="#4878a8")
    ax.set_xticks(x, [_label(n) for n in names], rotation=45, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _save(fig)


def _raster(trace: Trace, order: list[str], sample: int = 0):
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
    return _save(fig)


def _stacked(ax, y, parts: dict[str, float], scale: float, colors: dict[str, str]):
    left = 0.0
    for k, v in parts.items():
        if v > 0:
            ax.barh(y, v / scale, left=left, color=colors[k], edgecolor="white", linewidth=0.5)
            left += v / scale


def _by_layer(per_node: dict[str, float], layer_of: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for node, v in per_node.items():
        k = layer_of.get(node, node)
        out[k] = out.get(k, 0.0) + v
    return out


def _energy_breakdown(en: dict, kind: str, title: str, layers: list[dict] | None = None):
    """One panel per model of ``kind``: two stacked bars (by operation; by layer, i.e. a neuron
    population with the synapse nodes that feed it, as in the per-layer table) on a linear axis
    in the unit that model's total reaches."""
    names = [n for n, r in en.items() if r.get("kind") == kind and r.get("total_pj_per_sample")]
    if not names:
        return None
    layer_of = {m: r["layer"] for r in layers or [] for m in [r["layer"], *r.get("synapse_nodes", [])]}
    by_layer = {n: _by_layer(en[n].get("per_node_pj_per_sample", {}), layer_of) for n in names}
    ops = list(dict.fromkeys(k for n in names for k in en[n].get("per_operation_pj_per_sample", {})))
    lays = list(dict.fromkeys(k for n in names for k in by_layer[n]))
    op_colors = {k: plt.get_cmap("Dark2")(i % 8) for i, k in enumerate(ops)}
    lay_colors = {k: plt.get_cmap("Pastel1" if len(lays) <= 9 else "tab20")(i % (9 if len(lays) <= 9 else 20))
                  for i, k in enumerate(lays)}
    fig, axes = plt.subplots(len(names), 1, figsize=(7.5, 1.35 * len(names) + 1.4), squeeze=False)
    for ax, n in zip(axes[:, 0], names):
        r = en[n]
        unit, scale = energy_unit([r["total_pj_per_sample"]])
        _stacked(ax, 1, r.get("per_operation_pj_per_sample", {}), scale, op_colors)
        _stacked(ax, 0, by_layer[n], scale, lay_colors)
        ax.set_yticks([1, 0], ["by operation", "by layer"])
        ax.set_xlim(0, r["total_pj_per_sample"] / scale * 1.02)
        ax.set_title(f"{_label(n)}: {fmt_energy(r['total_pj_per_sample'])} per inference", fontsize=10, loc="left")
        ax.set_xlabel(f"{unit} per inference (linear)", fontsize=8)
        ax.tick_params(labelsize=8)
    handles = [matplotlib.patches.Patch(color=op_colors[k], label=_op_name(k)) for k in ops]
    handles.append(matplotlib.patches.Patch(color="none", label=""))
    handles.append(matplotlib.patches.Patch(color="none", label="by layer:"))
    handles += [matplotlib.patches.Patch(color=lay_colors[k], label=_label(k)) for k in lays]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8, frameon=False,
               title="by operation:", title_fontsize=8, alignment="left")
    fig.suptitle(title, x=0.02, ha="left", fontsize=11)
    fig.tight_layout()
    return _save(fig)


def _op_name(key: str) -> str:
    return key.replace("_pj_per_sample", "").replace("_", " ")


def _energy_conventional(en: dict):
    """Two panels, each on its own linear axis: the GPU-style models (the SNN stacked by
    operation beside the same graph computed as an ANN) and the ANN-device models (the
    equivalent ANN on a CPU, GPU, ARM core, stacked by operation)."""
    gpu, dev = [], []
    for n, r in en.items():
        ops = {_op_name(k): v for k, v in r.get("per_operation_pj_per_sample", {}).items()}
        if r.get("kind") == _energy.GPU_STYLE:
            gpu.append((f"{n}: SNN", ops))
            if r.get("ann_pj_per_sample") is not None:
                gpu.append((f"{n}: same graph as an ANN", {"ANN MACs": r["ann_pj_per_sample"]}))
        elif r.get("kind") == _energy.ANN_DEVICE:
            dev.append((f"{n}: the ANN on the device", ops))
    panels = [(t, rows) for t, rows in (("GPU-style (E_MAC, E_AC): SNN vs the same graph as an ANN", gpu),
                                        ("ANN-device models (keras-spiking): the equivalent ANN", dev)) if rows]
    if not panels:
        return None
    parts = list(dict.fromkeys(k for _, rows in panels for _, p in rows for k in p))
    colors = {k: plt.get_cmap("Dark2")(i % 8) for i, k in enumerate(parts)}
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(7.5, sum(0.42 * len(r) + 0.9 for _, r in panels) + 0.4))
    for ax, (title, rows) in zip(axes[:, 0], panels):
        unit, scale = energy_unit([max(sum(p.values()) for _, p in rows)])
        for i, (_, p) in enumerate(rows):
            _stacked(ax, len(rows) - 1 - i, p, scale, colors)
        ax.set_yticks(range(len(rows) - 1, -1, -1), [_label(lab) for lab, _ in rows], fontsize=8)
        ax.set_xlabel(f"{unit} per inference (linear)", fontsize=8)
        ax.set_title(title, loc="left", fontsize=10)
        ax.tick_params(labelsize=8)
    fig.legend(handles=[matplotlib.patches.Patch(color=colors[k], label=k) for k in parts], fontsize=8,
               loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False, title="by operation", title_fontsize=8,
               alignment="left")
    fig.tight_layout()
    return _save(fig)


def make_figures(report: dict, trace: Trace | None = None) -> dict[str, tuple[bytes, bytes]]:
    """Figures by stem: (SVG bytes, PNG bytes at 200 dpi)."""
    rows = report.get("layers") or []
    figs = {}
    fr = [r for r in rows if r.get("firing_rate") is not None]
    if fr:
        figs["firing_rates"] = _bar([r["layer"] for r in fr], [r["firing_rate"] for r in fr],
                                    "firing rate per layer", "spikes / neuron / step")
    ops = [r for r in rows if (r.get("synaptic_ops_per_sample") or 0) + (r.get("macs_per_sample") or 0) > 0]
    if ops:
        names = [r["layer"] for r in ops]
        sop = np.array([r["synaptic_ops_per_sample"] or 0.0 for r in ops])
        mac = np.array([r["macs_per_sample"] or 0.0 for r in ops])
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
        x = np.arange(len(names))
        ax.bar(x, sop, color="#4878a8", label="synaptic ops (spike events)")
        ax.bar(x, mac, bottom=sop, color="#e0a040", label="MACs (analog input)")
        ax.set_xticks(x, [_label(n) for n in names], rotation=45, ha="right")
        ax.set_title("synaptic ops and analog MACs per layer")
        ax.set_ylabel("per inference")
        ax.set_ylim(0, max(float((sop + mac).max()), 1.0) * 1.35)
        ax.legend(fontsize="small", loc="upper right")
        figs["synaptic_ops"] = _save(fig)
    en = report.get("energy") or {}
    chip = _energy_breakdown(en, _energy.CHIP_STYLE, "chip-style models: energy per inference, each on its own "
                                                    "linear axis", report.get("layers"))
    if chip is not None:
        figs["energy_chip"] = chip
    conv = _energy_conventional(en)
    if conv is not None:
        figs["energy_gpu_ann"] = conv
    if trace is not None:
        r = _raster(trace, [n["node"] for n in report.get("per_layer", [])])
        if r is not None:
            figs["spike_raster"] = r
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
        figs["accuracy_vs_T"] = _save(fig)
    return figs


def make_plots(report: dict, trace: Trace | None = None) -> dict[str, bytes]:
    """Every figure file by name: NAME.svg and NAME.png (200 dpi)."""
    out = {}
    for stem, (svg, png) in make_figures(report, trace).items():
        out[f"{stem}.svg"] = svg
        out[f"{stem}.png"] = png
    return out


# --------------------------------------------------------------------------- tables (HTML + CSV)


class Col:
    """A table column: ``kind`` is text | int | float | pct | energy (pJ in, unit per column)
    | time (s in, unit per column); ``csv`` is the CSV header (raw value, base unit)."""

    def __init__(self, head: str, csv: str, kind: str = "text"):
        self.head, self.csv, self.kind = head, csv, kind


class Table:
    """Raw rows and their columns: rendered to HTML (units chosen per column) and to CSV
    (raw values, pJ and s, exactly the numbers of report.json)."""

    def __init__(self, name: str, cols: list[Col], rows: list[list]):
        self.name, self.cols, self.rows = name, cols, rows

    def html(self) -> str:
        units = {}
        for i, c in enumerate(self.cols):
            if c.kind in ("energy", "time"):
                pick = energy_unit if c.kind == "energy" else time_unit
                units[i] = pick([r[i] for r in self.rows])
        head = "".join(f"<th>{_e(c.head)}{' (' + units[i][0] + ')' if i in units else ''}</th>"
                       for i, c in enumerate(self.cols))
        body = []
        for r in self.rows:
            cells = []
            for i, (c, v) in enumerate(zip(self.cols, r)):
                if c.kind == "text":
                    cells.append(f"<td>{_e('' if v is None else v)}</td>")
                    continue
                if v is None or not _finite([v]):
                    txt = "–" if c.kind != "pct" else "not run"
                elif c.kind == "int":
                    txt = _count(v)
                elif c.kind == "pct":
                    txt = _pct(v)
                elif i in units:
                    txt = _sig(float(v) / units[i][1])
                else:
                    txt = _sig(v)
                cells.append(f'<td class="n">{_e(txt)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f'<table data-csv="{_e(self.name)}.csv"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>"
                f'<p class="csv">also as <code>{_e(self.name)}.csv</code></p>')

    def csv(self) -> str:
        import csv as _csv

        buf = io.StringIO()
        w = _csv.writer(buf, lineterminator="\n")
        w.writerow([c.csv for c in self.cols])
        for r in self.rows:
            w.writerow(["" if v is None else (repr(float(v)) if isinstance(v, (float, np.floating)) else v)
                        for v in r])
        return buf.getvalue()


def report_tables(report: dict) -> dict[str, Table]:
    """Every table of the page, by CSV name."""
    t = {}
    s = report.get("summary") or build_summary(report)
    t["accuracy"] = Table("accuracy", [Col("backend", "backend"), Col("what ran", "label"),
                                        Col("accuracy", "accuracy", "pct"), Col("note", "note")],
                          [[a["backend"], a["label"], a["accuracy"], a.get("not_run") or ""]
                           for a in s["accuracy"]])
    t["layers"] = Table("layers", [
        Col("layer", "layer"), Col("neuron type", "type"), Col("synapse nodes", "synapse_nodes"),
        Col("neurons", "neurons", "int"), Col("firing rate", "firing_rate", "float"),
        Col("SOPs / inference", "synaptic_ops_per_sample", "int"),
        Col("analog MACs / inference", "macs_per_sample", "int"),
        Col("spikes / inference", "spikes_per_sample", "int"),
        Col("neuron updates / inference", "neuron_updates_per_sample", "int"),
        Col("ANN MACs", "ann_macs_per_sample", "int")],
        [[r["layer"], r["type"], " + ".join(r["synapse_nodes"]), r["neurons"], r["firing_rate"],
          r["synaptic_ops_per_sample"], r["macs_per_sample"], r["spikes_per_sample"],
          r["neuron_updates_per_sample"], r["ann_macs_per_sample"]] for r in report.get("layers") or []])
    en = report.get("energy") or {}
    if en:
        t["energy"] = Table("energy", [
            Col("model", "model"), Col("kind", "kind"), Col("energy / inference", "total_pj_per_sample", "energy"),
            Col("equivalent ANN", "ann_pj_per_sample", "energy"), Col("SNN / ANN", "snn_over_ann_ratio", "float"),
            Col("first layer", "first_layer"),
            Col("other first-layer rule", "other_rule_total_pj_per_sample", "energy")],
            [[n, r.get("kind"), r.get("total_pj_per_sample"), r.get("ann_pj_per_sample"),
              r.get("snn_over_ann_ratio"), r.get("first_layer"),
              (r.get("other_first_layer_rule") or {}).get("total_pj_per_sample")] for n, r in en.items()])
        t["energy_by_operation"] = Table("energy_by_operation", [
            Col("model", "model"), Col("operation", "operation"),
            Col("energy / inference", "pj_per_sample", "energy")],
            [[n, k.replace("_pj_per_sample", ""), v] for n, r in en.items()
             for k, v in r.get("per_operation_pj_per_sample", {}).items()])
        t["energy_by_layer"] = Table("energy_by_layer", [
            Col("model", "model"), Col("node", "node"), Col("energy / inference", "pj_per_sample", "energy")],
            [[n, k, v] for n, r in en.items() for k, v in r.get("per_node_pj_per_sample", {}).items()])
    la = report.get("latency") or {}
    meas = (report.get("measured") or {}).get("onnx")
    if la or meas:
        rows = [[f"{chip} (SNN, T = {r.get('timesteps')})", "modelled", r.get("seconds_per_sample"),
                 r.get("samples_per_second"), r.get("time_to_first_output_s")] for chip, r in la.items()]
        if meas:
            rows.append([f"{backend_label('onnx_ann', (report.get('model') or {}).get('method'))} "
                         "(this CPU, 1 thread)", "measured", meas.get("latency_seconds_per_sample"),
                         meas.get("throughput_samples_per_second"), None])
        t["latency"] = Table("latency", [Col("what", "what"), Col("kind", "kind"),
                                          Col("latency / inference", "seconds_per_sample", "time"),
                                          Col("inferences / s", "samples_per_second", "float"),
                                          Col("time to first output", "time_to_first_output_s", "time")], rows)
        for chip, r in la.items():
            t[f"mapping_{chip}"] = Table(f"mapping_{chip}", [
                Col("layer", "layer"), Col("role", "role"), Col("neurons", "neurons", "int"),
                Col("fan-in", "fan_in", "int"), Col("synapses", "synapses", "int"),
                Col("weight bits", "weight_bits", "int"), Col("synaptic bytes", "synaptic_memory_bytes", "int"),
                Col("cores", "cores", "int"), Col("cores limited by", "limited_by"),
                Col("mean core work / step", "mean_core_work_s_per_step", "time")],
                [[k, v.get("role", ""), v.get("neurons"), v.get("fan_in"), v.get("synapses"), v.get("weight_bits"),
                  v.get("synaptic_memory_bytes"), v.get("cores"), v.get("limited_by", ""),
                  (v.get("mean_core_work_ns_per_step") or 0) * 1e-9] for k, v in r.get("per_layer", {}).items()])
    sw = report.get("sweep")
    if sw:
        backends = sorted({b for r in sw for b in r["accuracy"]})
        t["sweep"] = Table("sweep", [Col("T", "timesteps", "int")] + [Col(b, b, "pct") for b in backends],
                           [[r["timesteps"]] + [r["accuracy"].get(b) for b in backends] for r in sw])
    cites, crow = citations(report)
    t["constants"] = Table("constants", [Col("model", "model"), Col("constant", "constant"),
                                          Col("value", "value"), Col("unit", "unit"), Col("source", "source")], crow)
    return t


_YEAR = re.compile(r"\b(?:19|20)\d{2}\b")


def split_source(src: str) -> tuple[str, str]:
    """(the work cited, the place in it) of a constant's source: the text up to the first year
    after the first quoted title ("Davies et al., 'Loihi: ...', IEEE Micro 38(1) 2018") and the
    rest ("Table 2 (pre-silicon, 0.75 V): synaptic spike op"); the whole text when it has no
    quoted title and year."""
    src = str(src)
    q1 = src.find("'")
    q2 = src.find("'", q1 + 1) if q1 >= 0 else -1
    m = _YEAR.search(src, q2 + 1) if q2 > 0 else None
    if not m:
        return src, ""
    end = m.end()
    ident = re.match(r"\s*\((?:arXiv:|doi|https?://|ieeexplore)[^()]*\)", src[end:])  # the work's identifier
    if ident:
        end += ident.end()
    return src[:end], src[end:].lstrip(" ,:;").strip()


def citations(report: dict) -> tuple[list[str], list[list]]:
    """(each work cited once, in order; constant rows [model, constant, value, unit,
    "[n] place in the work"])."""
    cites: list[str] = []
    rows = []

    def ref(src) -> str:
        work, place = split_source(src)
        if work not in cites:
            cites.append(work)
        return f"[{cites.index(work) + 1}]" + (f" {place}" if place else "")

    for name, r in (report.get("energy") or {}).items():
        for op, c in r.get("constants", {}).items():
            rows.append([name, op, c["value_pj"], "pJ", ref(c["source"])])
    for chip, r in (report.get("latency") or {}).items():
        for k, c in r.get("constants", {}).items():
            rows.append([chip, k, c["value"], "", ref(c["source"])])
    return cites, rows


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


def _table(header: list[str], rows: list[list], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of already-escaped cells (header escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(figs: dict, stem: str, alt: str) -> str:
    """The figure embedded as SVG (data URI; the PNG at 200 dpi is written beside the page)."""
    if stem not in figs:
        return "<p>(no data for this plot)</p>"
    b64 = base64.b64encode(figs[stem][0]).decode("ascii")
    return (f'<img alt="{_e(alt)}" src="data:image/svg+xml;base64,{b64}">'
            f'<p class="csv">figure files: <code>{_e(stem)}.svg</code>, <code>{_e(stem)}.png</code> (200 dpi)</p>')


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.2em auto;padding:0 1em;"
         "color:#222;line-height:1.4}h1{margin:0 0 .1em;font-size:1.5em}h2{border-bottom:2px solid #4878a8;"
         "padding-bottom:.2em;margin-top:1.6em}h3{margin:1em 0 .3em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
         "padding:2px 8px;text-align:left;vertical-align:top}th{background:#eef2f7}"
         "td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
         "img{max-width:100%}.note{color:#555;font-size:.92em}.csv{color:#777;font-size:.8em;margin:0 0 .8em}"
         ".measured{background:#fff4e0}.src{font-size:.85em;color:#444}"
         "nav{margin:.8em 0}nav a{margin-right:1em}"
         "section.card{border:2px solid #4878a8;border-radius:8px;padding:.6em 1.2em;background:#f7f9fc;margin-top:.6em}"
         "section.card h2{margin-top:.2em;border:none}.card .grid{display:flex;flex-wrap:wrap;gap:1.2em 2.5em}"
         ".card .big{font-size:1.6em;font-weight:600}.card .k{color:#555;font-size:.85em}"
         ".card table{margin:.2em 0}.tiles{display:flex;gap:1em;margin:.9em 0 .3em}"
         ".tile{flex:1;border-top:1px solid #ccd;padding-top:.4em}.tile .k{font-size:.78em}details{margin:.6em 0}summary{cursor:pointer;font-weight:600}")


def _html_summary(report: dict) -> str:
    s = report.get("summary") or build_summary(report)
    m = s.get("model") or {}
    model = ", ".join(str(x) for x in (
        f"method {m['method']}" if m.get("method") else None, f"arch {m['arch']}" if m.get("arch") else None,
        f"T = {m['timesteps']}" if m.get("timesteps") else None,
        f"dataset {m['dataset']}" if m.get("dataset") else None,
        f"{m['samples']} samples" if m.get("samples") else None) if x)
    out = [f'<p class="note"><b>Model:</b> {_e(model or "a NIR graph")}</p><div class="grid">']
    acc_rows = "".join(
        f"<tr><td>{_e(a['label'])}</td><td class=\"n\">"
        f"{_e(_pct(a['accuracy']) if a['accuracy'] is not None else 'not run')}</td></tr>"
        for a in s["accuracy"])
    out.append("<div><div class=\"k\">accuracy per backend</div>"
               + (f"<table><tbody>{acc_rows}</tbody></table>" if acc_rows else "<p>no labels: not measured</p>")
               + "</div>")
    e = s.get("energy") or {}
    if e.get("chip_models"):
        rows = "".join(f"<tr><td>{_e(n)} <span class=\"src\">({_e(c['source'])})</span></td>"
                       f"<td class=\"n\">{_e(_sig(c['uj_per_inference']))} µJ</td></tr>"
                       for n, c in e["chip_models"].items())
        sp = e.get("spread_uj")
        spread = (f"<div class=\"k\">spread across the cited tables: {_e(_sig(sp['min']))}–"
                  f"{_e(_sig(sp['max']))} µJ</div>" if sp and len(e["chip_models"]) > 1 else "")
        out.append("<div><div class=\"k\">energy per inference (modelled, chip-style models)</div>"
                   f"<table><tbody>{rows}</tbody></table>{spread}</div>")
    out.append("</div>")
    tiles = []
    if s.get("latency"):
        la = s["latency"]
        me = s.get("measured_latency")
        tiles.append((la["text"], "latency per inference", la["label"]
                      + (f"; {me['label']}: {me['text']}" if me else "")))
    if s.get("synaptic_ops_per_inference") is not None:
        tiles.append((_count(s["synaptic_ops_per_inference"]), "synaptic ops per inference",
                      f"counted by the simulator; plus {_count(s.get('analog_macs_per_inference'))} MACs "
                      "on analog input"))
        tiles.append((_count(s.get("spikes_per_inference")), "spikes per inference", "counted by the simulator"))
    r = s.get("snn_over_ann_energy_ratio")
    if r:
        tiles.append((_sig(r["value"]), "SNN / ANN energy", r["label"]))
    if tiles:
        out.append('<div class="tiles">' + "".join(
            f'<div class="tile"><div class="big">{_e(v)}</div><div><b>{_e(k)}</b></div>'
            f'<div class="k">{_e(note)}</div></div>' for v, k, note in tiles) + "</div>")
    return "".join(out)


def _html_accuracy(report, tables) -> str:
    inp = report.get("inputs") or {}
    head = ""
    if inp:
        head = "<p class=\"note\">" + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in inp.items()) + "</p>"
    note = ""
    if "onnx_ann" in (report.get("accuracy") or {}) and (report.get("model") or {}).get("method") == "snn2ann":
        note = ("<p class=\"note\">SNN2ANN trains one set of weights through an ANN branch and an SNN branch "
                "together; the ANN branch in onnxruntime is that shared-weight branch, not an ANN trained on "
                "its own, so its accuracy is no ANN baseline for the SNN.</p>")
    if not report.get("accuracy") and not report.get("not_run"):
        return head + "<p>No accuracy was measured (no labels).</p>"
    return head + tables["accuracy"].html() + note


def _html_layers(report, figs, tables) -> str:
    tot = (f"<p>Total per inference: <b>{_e(_count(report.get('synaptic_ops_per_sample')))}</b> synaptic "
           f"ops, {_e(_count(report.get('macs_per_sample')))} analog MACs, "
           f"{_e(_count(report.get('spikes_per_sample')))} spikes, "
           f"{_e(_count(report.get('neuron_updates_per_sample')))} neuron updates; equivalent ANN: "
           f"{_e(_count(report.get('ann_macs_per_sample')))} MACs. One row per layer: a neuron population "
           "with the synapse nodes that feed it.</p>")
    return ("<div style=\"display:flex;gap:1em;flex-wrap:wrap\"><div style=\"flex:1;min-width:300px\">"
            + _img(figs, "firing_rates", "firing rate per layer") + "</div><div style=\"flex:1;min-width:300px\">"
            + _img(figs, "synaptic_ops", "synaptic ops per layer") + "</div></div>" + tot + tables["layers"].html())


def _html_energy(report, figs, tables) -> str:
    en = report.get("energy") or {}
    if not en:
        return "<p>No trace: no energy estimate.</p>"
    fl = report.get("first_layer_rule") or report.get("first_layer")
    out = ["<p class=\"note\">Every number here is modelled: the simulator's counts times each model's "
           "per-operation constants (constants and sources at the end). <b>chip-style</b>: a neuromorphic "
           "chip's per-operation costs; <b>gpu-style</b>: MACs and accumulates, the convention of SNN papers; "
           "<b>ann-device</b>: the equivalent ANN on a conventional device (keras-spiking's cpu, gpu, arm). "
           f"First-layer rule of the GPU-style models: <b>{_e(fl)}</b>.</p>",
           tables["energy"].html(),
           "<h3>Chip-style models</h3>", _img(figs, "energy_chip", "chip-style energy by operation and by layer"),
           "<h3>GPU-style and ANN-device models</h3>",
           _img(figs, "energy_gpu_ann", "GPU-style and ANN-device energy"),
           "<details><summary>Energy per operation and per layer, every model (tables)</summary>",
           tables["energy_by_operation"].html(), tables["energy_by_layer"].html(), "</details>"]
    return "".join(out)


def _html_latency(report, tables) -> str:
    la = report.get("latency") or {}
    out = []
    if "latency" in tables:
        out.append(tables["latency"].html())
        out.append("<p class=\"note\">Modelled rows come from the Loihi-style mapping and step-time model "
                   "(Davies et al. 2018); the measured row is wall-clock time on the machine that wrote this "
                   "report (throughput over the whole batch) and is not comparable across machines.</p>")
    for chip, r in la.items():
        out.append(
            f"<details><summary>{_e(chip)}: mapping onto cores and step time</summary><p>"
            f"{_num(r.get('cores'))} cores on {_num(r.get('chips'))} chip(s), "
            f"{_num(r.get('synaptic_memory_bytes'))} bytes of synaptic weights; T = {_num(r.get('timesteps'))}, "
            f"synaptic depth {_num(r.get('synaptic_depth'))}; mean step time "
            f"{_e(fmt_time(r.get('mean_step_time_s')))} (barrier {_num(r.get('barrier_ns'))} ns); "
            f"<b>{_e(fmt_time(r.get('seconds_per_sample')))} per inference</b>, "
            f"{_e(_count(r.get('samples_per_second')))} inferences/s.</p>"
            + tables[f"mapping_{chip}"].html() + "</details>")
    return "".join(out) or "<p>No trace: no latency estimate.</p>"


def _html_sweep(report, figs, tables) -> str:
    if not report.get("sweep"):
        return ("<p>No sweep was run. Run one with <code>spikebridge report ... "
                "--sweep-timesteps 1,2,4,8</code> or pass <code>--sweep FILE</code>.</p>")
    return _img(figs, "accuracy_vs_T", "accuracy vs T") + tables["sweep"].html()


def _html_method(report, tables) -> str:
    m = ("<details><summary>Counting rules</summary><ul>"
         + "".join(f"<li>{_e(x)}</li>" for x in report.get("rules", [])) + "</ul></details>")
    m += f"<p>First-layer rule used: <b>{_e(report.get('first_layer_rule') or report.get('first_layer'))}</b>.</p>"
    m += f"<p>Input-layer rule used: <b>{_e((report.get('input_layer') or {}).get('rule', 'not recorded'))}</b>.</p>"
    cites, _ = citations(report)
    if tables["constants"].rows:
        m += ("<details><summary>Constants (" + str(len(tables["constants"].rows)) + ") and their "
              + str(len(cites)) + " sources</summary>" + tables["constants"].html()
              + "<ol>" + "".join(f'<li class="src">{_e(c)}</li>' for c in cites) + "</ol></details>")
    prov = [[_e(k), _e(v)] for k, v in (report.get("versions") or {}).items()]
    prov += [["seed", _e(report.get("seed"))], ["graph sha256", _e(report.get("graph_sha256"))],
             ["graph sha256 of", _e(report.get("graph_sha256_of"))],
             ["schema version", _e(report.get("schema_version"))]]
    m += ("<details><summary>Provenance</summary><table><tbody>"
          + "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in prov) + "</tbody></table></details>")
    return m


# Sections other modules add to the page (e.g. the NeuroBench metrics): key -> (title, render).
EXTRA_SECTIONS: dict[str, tuple[str, object]] = {}


def register_section(key: str, title: str, render) -> None:
    """Add a section right after the summary card: ``render(report) -> str | None`` returns
    the section's HTML (every string escaped by the renderer) or None to leave it out (e.g.
    when its key is missing from report.json). Registered once, at import of the module."""
    EXTRA_SECTIONS[key] = (title, render)


register_section("neurobench", "NeuroBench metrics",
                 lambda report: _neurobench.render_section(report.get("neurobench")))


def render_html(report: dict, figs: dict) -> str:
    """The page: the summary card first, then registered extra sections, then SECTIONS."""
    sec = dict(SECTIONS)
    tables = report_tables(report)
    parts = [("accuracy", _html_accuracy(report, tables)), ("layers", _html_layers(report, figs, tables)),
             ("energy", _html_energy(report, figs, tables)), ("latency", _html_latency(report, tables)),
             ("raster", _img(figs, "spike_raster", "spike raster")),
             ("sweep", _html_sweep(report, figs, tables)), ("method", _html_method(report, tables))]
    extra = []
    for key, (title, render) in EXTRA_SECTIONS.items():
        content = render(report)
        if content:
            extra.append((key, title, content))
    nav = "<nav>" + "".join(f'<a href="#{_e(k)}">{_e(t)}</a>' for k, t, _ in extra) \
        + "".join(f'<a href="#{k}">{_e(sec[k])}</a>' for k, _ in SECTIONS if k != "summary") + "</nav>"
    body = "".join(f'<section id="{_e(key)}"><h2>{_e(title)}</h2>{content}</section>' for key, title, content in extra)
    body += "".join(f'<section id="{key}"><h2>{_e(sec[key])}</h2>{content}</section>' for key, content in parts)
    sub = (f"<p class=\"note\">counts from backend {_e(report.get('backend'))}; graph sha256 "
           f"{_e(str(report.get('graph_sha256'))[:16])}...</p>")
    card = f'<section id="summary" class="card"><h2>{_e(sec["summary"])}</h2>{_html_summary(report)}</section>'
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>spikebridge report</title>"
            f"<style>{STYLE}</style></head><body><h1>spikebridge report</h1>{card}{sub}{nav}{body}"
            "</body></html>\n")


def write_report(out_dir, report: dict, trace: Trace | None = None,
                 graph: nir.NIRGraph | None = None) -> dict[str, Path]:
    """Write report.json, report.html, every figure (NAME.svg, NAME.png at 200 dpi) and every
    table as NAME.csv into ``out_dir`` (atomically, each).

    ``trace`` supplies the spike raster; ``graph`` is accepted for callers that hold one
    (the layer order already comes from the report). Returns paths by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(report, trace)
    paths = {}
    for stem, (svg, png) in figs.items():
        for name, data in ((f"{stem}.svg", svg), (f"{stem}.png", png)):
            atomic_write_bytes(out / name, data)
            paths[name] = out / name
    for name, table in report_tables(report).items():
        atomic_write_text(out / f"{name}.csv", table.csv())
        paths[f"{name}.csv"] = out / f"{name}.csv"
    atomic_write_json(out / "report.json", report)
    paths["report.json"] = out / "report.json"
    atomic_write_text(out / "report.html", render_html(report, figs))
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
