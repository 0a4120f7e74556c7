"""The Lava backend: NIR graph -> Lava processes, run in a Python 3.10 worker process.

The main process never imports lava: ``plan.lower`` turns the graph into plain arrays
(numpy only), ``supervisor.run_job`` runs ``worker.py`` on the Lava interpreter in its
own process group, and the recorded activations come back time first, aligned to the
delay-free semantics of the event-driven simulator.

    run_lava(graph, x, precision="float", allow_reset_to_zero=False, timeout_s=None,
             progress=None) -> Trace
    lava_status() -> dict          # for `spikebridge doctor`
"""
from __future__ import annotations

import time

import numpy as np

from spikebridge.base.errors import BackendError, DatasetError, UnsupportedError
from spikebridge.hardware.lava.plan import META_KEY, NEURON, Coo, Plan, lower
from spikebridge.hardware.lava.supervisor import lava_status, run_job
from spikebridge.hardware.trace import Trace

__all__ = ["run_lava", "fixed_trace", "run_fixed_plan", "lava_status", "lower", "BackendError",
           "UnsupportedError"]

# Sink buffers hold (neurons x steps) float64; keep one run's recordings below this many values.
MAX_RECORDED_VALUES = 40_000_000
# Connections with at most this many matrix elements (or denser than 20 %) become Lava Dense,
# the others lava.proc.sparse Sparse (scipy csr).
DENSE_MAX_ELEMENTS = 250_000


def _graph_timesteps(graph) -> int | None:
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


def _activations(plan: Plan, x: np.ndarray, spikes: dict, amps: dict) -> dict[str, np.ndarray]:
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


def _counts(plan: Plan, acts: dict) -> dict[str, dict[str, np.ndarray]]:
    """Trace counts with the simulator's definitions (used until eventsim's count_ops exists)."""
    counts = {}
    for n in plan.order:
        k = plan.kinds[n]
        if k in NEURON:
            a = acts[n]
            counts[n] = {"neuron_updates": np.full(a.shape[0], a.shape[1] * a.shape[2], dtype=np.int64),
                         "spikes": (a != 0).sum(axis=(1, 2)).astype(np.int64)}
        elif n in plan.ops:
            m: Coo = plan.ops[n][0]
            fan = m.fanout().astype(np.int64)
            c = {"synaptic_ops": np.zeros(0, np.int64), "macs": np.zeros(0, np.int64)}
            spiking = all(plan.kinds[p] in NEURON for p in plan.preds[n])
            xin = sum(acts[p] for p in plan.preds[n])
            ops = ((xin != 0) * fan[None, None, :]).sum(axis=(1, 2)).astype(np.int64)
            zero = np.zeros_like(ops)
            c["synaptic_ops"], c["macs"] = (ops, zero) if spiking else (zero, ops)
            counts[n] = c
    return counts


def _prepare(graph, x, precision, allow_reset_to_zero, timesteps, window, threshold_groups=None):
    """Lower (and for fixed point quantise) ``graph``; returns the pieces a run needs.
    threshold_groups: None/False (fold per-neuron thresholds into the rows), True or a
    max_span (split populations whose folded gains span more than that, default 4x, into
    LIF processes with their own vth: spikebridge.hardware.lava.groups)."""
    if precision not in ("float", "fixed"):
        raise UnsupportedError(f"precision {precision!r} is not 'float' or 'fixed'", place="precision")
    if isinstance(graph, (str, bytes)) or hasattr(graph, "__fspath__"):
        from spikebridge.hardware.graph import load_graph  # validated reading only
        graph = load_graph(graph)
    T0 = timesteps
    inp = [n for n, v in graph.nodes.items() if type(v).__name__ == "Input"]
    if len(inp) == 1:
        in_shape = tuple(int(s) for s in np.asarray(graph.nodes[inp[0]].input_type["input"]).reshape(-1))
        xa = np.asarray(x)
        if T0 is None and xa.ndim == len(in_shape) + 2:
            T0 = xa.shape[0]
        if T0 is None:
            T0 = _graph_timesteps(graph)
    t0 = time.perf_counter()
    plan = lower(graph, T0 or 1, allow_reset_to_zero=allow_reset_to_zero, window=window)
    if threshold_groups:
        from spikebridge.hardware.lava.groups import split_threshold_groups
        span = 4.0 if threshold_groups is True else float(threshold_groups)
        plan = split_threshold_groups(plan, max_span=span)
    qplan = None
    if precision == "fixed":
        from spikebridge.hardware.fixedpoint import quantize
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
    return graph, plan, qplan, meta, arrays, xt, xs, t_plan


def _trace(graph, plan, meta, out, xt, precision, extra) -> Trace:
    """Trace from the worker's (or the integer model's) result arrays."""
    from spikebridge.hardware.lava.groups import merge_outputs, merged_meta
    groups = meta.get("threshold_groups")
    out = merge_outputs(meta, plan.arrays, out)
    meta = merged_meta(meta)
    T, B = xt.shape[:2]
    spikes = {}
    amps = {}
    from spikebridge.hardware.lava.plan import _meta, _param_meta
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
    acts = _activations(plan, xt.reshape(T, B, -1), spikes, amps)
    counts = _counts_via_eventsim(graph, plan, acts)
    if counts is None:
        counts = _counts(plan, acts)
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


