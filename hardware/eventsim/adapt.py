"""Graph adaptations a library profile asks for before analysis (profile.strip_io_dims).

Exporters built on nirtorch write the sample they were traced with into the Input and
Output node types: Norse 1.1 keeps the batch dimension (Input (batch, n)), sinabs 3.1
the time dimension of its (batch, time, n) layout (Input (time, n)), snnTorch 1.0 a
batch of one when the net flattens. ``adapt_graph`` drops those leading dimensions
from an Input node when its successors need fewer (Affine/Linear: (n_in,), Conv1d /
Conv2d: (C_in, *spatial), Flatten: its declared input), and lets every Output node take
its predecessor's shape (an Output node is a sink; its declared type is only a check).

Profile options that the file cannot say are applied here too (the kernels then read a
plain graph): sinabs' ``norm_input`` (r = 1/(1 - exp(-dt/tau)) where it is false),
Norse's tau convention (``export_dt``: the file's taus are brought to
to_nir's default, tau = 1e-3 * true tau, which the profile reads at dt * 1e-3),
SpikingJelly's ``decay_input`` (LIF r = 1 or tau/dt) and ``v_reset`` (v_reset and the
leak target v_leak). Nested graphs (snnTorch writes RLeaky/RSynaptic as a subgraph
{input, lif, w_rec, output}) are flattened, their nodes named ``outer.inner``.

A graph without spikebridge metadata read with the spikebridge profile (no --profile)
raises a ForeignGraphWarning naming the library it most likely came from (detect.py).
An adapted graph carries ``metadata['spikebridge_adapted'] = profile label``; adapting it
again with the same profile returns it as is.

Nothing else changes; a graph that needs none of this is returned as is.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

import nir

from .detect import foreign_graph_note, norse_export_dt
from .profiles import Profile, get_profile

ADAPTED_KEY = "spikebridge_adapted"


class ForeignGraphWarning(UserWarning):
    """A third-party graph read without its library's profile (the message says which)."""


