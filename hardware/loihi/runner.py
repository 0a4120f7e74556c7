"""Running a Loihi plan: the pieces the Lava backend and the integer model share (numpy only).

    prepare(graph, x, precision, ...) -> Prepared   # lower (+ threshold groups, + quantise), input
    to_trace(prepared, out, extra) -> Trace         # result arrays (worker or integer model) -> Trace
    fixed_trace(graph, x, ...) -> Trace             # the `loihi-fixed` integer model, bit-exact with
                                                    # Lava fixed_pt (spikebridge.hardware.loihi.reference)

Both consumers call the same ``prepare`` and ``to_trace``, so a Lava run and an integer-model
run of one graph differ only in who computes the result arrays.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from spikebridge.base.dialect import META_KEY
from spikebridge.base.errors import DatasetError, UnsupportedError
from spikebridge.hardware.eventsim.counts import count_ops
from spikebridge.hardware.graph import analyse, load_graph
from spikebridge.hardware.loihi.fixedpoint import QPlan, quantize
from spikebridge.hardware.loihi.groups import merge_outputs, merged_meta, split_threshold_groups
from spikebridge.hardware.loihi.plan import NEURON, Plan, _meta, _param_meta, lower
from spikebridge.hardware.loihi.reference import run_qplan
from spikebridge.hardware.trace import Trace

# Connections with at most this many matrix elements (or denser than 20 %) become Lava Dense,
# the others lava.proc.sparse Sparse (scipy csr); the integer model follows the same choice
# (Dense and Sparse differ on overflow).
DENSE_MAX_ELEMENTS = 250_000
ENGINES = ("reference",)


@dataclass
class Prepared:
    """A lowered (and for fixed point quantised) graph with its time-first input."""

    graph: object
    plan: Plan
    qplan: QPlan | None
    meta: dict          # plan (or qplan) meta, a copy the caller may extend
    arrays: dict
    xt: np.ndarray      # (T, B, *in_shape) float input
    xs: np.ndarray      # (T, B, n_in) what the spike source sends (integers for fixed point)
    plan_s: float


def graph_timesteps(graph) -> int | None:
    md = getattr(graph, "metadata", None) or {}
    sb = md.get(META_KEY, {}) if isinstance(md, dict) else {}
    t = sb.get("timesteps") if isinstance(sb, dict) else None
    return None if t is None else int(np.asarray(t))


def _as_time_first(x, in_shape, timesteps) -> np.ndarray:
    """(T, batch, *in_shape) or (batch, *in_shape) (direct encoding: repeated T times)."""
    x = np.asarray(x, dtype=np.float64)
    k = len(in_shape)
    if x.ndim == k + 2 and tuple(x.shape[2:]) == tuple(in_shape):
        if timesteps is not None and x.shape[0] != timesteps:
            raise DatasetError(f"input has {x.shape[0]} time steps, expected {timesteps}", place="x")
        return x
    if x.ndim == k + 1 and tuple(x.shape[1:]) == tuple(in_shape):
        if timesteps is None:
            raise DatasetError("a static input (batch, *shape) needs timesteps (graph metadata "
                               "spikebridge.timesteps or the timesteps argument)", place="x")
        return np.broadcast_to(x[None], (timesteps,) + x.shape)
    raise DatasetError(f"input shape {x.shape} does not fit the Input node shape {tuple(in_shape)} "
                       "as (T, batch, *shape) or (batch, *shape)", place="x")


def activations(plan: Plan, x: np.ndarray, spikes: dict, amps: dict) -> dict[str, np.ndarray]:
    """Every node's output (T, batch, n) from the recorded spikes (main process, numpy)."""
    T, B = x.shape[:2]
    acts = {}
    # Only inputs of synaptic nodes matter for counting; the others get a free placeholder.
    needed = {p for n in plan.order if n in plan.ops for p in plan.preds[n]}
    for n in plan.order:
        if n in plan.ops and n not in needed:
            acts[n] = np.broadcast_to(np.zeros(1), (T, B, int(np.prod(plan.shapes[n]))))
            continue
        k = plan.kinds[n]
        if k == "Input":
            acts[n] = x.reshape(T, B, -1)
        elif k in NEURON:
            acts[n] = spikes[n].reshape(T, B, -1) * amps[n][None, None, :]
        elif n in plan.ops:
            m, b = plan.ops[n]
            xin = sum(acts[p] for p in plan.preds[n])
            y = m.matvec(xin.reshape(T * B, -1).T).T + b[None, :]
            acts[n] = y.reshape(T, B, -1)
        elif k == "Output":
            acts[n] = np.broadcast_to(np.zeros(1), (T, B, int(np.prod(plan.shapes[n]))))
    return acts


