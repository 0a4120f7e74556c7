"""NeuroBench-named metrics of a NIR graph, computed by eventsim (numpy; no torch).

The definitions are NeuroBench's (neurobench 2.3.0 on PyPI, ``neurobench.metrics``:
static ``Footprint``, ``ParameterCount``, ``ConnectionSparsity``; workload
``ActivationSparsity``, ``SynapticOperations``, ``MembraneUpdates``, ``NeuronOperations``),
restated here for the graph instead of a torch module. Per sample = summed over the batch
and divided by the number of samples, as NeuroBench does.

Static (from the graph):

- ``footprint_bytes``: 4 bytes (float32, as the torch model holds them) per value of every
  weight and bias of the connection layers (Affine, Linear, Conv1d, Conv2d: NeuroBench's
  nn.Linear / nn.Conv*), plus each neuron node's parameters as the graph stores them:
  threshold, time constant(s) (tau; CubaLIF/CubaLI also tau_syn), v_leak and v_reset
  when not all zero. A per-neuron array counts per neuron, a scalar once; r and w_in (input
  gains a torch model folds into its weights) are not counted. NeuroBench's ``Footprint``
  counts every parameter and buffer of the torch module: on an snnTorch model that is the
  same plus snnTorch's bookkeeping buffers (``graded_spikes_factor`` 4 B and
  ``reset_mechanism_val`` 8 B per neuron layer) and its state buffers (``mem``, ``syn``:
  0 B before the first forward pass, batch x neurons x 4 B after).
- ``parameter_count``: weights and biases of the connection layers (NeuroBench
  ``ParameterCount`` counts torch parameters: snnTorch keeps beta and threshold as buffers
  unless they are learnt, then they count too).
- ``connection_sparsity``: zero weights / all weights of the connection layers (biases not
  counted), NeuroBench's ``ConnectionSparsity`` (which rounds to 4 decimals; we do not).

Workload (from eventsim's run):

- ``activation_sparsity``: 1 - nonzero outputs / outputs of the spiking neuron nodes (IF, LIF,
  CubaLIF, Threshold: snnTorch's SpikingNeuron layers), over nodes, steps and samples.
  Non-spiking readouts (LI, I, CubaLI) are not activation layers here.
- ``synaptic_operations``: per connection layer and step, one nonzero input through one
  nonzero weight (biases not counted) = eventsim's synaptic_ops + macs of that node. A step
  whose input values (over the whole batch) are all in {0, 1, -1} counts as ``Effective_ACs``,
  else ``Effective_MACs`` (NeuroBench's value test per layer call: a binary input image counts
  as ACs, graded spikes as MACs). ``Dense``: every (input position, weight) pair a dense layer
  computes, zero inputs and zero weights included, at every step (conv: in-bounds taps only,
  as the all-ones input with zero padding gives). Pools and Scale nodes are not connection
  layers in NeuroBench and are left out. A layer whose outputs all go over back edges (a
  recurrent weight, e.g. snnTorch RLeaky's) is counted as torch calls it: at step t on the
  spikes of t - 1, so the last step's spikes never pass through it (the trace counts them).
- ``membrane_updates``: every neuron at the first step, then each neuron whose membrane value
  changed in the step (NeuroBench ``MembraneUpdates``: pre- vs post-forward ``mem``).
  ``membrane_updates_dense``: every neuron at every step (our neuron_updates).
- ``neuron_operations``: membrane updates x operations per update by neuron model
  (NeuroBench's table: snnTorch Leaky 4; Synaptic 6 with subtract reset, 8 with reset to
  zero). LIF, IF, LI, I count as Leaky; CubaLIF, CubaLI as Synaptic (a non-resetting one
  with the subtract entry). ``Effective Neuron Ops`` and ``Neuron Dense Ops`` as NeuroBench.

``neurobench_metrics(graph, trace, x=...)`` replays the run in eventsim (same profile and
dt as the trace, without Lava's synaptic delay: NeuroBench counts the torch model, which has
none) to get the membrane values and the input values; without ``x`` the workload metrics
come from the trace's counts and membrane updates are None.
"""
from __future__ import annotations

import copy
import html
import math
from dataclasses import replace

import numpy as np

from .graph import NEURON_TYPES, SPIKING_TYPES, analyse