def flatten_subgraphs(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Nested NIRGraph nodes replaced by their nodes (``outer.inner``): an edge into the
    subgraph goes to the successors of its Input node(s), an edge out of it leaves from
    the predecessors of its Output node(s). ``graph`` itself when nothing is nested."""
    if not any(type(n).__name__ == "NIRGraph" for n in graph.nodes.values()):
        return graph
    nodes: dict = {}
    ins: dict[str, list[str]] = {}   # subgraph name -> inner targets of its inputs
    outs: dict[str, list[str]] = {}  # subgraph name -> inner sources of its outputs
    inner_edges: list[tuple[str, str]] = []
    for name, node in graph.nodes.items():
        if type(node).__name__ != "NIRGraph":
            nodes[name] = node
            continue
        sub = flatten_subgraphs(node)
        kinds = {k: type(v).__name__ for k, v in sub.nodes.items()}
        ins[name], outs[name] = [], []
        for k, v in sub.nodes.items():
            if kinds[k] not in ("Input", "Output"):
                nodes[f"{name}.{k}"] = v
        for a, b in sub.edges:
            a, b = str(a), str(b)
            if kinds.get(a) == "Input":
                ins[name].append(f"{name}.{b}")
            elif kinds.get(b) == "Output":
                outs[name].append(f"{name}.{a}")
            else:
                inner_edges.append((f"{name}.{a}", f"{name}.{b}"))
    edges = []
    for a, b in graph.edges:
        a, b = str(a), str(b)
        for src in outs.get(a, [a]):
            for dst in ins.get(b, [b]):
                edges.append((src, dst))
    edges += inner_edges
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                        metadata=dict(graph.metadata or {}))


def _scaled(node, keys, factor):
    n2 = copy.copy(node)
    for k in keys:
        if getattr(node, k, None) is not None:
            setattr(n2, k, np.asarray(getattr(node, k), dtype=np.float64) * factor)
    return n2


def _apply_options(graph: nir.NIRGraph, prof: Profile) -> nir.NIRGraph:
    """The graph-level profile options (module doc); ``graph`` itself when none applies."""
    nodes = dict(graph.nodes)
    changed = False
    if prof.name == "norse":
        ed = prof.option("export_dt")
        ed = norse_export_dt(graph)[0] if ed in (None, "auto") else float(ed)
        factor = 1e-3 / ed  # to to_nir's default convention (tau = 1e-3 * true tau)
        if factor != 1.0:
            for name, node in graph.nodes.items():
                t = type(node).__name__
                if t in ("LIF", "LI"):
                    nodes[name], changed = _scaled(node, ("tau",), factor), True
                elif t in ("CubaLIF", "CubaLI"):
                    nodes[name], changed = _scaled(node, ("tau_mem", "tau_syn"), factor), True
    if prof.name == "sinabs":
        ni = prof.option("norm_input")
        dt = float(prof.default_dt)
        for name, node in graph.nodes.items():
            t = type(node).__name__
            if t not in ("LIF", "LI"):
                continue
            norm = {"true": True, "false": False}.get(ni, t == "LIF")
            if not norm:  # v = a*v + I: the exact integrator's (1-a) undone in r
                n2 = copy.copy(node)
                a = np.exp(-dt / np.asarray(node.tau, dtype=np.float64))
                n2.r = np.asarray(node.r, dtype=np.float64) / (1.0 - a)
                nodes[name], changed = n2, True
    if prof.name == "spikingjelly":
        di, vr = prof.option("decay_input"), prof.option("v_reset")
        dt = float(prof.default_dt)
        for name, node in graph.nodes.items():
            t = type(node).__name__
            if t not in ("LIF", "IF"):
                continue
            n2 = None
            if t == "LIF" and di in ("true", "false"):
                n2 = copy.copy(node)
                tau = np.asarray(node.tau, dtype=np.float64)
                n2.r = np.ones_like(tau) if di == "true" else tau / dt
            if vr not in (None, "file"):
                n2 = n2 or copy.copy(node)
                shape = np.shape(node.v_threshold)
                n2.v_reset = np.full(shape, float(vr))
                if t == "LIF":
                    n2.v_leak = np.full(np.shape(node.tau), float(vr))
            if n2 is not None:
                nodes[name], changed = n2, True
    if not changed:
        return graph
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), type_check=False,
                        metadata=dict(graph.metadata or {}))


def _shape(a) -> tuple[int, ...] | None:
    if a is None:
        return None
    return tuple(int(v) for v in np.asarray(a).reshape(-1))


def _needed(node) -> tuple[int, ...] | None:
    """Trailing input shape a successor needs, or None when it does not say."""
    t = type(node).__name__
    if t in ("Affine", "Linear"):
        return (int(np.asarray(node.weight).shape[1]),)
    if t in ("Conv1d", "Conv2d"):
        w = np.asarray(node.weight)
        nd = w.ndim - 2
        cin = int(w.shape[1]) * int(node.groups)
        ish = getattr(node, "input_shape", None)
        if ish is not None:
            sp = _shape(ish)
            if len(sp) == nd:
                return (cin, *sp)
        return (cin,)  # the channel axis must sit at -(nd+1); checked by the caller
    if t == "Flatten":
        return _shape(node.input_type.get("input"))
    return None


def _strip(shape: tuple[int, ...], need: tuple[int, ...], node) -> tuple[int, ...] | None:
    t = type(node).__name__
    if t in ("Conv1d", "Conv2d") and len(need) == 1:
        nd = np.asarray(node.weight).ndim - 2
        k = nd + 1
        if len(shape) > k and shape[-k] == need[0]:
            return shape[-k:]
        return None
    k = len(need)
    if len(shape) > k and shape[-k:] == need:
        return shape[-k:]
    return None


def adapt_graph(graph: nir.NIRGraph, profile: str | Profile) -> nir.NIRGraph:
    """A copy of ``graph`` read the way ``profile`` (a name, ``LIB:opt=val,...`` or a
    Profile) asks (see module doc); ``graph`` itself when nothing changes."""
    prof = get_profile(profile)
    md = graph.metadata if isinstance(getattr(graph, "metadata", None), dict) else {}
    if md.get(ADAPTED_KEY) == prof.label:
        return graph
    note = foreign_graph_note(graph, prof)
    if note:
        # one stderr line under Python's default format (no source line is found for
        # this location), every time a foreign graph is read without a profile
        warnings.warn_explicit(note, ForeignGraphWarning, "spikebridge", 0)
    flat = flatten_subgraphs(graph)
    opt = _apply_options(flat, prof)
    if not prof.strip_io_dims:
        return _mark(opt, prof) if opt is not graph else graph
    graph0, graph = graph, opt
    succs: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succs.setdefault(str(a), []).append(str(b))
    nodes = dict(graph.nodes)
    changed = False
    for name, node in graph.nodes.items():
        t = type(node).__name__
        if t == "Input":
            shape = _shape(node.input_type.get("input"))
            if shape is None:
                continue
            new = None
            for s in succs.get(name, []):
                need = _needed(graph.nodes[s])
                if need is not None:
                    new = _strip(shape, need, graph.nodes[s])
                    break
            if new is not None and new != shape:
                n2 = copy.copy(node)
                n2.input_type = {"input": np.array(new)}
                n2.output_type = {"output": np.array(new)}
                nodes[name] = n2
                changed = True
        elif t == "Output" and node.output_type.get("output") is not None:
            n2 = copy.copy(node)
            n2.output_type = {"output": None}
            n2.input_type = {"input": None}
            nodes[name] = n2
            changed = True
    if not changed:
        return _mark(graph, prof) if graph is not graph0 else graph0
    return _mark(nir.NIRGraph(nodes=nodes, edges=list(graph.edges), type_check=False,
                              metadata=dict(graph.metadata or {})), prof)


def _mark(graph: nir.NIRGraph, prof: Profile) -> nir.NIRGraph:
    graph.metadata = {**dict(graph.metadata or {}), ADAPTED_KEY: prof.label}
    return graph