def prepare(graph, x, precision: str, allow_reset_to_zero: bool = False, timesteps: int | None = None,
            window: int | None = None, threshold_groups=None) -> Prepared:
    """Lower (and for fixed point quantise) ``graph``; returns the pieces a run needs.
    threshold_groups: None/False (fold per-neuron thresholds into the rows), True or a
    max_span (split populations whose folded gains span more than that, default 4x, into
    LIF processes with their own vth: spikebridge.hardware.loihi.groups)."""
    if precision not in ("float", "fixed"):
        raise UnsupportedError(f"precision {precision!r} is not 'float' or 'fixed'", place="precision")
    if isinstance(graph, (str, bytes)) or hasattr(graph, "__fspath__"):
        graph = load_graph(graph)  # validated reading only
    T0 = timesteps
    inp = [n for n, v in graph.nodes.items() if type(v).__name__ == "Input"]
    if len(inp) == 1:
        in_shape = tuple(int(s) for s in np.asarray(graph.nodes[inp[0]].input_type["input"]).reshape(-1))
        xa = np.asarray(x)
        if T0 is None and xa.ndim == len(in_shape) + 2:
            T0 = xa.shape[0]
        if T0 is None:
            T0 = graph_timesteps(graph)
    t0 = time.perf_counter()
    plan = lower(graph, T0 or 1, allow_reset_to_zero=allow_reset_to_zero, window=window)
    if threshold_groups:
        span = 4.0 if threshold_groups is True else float(threshold_groups)
        plan = split_threshold_groups(plan, max_span=span)
    qplan = None
    if precision == "fixed":
        qplan = quantize(plan)
    t_plan = time.perf_counter() - t0
    in_shape = tuple(plan.meta["input"]["shape"])
    xt = _as_time_first(x, in_shape, T0)
    T, B = xt.shape[:2]
    if B == 0:
        raise DatasetError("empty batch", place="x")
    meta = dict(plan.meta if qplan is None else qplan.meta)
    arrays = plan.arrays if qplan is None else qplan.arrays
    xs = np.ascontiguousarray(xt.reshape(T, B, -1))
    if qplan is not None:
        xs = qplan.quantize_input(xs)
    return Prepared(graph, plan, qplan, meta, arrays, xt, xs, t_plan)