NEUROBENCH_VERSION = "2.3.0"
CONNECTION_TYPES = ("Affine", "Linear", "Conv1d", "Conv2d")
BYTES_PER_VALUE = 4  # float32, as the torch model stores parameters
# NeuroBench neuron_operations.neuron_ops_reset_operations (snnTorch classes), by NIR type.
NEURON_OPS = {"Leaky": {"subtract": 4, "zero": 4}, "Synaptic": {"subtract": 6, "zero": 8}}
NIR_TO_SNNTORCH = {"LIF": "Leaky", "IF": "Leaky", "LI": "Leaky", "I": "Leaky",
                   "CubaLIF": "Synaptic", "CubaLI": "Synaptic"}
SOURCE = (f"NeuroBench's definitions (neurobench {NEUROBENCH_VERSION} on PyPI, neurobench/metrics; "
          "Yik et al., Nature Communications 2025), computed by spikebridge's eventsim")


# ------------------------------------------------------------------------------ static

def _arr(v) -> np.ndarray | None:
    return None if v is None else np.asarray(v)


def _neuron_param_values(node) -> int:
    t = type(node).__name__
    n = 0
    names = ["v_threshold"]
    if t in ("LIF", "LI"):
        names.append("tau")
    if t in ("CubaLIF", "CubaLI"):
        names += ["tau_mem", "tau_syn"]
    if t == "Threshold":
        names = ["threshold"]
    for a in names:
        v = _arr(getattr(node, a, None))
        if v is not None:
            n += int(v.size)
    for a in ("v_leak", "v_reset"):
        v = _arr(getattr(node, a, None))
        if v is not None and np.any(v != 0):
            n += int(v.size)
    return n


def static_metrics(graph) -> dict:
    """footprint_bytes, parameter_count, connection_sparsity (and their parts) of a graph."""
    weights = zeros = biases = neuron_values = 0
    for node in graph.nodes.values():
        t = type(node).__name__
        if t in CONNECTION_TYPES:
            w = np.asarray(node.weight)
            weights += int(w.size)
            zeros += int(np.count_nonzero(w == 0))
            b = _arr(getattr(node, "bias", None))
            if b is not None:
                biases += int(b.size)
        elif t in NEURON_TYPES:
            neuron_values += _neuron_param_values(node)
    return {"footprint_bytes": BYTES_PER_VALUE * (weights + biases + neuron_values),
            "parameter_count": weights + biases,
            "synapse_parameter_bytes": BYTES_PER_VALUE * (weights + biases),
            "neuron_parameter_bytes": BYTES_PER_VALUE * neuron_values,
            "connection_sparsity": zeros / weights if weights else 0.0,
            "weights": weights, "zero_weights": zeros}


def dense_pairs(node, in_shape) -> int:
    """(input position, weight) pairs one call of a dense connection layer computes: all of
    them for Affine/Linear; for a convolution the in-bounds taps of every output position."""
    from .eventsim.counts import fanout
    t = type(node).__name__
    w = np.asarray(node.weight)
    if t in ("Affine", "Linear"):
        return int(w.size)
    ones = copy.copy(node)
    ones.weight = np.ones_like(w)
    return int(fanout(ones, tuple(in_shape)).sum())


# ---------------------------------------------------------------------------- workload

def _binary(a: np.ndarray) -> np.ndarray:
    """(T, B, ...) -> (T,) bool: every value of the step is 0, 1 or -1 (NeuroBench's test)."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return np.ones(a.shape[0], dtype=bool)
    flat = a.reshape(a.shape[0], -1)
    return ((flat == 0) | (flat == 1) | (flat == -1)).all(axis=1)


def _feeds_back_only(info, n: str) -> bool:
    """True when every output edge of n is a back edge: what n computes at step t reaches its
    consumer at t + 1, as a torch recurrent layer applied to the previous step's spikes."""
    succ = info.succs.get(n, [])
    return bool(succ) and all((n, s) in set(info.back_edges) for s in succ)


def _as_called(a: np.ndarray, fill) -> np.ndarray:
    """Per-step values of a layer fed back: step t's work happens in the torch model's call at
    t + 1; the call at step 0 gets the zero state (``fill``), the last step's work never happens."""
    out = np.empty_like(a)
    out[0] = fill
    out[1:] = a[:-1]
    return out


def _neuron_cost(node_type: str, reset: str) -> int:
    table = NEURON_OPS[NIR_TO_SNNTORCH[node_type]]
    return table.get(reset, table["subtract"])


