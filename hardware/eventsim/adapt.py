"""Graph adaptations a library profile asks for before analysis (profile.strip_io_dims).

Exporters built on nirtorch write the sample they were traced with into the Input and
Output node types: Norse 1.1 keeps the batch dimension (Input (batch, n)), sinabs 3.1
the time dimension of its (batch, time, n) layout (Input (time, n)), snnTorch 1.0 a
batch of one when the net flattens. ``adapt_graph`` drops those leading dimensions
from an Input node when its successors need fewer (Affine/Linear: (n_in,), Conv1d /
Conv2d: (C_in, *spatial), Flatten: its declared input), and lets every Output node take
its predecessor's shape (an Output node is a sink; its declared type is only a check).
Nothing else changes; a graph that needs none of this is returned as is.
"""
from __future__ import annotations

import copy

import numpy as np

import nir

from .profiles import Profile, get_profile


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
    """A copy of ``graph`` with the Input / Output shapes fixed (see module doc) when the
    profile's ``strip_io_dims`` is set; otherwise ``graph`` itself."""
    prof = get_profile(profile)
    if not prof.strip_io_dims:
        return graph
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
        return graph
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), type_check=False,
                        metadata=dict(graph.metadata or {}))
