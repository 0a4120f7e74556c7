"""Running a Loihi plan: the pieces the Lava backend and the integer model share (numpy only).

    prepare(graph, x, precision, ...) -> Prepared   # lower (+ threshold groups, + quantise), input
    to_trace(prepared, out, extra) -> Trace         # result arrays (worker or integer model) -> Trace
    fixed_trace(graph, x, ...) -> Trace             # the `loihi-fixed` integer model, bit-exact with
                                                    # Lava fixed_pt (loihi.fast; engine="reference":
                                                    # the step-by-step oracle, loihi.reference)

Both consumers call the same ``prepare`` and ``to_trace``, so a Lava run and an integer-model
run of one graph differ only in who computes the result arrays.

Lowering and quantisation depend only on the graph and the plan options, so ``compiled``
keeps the last few results keyed by the graph's CONTENT (a digest of every node parameter,
edge and metadata value): running a graph batch by batch lowers it once, and a graph
changed in place is lowered again.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from spikebridge.base.dialect import META_KEY
from spikebridge.base.errors import DatasetError, UnsupportedError
from spikebridge.hardware.eventsim.counts import count_ops
from spikebridge.hardware.graph import GraphInfo, analyse, load_graph
from spikebridge.hardware.loihi.fast import blas_threads, compile_qplan, run_qplan_fast
from spikebridge.hardware.loihi.fixedpoint import QPlan, quantize
from spikebridge.hardware.loihi.groups import merge_outputs, merged_meta, split_threshold_groups
from spikebridge.hardware.loihi.plan import NEURON, READOUT_NEURON, Plan, _meta, _param_meta, lower
from spikebridge.hardware.loihi.reference import run_qplan
from spikebridge.hardware.trace import Trace

# Connections with at most this many matrix elements (or denser than 20 %) become Lava Dense,
# the others lava.proc.sparse Sparse (scipy csr); the integer model follows the same choice
# (Dense and Sparse differ on overflow).
DENSE_MAX_ELEMENTS = 250_000
ENGINES = ("fast", "reference")
COMPILED_MAX = 8  # graphs whose lowering is kept


@dataclass
class Compiled:
    """What a graph lowers to, independent of the input: reused across batches."""

    plan: Plan
    qplan: QPlan | None
    plan_s: float
    info: GraphInfo | None = None          # analyse(graph), for the op counts
    fast: dict = field(default_factory=dict)  # dense_max_elements -> fast.compile_qplan of qplan
    op_csr: dict = field(default_factory=dict)  # synaptic node -> csr (activations for counting)


_COMPILED: OrderedDict = OrderedDict()


def _feed(h, v) -> None:
    if isinstance(v, np.ndarray) or (hasattr(v, "dtype") and hasattr(v, "shape")):
        a = np.ascontiguousarray(v)
        h.update(f"a{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(v, dict):
        h.update(b"d%d" % len(v))
        for k in sorted(v, key=str):
            _feed(h, str(k))
            _feed(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(b"l%d" % len(v))
        for x in v:
            _feed(h, x)
    else:
        h.update(f"{type(v).__name__}:{v!r};".encode())


def graph_digest(graph) -> str:
    """A digest of a NIR graph's content: node types and every parameter, edges, metadata."""
    h = hashlib.sha1(usedforsecurity=False)  # a content fingerprint (the fastest hashlib digest here)
    for name in sorted(graph.nodes):
        node = graph.nodes[name]
        _feed(h, [name, type(node).__name__])
        _feed(h, dict(vars(node)))
    _feed(h, sorted(map(tuple, graph.edges)))
    _feed(h, getattr(graph, "metadata", None) or {})
    return h.hexdigest()


def compiled(graph, timesteps: int, precision: str, allow_reset_to_zero: bool = False,
             window: int | None = None, threshold_groups=None) -> Compiled:
    """lower (+ split_threshold_groups, + quantize for fixed point), cached by graph content."""
    span = None if not threshold_groups else (4.0 if threshold_groups is True else float(threshold_groups))
    key = (graph_digest(graph), int(timesteps), precision, bool(allow_reset_to_zero), window, span)
    hit = _COMPILED.get(key)
    if hit is not None:
        _COMPILED.move_to_end(key)
        return hit
    t0 = time.perf_counter()
    plan = lower(graph, timesteps, allow_reset_to_zero=allow_reset_to_zero, window=window)
    if span is not None:
        plan = split_threshold_groups(plan, max_span=span)
    qplan = quantize(plan) if precision == "fixed" else None
    c = Compiled(plan, qplan, time.perf_counter() - t0)
    _COMPILED[key] = c
    while len(_COMPILED) > COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return c


@dataclass
class Prepared:
    """A lowered (and for fixed point quantised) graph with its time-first input."""

    graph: object
    plan: Plan
    qplan: QPlan | None
    compiled: Compiled
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