class _Replay:
    """Accumulates, over chunks of the batch, what the NeuroBench metrics need from an
    eventsim run: per connection node the ops and binary flag per step, per spiking node
    the nonzero outputs, per neuron node the membrane changes."""

    def __init__(self):
        self.ops: dict[str, np.ndarray] = {}
        self.binary: dict[str, np.ndarray] = {}
        self.active: dict[str, int] = {}
        self.outputs: dict[str, int] = {}
        self.mem: dict[str, int] = {}
        self.resets: dict[str, str] = {}


def _replay(graph, x, profile, dt) -> tuple[_Replay, object]:
    from .eventsim import KERNELS, adapt_graph, count_ops, get_profile, run
    from .eventsim.kernels import Context
    from .eventsim.simulator import _before_start, auto_max_batch

    prof = get_profile(profile)
    prof = replace(prof, synaptic_delay=0)
    g = adapt_graph(graph, prof)
    info = analyse(g)
    x = np.asarray(x)
    T, B = int(x.shape[0]), int(x.shape[1])
    step = max(1, auto_max_batch(info, T))
    rep = _Replay()
    for i in range(0, B, step):
        xc = x[:, i:i + step]
        acts, info, prof_used, step_dt = run(g, xc, prof, dt, info)
        counts = count_ops(g, info, acts)
        b = int(xc.shape[1])
        ctx = Context(info=info, profile=prof_used, dt=step_dt, file=info.file)
        params = {n: KERNELS[info.types[n]].prepare(g.nodes[n], n, ctx) for n in info.order}
        before = _before_start(info, params, b) if info.back_edges else {}
        back = set(info.back_edges)
        for n in info.order:
            t = info.types[n]
            if t in CONNECTION_TYPES:
                ops = counts[n]["synaptic_ops"] + counts[n]["macs"]
                flag = np.ones(T, dtype=bool)
                for p in info.preds[n]:
                    bp = _binary(acts[p])
                    if (p, n) in back:  # delivered one step later
                        bp = np.concatenate([[p not in before or bool(_binary(before[p][None]).all())],
                                             bp[:-1]])
                    flag &= bp
                if _feeds_back_only(info, n):
                    ops, flag = _as_called(ops, 0), _as_called(flag, True)
                rep.ops[n] = rep.ops.get(n, 0) + ops
                rep.binary[n] = rep.binary.get(n, np.ones(T, dtype=bool)) & flag
            if t in SPIKING_TYPES:
                rep.active[n] = rep.active.get(n, 0) + int(np.count_nonzero(acts[n]))
                rep.outputs[n] = rep.outputs.get(n, 0) + int(np.asarray(acts[n]).size)
            if t in NEURON_TYPES and t != "Threshold":
                k, p = KERNELS[t], params[n]
                rep.resets[n] = str(p.get("reset", "subtract"))
                st = k.init(p, b)
                changed = 0
                # snnTorch's reset to zero with reset_delay keeps the unreset membrane in the
                # spiking step (zeroed in the next): its stored ``mem`` there is the value
                # before the reset, which a run without a threshold gives
                late = (t in ("IF", "LIF") and p.get("reset") == "zero" and not p.get("zero_late")
                        and prof_used.reset_timing == "next_step")
                p_pre = {**p, "thr": np.inf} if late else None
                mem_old = None
                for s in range(T):
                    inp = np.zeros((b, *info.in_shapes[n]), dtype=np.float64)
                    for q in info.preds[n]:
                        src = s - (1 if (q, n) in back else 0)
                        if src >= 0:
                            inp += np.asarray(acts[q][src], dtype=np.float64).reshape(inp.shape)
                        elif q in before:
                            inp += before[q].reshape(inp.shape)
                    spk, new = k.step(p, inp, st)
                    mem_new = np.asarray(new["v"])
                    if late:
                        mem_new = np.where(np.asarray(spk) != 0, k.step(p_pre, inp, st)[1]["v"], mem_new)
                    changed += int(mem_new.size) if s == 0 else int(np.count_nonzero(mem_new != mem_old))
                    st, mem_old = new, mem_new
                rep.mem[n] = rep.mem.get(n, 0) + changed
    return rep, info