def run_lava(graph, x, precision: str = "float", allow_reset_to_zero: bool = False,
             timeout_s: float | None = None, progress=None, timesteps: int | None = None,
             window: int | None = None, record_state: bool = False, threshold_groups=None) -> Trace:
    """Run ``graph`` on Lava (float: Loihi2SimCfg floating_pt; fixed: fixed_pt with the
    quantisation of ``spikebridge.hardware.fixedpoint``) for a batch of inputs.

    x: (T, batch, *input_shape), or (batch, *input_shape) repeated over T steps (direct
    encoding; T from ``timesteps`` or the graph's spikebridge.timesteps).
    Returns a Trace (backend "lava") whose outputs and spikes are time first and aligned
    to the delay-free semantics; ``meta["lava_delay_steps"]`` gives each node's raw Lava
    delay in steps (raw Lava step of sample k, step j: k*window + j + delay + 1).
    ``progress(done, total)`` is called as chunks of samples finish. ``record_state``
    (needs window >= T + depth) puts the final u and v of every population in
    ``meta["final_state"]``. ``threshold_groups`` (True or a max span, e.g. 4.0): split
    populations with widely spread per-neuron thresholds into LIF processes with their
    own vth (spikebridge.hardware.lava.groups; same float function, better fixed-point resolution).
    Raises UnsupportedError (graph not expressible), BackendError (worker failure, timeout,
    missing .venv-lava).
    """
    graph, plan, qplan, meta, arrays, xt, xs, t_plan = _prepare(
        graph, x, precision, allow_reset_to_zero, timesteps, window, threshold_groups)
    T, B = xt.shape[:2]
    if record_state:
        if meta["window"] < T + meta["max_depth"]:
            raise ValueError("record_state needs window >= timesteps + max depth")
        meta["record_state"] = True
    n_rec = sum(p["size"] for p in meta["populations"]) + sum(
        r["size"] for r in meta["readouts"] if r["kind"] == "analog") + meta["input"]["size"]
    meta["dense_max_elements"] = DENSE_MAX_ELEMENTS
    meta["chunk_samples"] = int(max(1, min(B, MAX_RECORDED_VALUES // max(1, n_rec * meta["window"]))))
    t1 = time.perf_counter()
    out, info = run_job(meta, arrays, xs, timeout_s=timeout_s, progress=progress)
    wall = time.perf_counter() - t1
    extra = {"plan_s": t_plan, "worker_wall_s": wall, "worker": info}
    if qplan is not None:
        extra["fixed_point"] = {"input_frac": qplan.input_frac, "layers": qplan.layers}
    return _trace(graph, plan, meta, out, xt, precision, extra)


def fixed_trace(graph, x, timesteps: int | None = None, window: int | None = None,
                allow_reset_to_zero: bool = False, record_spikes: bool = True,
                record_state: bool = False, threshold_groups=None) -> Trace:
    """The `loihi-fixed` integer model on the same plan run_lava(precision="fixed") runs.
    Bit-exact with Lava: same spikes, same final u/v, same analog outputs."""
    from spikebridge.hardware.eventsim.loihi_fixed import run_qplan

    graph, plan, qplan, meta, arrays, xt, xs, t_plan = _prepare(
        graph, x, "fixed", allow_reset_to_zero, timesteps, window, threshold_groups)
    T, B = xt.shape[:2]
    P = int(meta["window"])
    xp = np.zeros((P,) + xs.shape[1:])
    xp[:T] = xs
    meta["dense_max_elements"] = DENSE_MAX_ELEMENTS  # the worker's Dense/Sparse choice (overflow rules)
    res = run_qplan(meta, arrays, xp, record_state=record_state)
    out = {"spikes__" + n: s[:T] for n, s in res["spikes"].items()}
    out.update({"output__" + n: o[:T] for n, o in res["outputs"].items()})
    if record_state:
        D = int(meta["max_depth"])
        if P < T + D:
            raise ValueError("record_state needs window >= timesteps + max depth")
        for p in meta["populations"]:
            i = T + D - int(p["depth"]) - 1
            out["u__" + p["name"]] = res["u"][p["name"]][i, -1]
            out["v__" + p["name"]] = res["v"][p["name"]][i, -1]
    tr = _trace(graph, plan, meta, out, xt, "fixed",
                {"plan_s": t_plan, "fixed_point": {"input_frac": qplan.input_frac, "layers": qplan.layers}})
    tr.backend = "eventsim"
    tr.profile = "loihi-fixed"
    if not record_spikes:
        tr.spikes = {}
    return tr


def run_fixed_plan(meta: dict, arrays: dict, x_int: np.ndarray, timeout_s: float | None = None,
                   record_state: bool = False) -> dict:
    """Run an already quantised plan (meta/arrays as ``spikebridge.hardware.fixedpoint.QPlan``) on Lava
    fixed_pt; x_int (T, batch, n_in) integers. Returns the worker's arrays (spikes__*,
    output__*, and u__*/v__* final states with record_state)."""
    meta = dict(meta)
    meta["precision"] = "fixed"
    meta["record_state"] = bool(record_state)
    meta.setdefault("dense_max_elements", DENSE_MAX_ELEMENTS)
    meta.setdefault("chunk_samples", int(np.asarray(x_int).shape[1]))
    out, _ = run_job(meta, arrays, np.ascontiguousarray(x_int, dtype=np.float64), timeout_s=timeout_s)
    return out


def _counts_via_eventsim(graph, plan, acts):
    """Use the simulator's own counting when it exists (one definition of an op)."""
    try:
        from spikebridge.hardware.eventsim.counts import count_ops
        from spikebridge.hardware.graph import analyse
    except ImportError:
        return None
    info = analyse(graph)
    T, B = next(iter(acts.values())).shape[:2]
    shaped = {}
    for n, a in acts.items():
        shp = plan.shapes.get(n)
        shaped[n] = a.reshape((T, B) + tuple(shp)) if shp is not None else a
    return count_ops(graph, info, shaped)