def activations(plan: Plan, x: np.ndarray, spikes: dict, amps: dict, op_csr: dict | None = None
                ) -> dict[str, np.ndarray]:
    """Every node's output (T, batch, n) from the recorded spikes (main process, numpy).
    ``op_csr`` caches each synaptic node's matrix as CSR across calls."""
    op_csr = {} if op_csr is None else op_csr
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
        elif k in NEURON or k in READOUT_NEURON:  # only the nonzero pattern is counted: bool spikes when the amplitude is 1
            a = amps[n]
            acts[n] = spikes[n].reshape(T, B, -1) if np.all(a == 1) else spikes[n].reshape(T, B, -1) * a[None, None, :]
        elif n in plan.ops:
            m, b = plan.ops[n]
            if n not in op_csr:
                ident = (m.shape[0] == m.shape[1] == m.vals.size and not np.any(b)
                         and np.array_equal(m.rows, np.arange(m.shape[0])) and np.array_equal(m.cols, m.rows)
                         and np.all(m.vals == 1))
                op_csr[n] = None if ident else sp.csr_matrix((m.vals, (m.rows, m.cols)), shape=m.shape)
            ins = [acts[p] for p in plan.preds[n]]
            xin = ins[0] if len(ins) == 1 else sum(a.astype(np.float64) for a in ins)
            if op_csr[n] is None:  # Flatten, Identity: the input itself
                acts[n] = xin.reshape(T, B, -1)
                continue
            y = np.asarray(op_csr[n] @ np.ascontiguousarray(xin.reshape(T * B, -1).T, dtype=np.float64)).T
            acts[n] = (y + b[None, :]).reshape(T, B, -1)
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
    comp = compiled(graph, T0 or 1, precision, allow_reset_to_zero, window, threshold_groups)
    plan, qplan = comp.plan, comp.qplan
    t_plan = time.perf_counter() - t0  # ~0 when the lowering was cached
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
    return Prepared(graph, plan, qplan, comp, meta, arrays, xt, xs, t_plan)


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
        if r["kind"] in ("analog", "membrane"):  # membrane: an LI read as its membrane (float)
            outputs[r["name"]] = out["output__" + r["name"]].reshape((T, B) + tuple(r["shape"]))
        else:
            src = r["source"]
            outputs[r["name"]] = (spikes[src].reshape(T, B, -1) * amps[src]).reshape((T, B) + tuple(r["shape"]))
    comp = pr.compiled
    acts = activations(plan, xt.reshape(T, B, -1), spikes, amps, comp.op_csr)
    shaped = {n: a.reshape((T, B) + tuple(plan.shapes[n])) if n in plan.shapes else a for n, a in acts.items()}
    if comp.info is None:
        comp.info = analyse(graph)
    counts = count_ops(graph, comp.info, shaped)  # the simulator's definitions (one op count)
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
    if meta.get("profile"):
        tm["profile"] = meta["profile"]
    approx = sorted({a for p in meta["populations"] for a in p.get("approximations", ())})
    if approx:  # a library profile's neuron run as Lava's (allow_reset_to_zero=True)
        tm["approximation"] = "; ".join(approx) + " (allow_reset_to_zero=True)"
    elif any(p["reset"] == "subtract" for p in meta["populations"]):
        tm["approximation"] = "subtractive reset run as reset to zero (allow_reset_to_zero=True)"
    state = {k: v for k, v in out.items() if k.startswith(("u__", "v__"))}
    if state:
        tm["final_state"] = state
    for p in meta["populations"]:  # an LI readout is a membrane, not a spiking node (as in eventsim)
        if p.get("readout"):
            spikes.pop(p["name"], None)
    return Trace(timesteps=T, batch=B, outputs=outputs, counts=counts, spikes=spikes,
                 backend="lava", meta=tm)


def output_agreement(trace: Trace, ref: Trace) -> float:
    """Fraction of output entries (every Output node, T x batch x n) of ``trace`` equal to
    ``ref``'s: what running a neuron as Lava's (--allow-reset-to-zero) costs against the
    exact reading on the same inputs."""
    same = total = 0
    for k, want in ref.outputs.items():
        got = np.asarray(trace.outputs[k], dtype=np.float64).reshape(np.shape(want))
        want = np.asarray(want, dtype=np.float64)
        same += int(np.sum(np.abs(got - want) <= 1e-9 * (1 + np.abs(want))))
        total += want.size
    return same / max(total, 1)


def fixed_trace(graph, x, timesteps: int | None = None, window: int | None = None,
                allow_reset_to_zero: bool = False, record_spikes: bool = True,
                record_state: bool = False, threshold_groups=None, engine: str = "fast") -> Trace:
    """The `loihi-fixed` integer model on the same plan run_lava(precision="fixed") runs.
    Bit-exact with Lava: same spikes, same final u/v, same analog outputs.

    engine: "fast" (layer by layer over all steps, exact integer sums through float BLAS:
    ``spikebridge.hardware.loihi.fast``) or "reference" (the step-by-step int64 model kept as
    the oracle: ``spikebridge.hardware.loihi.reference``); both give identical results."""
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
    if S == T:
        xp = xs
    else:
        xp = np.zeros((S,) + xs.shape[1:])
        xp[:T] = xs
    meta["dense_max_elements"] = DENSE_MAX_ELEMENTS  # the worker's Dense/Sparse choice (overflow rules)
    t0 = time.perf_counter()
    if engine == "reference":
        res = run_qplan(meta, pr.arrays, xp, record_state=record_state)
    else:
        cache = pr.compiled.fast
        if DENSE_MAX_ELEMENTS not in cache:  # the Dense/Sparse choice decides the overflow rules
            cache[DENSE_MAX_ELEMENTS] = compile_qplan(meta, pr.arrays)
        with blas_threads(1):
            res = run_qplan_fast(meta, pr.arrays, xp, record_state=record_state, compiled=cache[DENSE_MAX_ELEMENTS],
                                 check_integer=False)  # quantize_input's integers
    t_run = time.perf_counter() - t0
    out = {"spikes__" + n: s[:T] for n, s in res["spikes"].items()}
    out.update({"output__" + n: o[:T] for n, o in res["outputs"].items()})
    scale = {p["name"]: p.get("v_scale") for p in meta["populations"]}
    for r in meta["readouts"]:
        if r["kind"] == "membrane":  # an LI read as membrane: v_int in units of v_scale
            out["output__" + r["name"]] = res["membrane"][r["source"]][:T] * float(scale[r["source"]])
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