def _resets_from_graph(graph, profile, dt) -> dict[str, str]:
    """Reset per neuron node as eventsim reads it (kernel preparation only, no run)."""
    from .eventsim import KERNELS, adapt_graph, get_profile, resolve_dt
    from .eventsim.kernels import Context
    prof = get_profile(profile)
    g = adapt_graph(graph, prof)
    info = analyse(g)
    ctx = Context(info=info, profile=prof, dt=resolve_dt(g, prof, dt, info.file), file=info.file)
    return {n: str(KERNELS[t].prepare(g.nodes[n], n, ctx).get("reset", "subtract"))
            for n, t in info.types.items() if t in NEURON_TYPES and t != "Threshold"}


def neurobench_metrics(graph, trace=None, x=None, profile: str | None = None,
                       dt: float | None = None) -> dict:
    """The NeuroBench-named metrics of ``graph`` (see the module doc) as a JSON-ready dict.

    ``trace``: the run's Trace (counts; its profile label and dt are used unless given).
    ``x``: the run's input (T, batch, *shape); when given, eventsim replays the run for the
    membrane updates and the per-step value test of every connection layer's input.
    Without a trace nor x only the static metrics are filled."""
    out = {"source": SOURCE, "neurobench_version": NEUROBENCH_VERSION, **static_metrics(graph)}
    if profile is None:
        profile = getattr(trace, "profile", None) or "spikebridge"
    if dt is None and trace is not None:
        dt = (trace.meta or {}).get("dt")
    if str(profile).startswith("loihi-fixed"):
        profile = "lava-float"  # the same neuron model in float: NeuroBench counts the float net
    from .eventsim import adapt_graph, get_profile
    graph = adapt_graph(graph, get_profile(profile))
    info = analyse(graph)
    in_shapes = info.in_shapes
    conn = [n for n in info.order if info.types[n] in CONNECTION_TYPES]
    neurons = [n for n in info.order if info.types[n] in NEURON_TYPES and info.types[n] != "Threshold"]
    rep = None
    if x is not None:
        rep, _ = _replay(graph, x, profile, dt)
        T, B = int(np.shape(x)[0]), int(np.shape(x)[1])
    elif trace is not None:
        T, B = int(trace.timesteps), int(trace.batch)
    else:
        return {**out, "samples": 0, "timesteps": None, "computed_from": "graph only"}
    B1 = max(B, 1)
    per_layer = []
    macs = acs = dense = 0
    for n in conn:
        if rep is not None:
            ops, binary = np.asarray(rep.ops[n]), rep.binary[n]
        else:
            c = trace.counts.get(n, {})
            syn = np.asarray(c.get("synaptic_ops", np.zeros(T, dtype=np.int64)))
            mac = np.asarray(c.get("macs", np.zeros(T, dtype=np.int64)))
            ops, binary = syn + mac, mac == 0  # the trace's kind: spikes -> ACs
            if _feeds_back_only(info, n):
                ops, binary = _as_called(ops, 0), _as_called(binary, True)
        a = int(ops[binary].sum())
        m = int(ops[~binary].sum())
        d = dense_pairs(graph.nodes[n], in_shapes[n]) * T * B
        acs, macs, dense = acs + a, macs + m, dense + d
        per_layer.append({"node": n, "type": info.types[n], "Effective_ACs": a / B1,
                          "Effective_MACs": m / B1, "Dense": d / B1})
    spiking = [n for n in info.order if info.types[n] in SPIKING_TYPES]
    if rep is not None:
        active = sum(rep.active.get(n, 0) for n in spiking)
        total = sum(rep.outputs.get(n, 0) for n in spiking)
    else:
        active = sum(int(trace.counts[n]["spikes"].sum()) for n in spiking if n in trace.counts)
        total = sum(int(trace.counts[n]["neuron_updates"].sum()) for n in spiking if n in trace.counts)
    n_per = {n: math.prod(info.shapes[n]) for n in neurons}
    mem_dense = sum(n_per.values()) * T * B
    if rep is not None:
        mem = sum(rep.mem.values())
        resets = rep.resets
    else:
        mem = None
        resets = _resets_from_graph(graph, profile, dt)
    ops_eff = None if mem is None else sum(rep.mem[n] * _neuron_cost(info.types[n], resets[n]) for n in neurons)
    ops_dense = sum(n_per[n] * T * B * _neuron_cost(info.types[n], resets[n]) for n in neurons)
    out.update({
        "samples": B, "timesteps": T,
        "computed_from": "eventsim replay of the run's input" if rep is not None else "the trace's counts",
        "profile": str(profile),
        "activation_sparsity": (total - active) / total if total else 0.0,
        "synaptic_operations": {"Effective_MACs": macs / B1, "Effective_ACs": acs / B1, "Dense": dense / B1},
        "membrane_updates": None if mem is None else mem / B1,
        "membrane_updates_dense": mem_dense / B1,
        "neuron_operations": {"Effective Neuron Ops": None if ops_eff is None else ops_eff / B1,
                              "Neuron Dense Ops": ops_dense / B1},
        "per_layer": per_layer,
    })
    return out