def to_trace(pr: Prepared, out: dict, precision: str, extra: dict) -> Trace:
    """Trace from the worker's (or the integer model's) result arrays ``spikes__<pop>``,
    ``output__<readout>`` (aligned, (T, B, n)) and optional ``u__``/``v__`` final states."""
    graph, plan, meta, xt = pr.graph, pr.plan, pr.meta, pr.xt
    groups = meta.get("threshold_groups")
    out = merge_outputs(meta, plan.arrays, out)
    meta = merged_meta(meta)
    T, B = xt.shape[:2]
    spikes = {}
    amps = {}
    for p in meta["populations"]:
        name = p["name"]
        spikes[name] = out["spikes__" + name].reshape((T, B) + tuple(p["shape"]))
        amps[name] = _param_meta(_meta(graph.nodes[name]).get("spike_amplitude"), (p["size"],), 1.0)
    outputs = {}
    for r in meta["readouts"]:
        if r["kind"] == "analog":
            outputs[r["name"]] = out["output__" + r["name"]].reshape((T, B) + tuple(r["shape"]))
        else:
            src = r["source"]
            outputs[r["name"]] = (spikes[src].reshape(T, B, -1) * amps[src]).reshape((T, B) + tuple(r["shape"]))
    acts = activations(plan, xt.reshape(T, B, -1), spikes, amps)
    shaped = {n: a.reshape((T, B) + tuple(plan.shapes[n])) if n in plan.shapes else a for n, a in acts.items()}
    counts = count_ops(graph, analyse(graph), shaped)  # the simulator's definitions (one op count)
    delays = {p["name"]: p["depth"] for p in meta["populations"]}
    delays.update({r["name"]: r["depth"] for r in meta["readouts"]})
    tm = {"lava_delay_steps": delays, "window_steps": meta["window"], "precision": precision,
          "select_tag": "floating_pt" if precision == "float" else "fixed_pt",
          "timing": {"raw": "Lava step of sample k, step j at node n: k*window + j + lava_delay_steps[n] + 1",
                     "aligned": "outputs/spikes here: step j of each sample (delay removed)"},
          "reset": {p["name"]: p["reset"] for p in meta["populations"]}}
    tm.update(extra)
    if groups:
        tm["threshold_groups"] = {n: len(g["groups"]) for n, g in groups.items()}
    if any(p["reset"] == "subtract" for p in meta["populations"]):
        tm["approximation"] = "subtractive reset run as reset to zero (allow_reset_to_zero=True)"
    state = {k: v for k, v in out.items() if k.startswith(("u__", "v__"))}
    if state:
        tm["final_state"] = state
    return Trace(timesteps=T, batch=B, outputs=outputs, counts=counts, spikes=spikes,
                 backend="lava", meta=tm)


def fixed_trace(graph, x, timesteps: int | None = None, window: int | None = None,
                allow_reset_to_zero: bool = False, record_spikes: bool = True,
                record_state: bool = False, threshold_groups=None, engine: str = "reference") -> Trace:
    """The `loihi-fixed` integer model on the same plan run_lava(precision="fixed") runs.
    Bit-exact with Lava: same spikes, same final u/v, same analog outputs.

    engine: "reference" (the step-by-step int64 model: ``spikebridge.hardware.loihi.reference``)."""
    if engine not in ENGINES:
        raise UnsupportedError(f"integer-model engine {engine!r} is not one of {list(ENGINES)}", place="engine")
    pr = prepare(graph, x, "fixed", allow_reset_to_zero, timesteps, window, threshold_groups)
    meta, xs = pr.meta, pr.xs
    T = pr.xt.shape[0]
    P = int(meta["window"])
    D = int(meta["max_depth"])
    if record_state and P < T + D:
        raise ValueError("record_state needs window >= timesteps + max depth")
    # Steps are causal: the first T aligned steps need no more; final states need T + D - 1.
    S = P if engine == "reference" else (T + D if record_state else T)
    xp = np.zeros((S,) + xs.shape[1:])
    xp[:T] = xs
    meta["dense_max_elements"] = DENSE_MAX_ELEMENTS  # the worker's Dense/Sparse choice (overflow rules)
    run = run_qplan
    t0 = time.perf_counter()
    res = run(meta, pr.arrays, xp, record_state=record_state)
    t_run = time.perf_counter() - t0
    out = {"spikes__" + n: s[:T] for n, s in res["spikes"].items()}
    out.update({"output__" + n: o[:T] for n, o in res["outputs"].items()})
    if record_state:
        for p in meta["populations"]:
            i = T + D - int(p["depth"]) - 1
            out["u__" + p["name"]] = res["u"][p["name"]][i, -1]
            out["v__" + p["name"]] = res["v"][p["name"]][i, -1]
    tr = to_trace(pr, out, "fixed", {"plan_s": pr.plan_s, "integer_model_s": t_run, "engine": engine,
                                     "fixed_point": {"input_frac": pr.qplan.input_frac,
                                                     "layers": pr.qplan.layers}})
    tr.backend = "eventsim"
    tr.profile = "loihi-fixed"
    if not record_spikes:
        tr.spikes = {}
    return tr


def simulate_fixed(graph, x, dt=None, record_spikes: bool = True, info=None, threshold_groups=None, **_):
    """eventsim's entry for profiles 'loihi-fixed' (and 'loihi-fixed-groups': threshold
    groups): returns a Trace like ``simulate``."""
    return fixed_trace(graph, x, record_spikes=record_spikes, threshold_groups=threshold_groups)