# ---------------------------------------------------------------------------- the page

NOTES = (
    "Definitions: NeuroBench's (see docs/report.md, 'NeuroBench metrics'); per sample.",
    "Effective ACs: connection-layer steps whose input is all 0/1/-1 (spikes, binary input); "
    "Effective MACs: other inputs (analog input, graded spikes). Biases are not counted.",
    "Footprint: weights, biases and neuron parameters at 4 bytes each. NeuroBench's Footprint of "
    "an snnTorch model adds 12 bytes of snnTorch bookkeeping buffers per neuron layer and, after "
    "a forward pass, the membrane state (batch x neurons x 4 bytes).",
)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if 0 < abs(v) < 1:  # sparsities: enough digits that 0.99998 is not shown as 1
            return f"{v:.6g}"
        if v == 0 or (1e-3 <= abs(v) < 1e12):
            return f"{v:,.1f}".rstrip("0").rstrip(".")
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else html.escape(str(v))


def render_section(nb: dict | None) -> str:
    """HTML (a fragment: a table and notes) for report.json's ``neurobench`` entry."""
    if not nb:
        return "<p>No NeuroBench metrics in this report.</p>"
    if nb.get("unavailable"):
        return f"<p>NeuroBench metrics unavailable: {html.escape(str(nb['unavailable']))}</p>"
    so = nb.get("synaptic_operations") or {}
    no = nb.get("neuron_operations") or {}
    rows = [
        ("Footprint", f"{_fmt(nb.get('footprint_bytes'))} B", "weights, biases, neuron parameters"),
        ("Parameter count", _fmt(nb.get("parameter_count")), ""),
        ("Connection sparsity", _fmt(nb.get("connection_sparsity")), "zero weights / weights"),
        ("Activation sparsity", _fmt(nb.get("activation_sparsity")), "zero outputs of spiking neurons"),
        ("Synaptic operations: Effective MACs", _fmt(so.get("Effective_MACs")), "per sample"),
        ("Synaptic operations: Effective ACs", _fmt(so.get("Effective_ACs")), "per sample"),
        ("Synaptic operations: Dense", _fmt(so.get("Dense")), "per sample"),
        ("Membrane updates", _fmt(nb.get("membrane_updates")),
         f"per sample (dense: {_fmt(nb.get('membrane_updates_dense'))})"),
        ("Neuron operations: effective", _fmt(no.get("Effective Neuron Ops")), "per sample"),
        ("Neuron operations: dense", _fmt(no.get("Neuron Dense Ops")), "per sample"),
    ]
    body = "".join(f"<tr><td>{html.escape(a)}</td><td class=\"n\">{b}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in rows)
    notes = "".join(f"<li>{html.escape(s)}</li>" for s in NOTES)
    src = html.escape(f"{nb.get('source', SOURCE)}; computed from {nb.get('computed_from', 'n/a')}, "
                      f"{nb.get('samples')} samples, T = {nb.get('timesteps')}")
    return (f"<table><thead><tr><th>metric (NeuroBench name)</th><th>value</th><th>what</th></tr></thead>"
            f"<tbody>{body}</tbody></table><p class=\"note\">{src}</p><ul class=\"note\">{notes}</ul>")


def report_entry(graph, trace=None, x=None, profile: str | None = None) -> dict | None:
    """report.json's ``neurobench`` value: ``neurobench_metrics``, or {"unavailable": reason}
    when eventsim cannot read the graph (the report's own backend ran it). None without a trace."""
    from spikebridge.base.errors import InputError
    if trace is None:
        return None
    try:
        return neurobench_metrics(graph, trace, x=x, profile=profile)
    except InputError as e:
        return {"source": SOURCE, "unavailable": str(e)[:300]}
