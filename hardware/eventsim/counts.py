"""Exact operation counts from per-node activations (one definition for every backend).

``count_ops(graph, info, activations)`` needs only what each node emitted,
``activations[name]`` of shape (T, B, *info.shapes[name]) (float or bool), so any
backend that records per-node outputs (eventsim, Lava) gets identical counts.

Per node, per step, summed over the batch (int64 arrays of shape (T,)):

- synapse nodes (Affine, Linear, Scale, Conv1d, Conv2d, SumPool2d, AvgPool2d): for each
  incoming edge, every nonzero input value is an event that reaches ``F[i]`` nonzero
  weights, ``F`` the fan-out map of the node (dense: nonzero weights per input column;
  conv/pool: transposed convolution of the nonzero mask, exact at borders, strides,
  padding, dilation and groups; pools have all-nonzero kernels; Scale: 1 where the
  scale is nonzero). The sum goes to ``synaptic_ops`` when the edge carries spikes (its
  source is a spiking neuron, or a Flatten/Delay of spikes), to ``macs`` otherwise.
  A back edge delivers the source's previous step (nothing at step 0); a profile's
  synaptic delay shifts delivery the same way (events are counted when delivered).
- neuron nodes (IF, LIF, CubaLIF, LI, I, CubaLI, Threshold): ``neuron_updates`` =
  neurons x batch every step; spiking ones (IF, LIF, CubaLIF, Threshold) also
  ``spikes`` = nonzero outputs.
- Input, Output, Flatten, Delay: nothing (all kinds zero).

Every node gets all four kinds.

The input layer: ``count_ops`` counts the Input's events as MACs. ``apply_input_rule`` then
applies the costing rule decided on the whole input (``input_kind``): a binary input (bool, or
only 0/1 values: rate, latency, delta encodings, binary event frames) is spike events, so the
input layer's MACs become synaptic operations (accumulates), as SpikingJelly's op counter and
NeuroBench count; a counts input (non-negative integers, some 2 or more: event frames with
several events per pixel and bin) is that many spike events, so its synaptic operations are
weighted by the values (value x nonzero fan-out: a count of 2 costs two binary events); an
analog input stays MACs. ``backends.run_graph`` applies it and records the rule in
``Trace.meta["input_layer"]``.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from spikebridge.base.errors import BackendError

from .. import jit
from ..graph import (NEURON_TYPES, SPIKING_TYPES, SYNAPSE_TYPES, GraphInfo, conv_geometry)
from ..trace import COUNT_KINDS


def _valid_taps(n_in: int, n_out: int, k: int, stride: int, dil: int, lo: int) -> np.ndarray:
    """V[k, i] = 1 when some output position o reads input i through tap k."""
    v = np.zeros((k, n_in), dtype=np.int64)
    o = np.arange(n_out)
    for kk in range(k):
        pos = o * stride - lo + kk * dil
        pos = pos[(pos >= 0) & (pos < n_in)]
        v[kk, pos] = 1
    return v


_FANOUT: dict = {}  # (id of the weight array, node type, in_shape) -> (the array, fan-out)
_FANOUT_MAX = 256
_FANOUT_LOCK = threading.Lock()


def fanout(node, in_shape: tuple[int, ...]) -> np.ndarray:
    """Number of nonzero weights each input element reaches, shape ``in_shape`` (int64).
    Kept per weight array (the entry holds the array, so its id is not reused): batch chunks
    and dataset loops count the same layers again, and a large conv's weights cost more to
    scan than its events."""
    src = getattr(node, "weight", getattr(node, "scale", None))
    key = None
    if isinstance(src, np.ndarray):
        key = (id(src), type(node).__name__, tuple(in_shape), repr(getattr(node, "stride", None)),
               repr(getattr(node, "padding", None)), repr(getattr(node, "dilation", None)),
               repr(getattr(node, "groups", None)))
        hit = _FANOUT.get(key)
        if hit is not None and hit[0] is src:
            return hit[1]
    f = _fanout(node, in_shape)
    if key is not None:
        f.setflags(write=False)
        with _FANOUT_LOCK:  # batch chunks count on threads
            while len(_FANOUT) >= _FANOUT_MAX:
                _FANOUT.pop(next(iter(_FANOUT)))
            _FANOUT[key] = (src, f)
    return f


def _fanout(node, in_shape: tuple[int, ...]) -> np.ndarray:
    t = type(node).__name__
    if t in ("Affine", "Linear"):
        return (np.asarray(node.weight) != 0).sum(axis=0).astype(np.int64)
    if t == "Scale":
        return np.broadcast_to(np.asarray(node.scale) != 0, in_shape).astype(np.int64)
    nd = len(in_shape) - 1
    kernel, stride, dil, lo, _hi, out = conv_geometry(node, nd, tuple(in_shape[1:]))
    if t in ("Conv1d", "Conv2d"):
        w = np.asarray(node.weight) != 0
        g = int(node.groups)
        cout, cg = w.shape[0], w.shape[1]
        m = w.reshape(g, cout // g, cg, *kernel).sum(axis=1).reshape(g * cg, *kernel)
    else:  # pools: each channel its own all-ones kernel
        m = np.ones((in_shape[0], *kernel), dtype=np.int64)
    m = m.astype(np.int64)
    vs = [_valid_taps(in_shape[1 + d], out[d], kernel[d], stride[d], dil[d], lo[d])
          for d in range(nd)]
    if nd == 1:
        return np.einsum("ck,ki->ci", m, vs[0], optimize=True)
    if nd == 2:
        return np.einsum("ckl,ki,lj->cij", m, vs[0], vs[1], optimize=True)
    raise ValueError(f"{nd}-d convolution")


def nonzero_per_step(x: np.ndarray) -> np.ndarray:
    """(T, B, ...) -> (T, ...) int64: nonzero entries summed over the batch. A bool mask is
    summed by a compiled loop (hardware/jit.py), or as bytes into a narrow integer (exact:
    the sum is at most B)."""
    m = np.asarray(x)
    if m.dtype != np.bool_:
        m = m != 0
    k = jit.kernels()
    if k is not None and m.ndim >= 2:
        T, B = m.shape[:2]
        out = np.zeros((T, math.prod(m.shape[2:])), dtype=np.int64)
        k.batch_counts(m.reshape(T, B, -1), out)
        return out.reshape((T,) + m.shape[2:])
    B = m.shape[1]
    if B < (1 << 16) - 1:
        return np.add.reduce(m.view(np.uint8), axis=1, dtype=np.uint16).astype(np.int64)
    return m.sum(axis=1, dtype=np.int64)


def _events(x: np.ndarray, shift: int, per_step: np.ndarray | None = None) -> np.ndarray:
    """Nonzero inputs per step and position, summed over the batch: (T, N) int64,
    delivered ``shift`` steps later (events delivered after the last step are dropped).
    ``x``: the activation, or its nonzero mask (bool); ``per_step``: its nonzero_per_step
    when the caller has it."""
    e = nonzero_per_step(x) if per_step is None else per_step
    e = e.reshape(e.shape[0], -1)
    if shift:
        out = np.zeros_like(e)
        if shift < e.shape[0]:
            out[shift:] = e[:e.shape[0] - shift]
        e = out
    return e


def count_node(graph, info: GraphInfo, name: str, activations: dict,
               T: int | None = None, B: int | None = None, delay: int = 0,
               edge_shift: dict | None = None, memo: dict | None = None,
               masks: dict | None = None) -> dict[str, np.ndarray]:
    """One node's counts (see count_ops). ``memo``: a dict shared by the nodes of one
    count_ops call, so an activation read by several synapse nodes is scanned once;
    ``masks[n]``: ``activations[n] != 0`` when the caller has it (bool, same shape)."""
    masks = masks or {}
    if T is None or B is None:
        T, B = next(iter(activations.values())).shape[:2]
    ref = activations.get(name)
    c = {k: np.zeros(T, dtype=np.int64) for k in COUNT_KINDS}
    t = info.types[name]
    if t in SYNAPSE_TYPES:
        f = fanout(graph.nodes[name], info.in_shapes[name]).reshape(-1)
        for p in info.preds[name]:
            shift = delay + (1 if (p, name) in info.back_edges else 0)
            if edge_shift:
                shift += int(edge_shift.get((p, name), 0))
            src = masks.get(p, activations[p])
            if memo is None:
                ev = _events(src, shift)
            else:
                key = (p, shift)
                if key not in memo:
                    if p not in memo:  # the source's nonzeros per step, shared by every shift
                        memo[p] = nonzero_per_step(src)
                    memo[key] = _events(src, shift, memo[p])
                ev = memo[key]
            ops = ev @ f
            kind = "synaptic_ops" if info.is_spiking(p) else "macs"
            c[kind] += ops
    elif t in NEURON_TYPES:
        c["neuron_updates"][:] = B * math.prod(info.shapes[name])
        if t in SPIKING_TYPES:
            e = nonzero_per_step(masks.get(name, ref))
            if memo is not None:
                memo[name] = e  # the synapse nodes it feeds count the same events
            c["spikes"] = e.reshape(T, -1).sum(axis=1, dtype=np.int64)
    return c


def count_ops(graph, info: GraphInfo, activations: dict, delay: int = 0,
              edge_shift: dict | None = None, masks: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """node name -> {kind: int64 (T,)} for every node in ``info.order`` (see module doc).

    ``activations`` must hold (T, B, *shape) for every neuron node and every node that
    feeds a synapse node (a Flatten between spikes and a synapse included); other
    nodes may be absent. Spiking nodes may be given as bool spikes or graded values.
    ``delay``: steps every synapse node delays its input; ``edge_shift[(p, n)]``: extra
    steps for the events of p reaching synapse node n (profile lava-float: Lava's per-
    connection delays, eventsim.simulator.lava_offsets); an event counts at the step it
    is delivered. ``masks[n]`` (optional): ``activations[n] != 0`` as bool, when the caller
    has it already (eventsim's neuron scan emits it); counts are the same either way.
    """
    T, B = next(iter(activations.values())).shape[:2]
    memo: dict = {}
    return {n: count_node(graph, info, n, activations, T, B, delay, edge_shift, memo, masks)
            for n in info.order}


# ------------------------------------------------------------------ the input-layer rule

INPUT_LAYER_RULES = {
    "binary": "binary input (bool, or numeric with only 0/1 values): each nonzero input through a nonzero "
              "weight is one synaptic operation (an accumulate, E_AC-type), as SpikingJelly's op counter and "
              "NeuroBench's synaptic-operation metric count binary layer inputs",
    "counts": "event-count input (non-negative integers, some 2 or more: event frames): a value k is k spike "
              "events, so each input counts k synaptic operations per nonzero weight it reaches (an "
              "accumulate, E_AC-type; a count of 2 costs what two binary events cost)",
    "analog": "analog input: each nonzero input value through a nonzero weight is one MAC (E_MAC-type)",
}


def _slices(x):
    """The array in first-axis slices (bounded temporaries); a broadcast over the first axis
    (direct encoding) is one slice."""
    a = np.asarray(x)
    if a.ndim == 0:
        return [a]
    if a.strides[0] == 0:
        a = a[:1]
    return a


def is_binary(x) -> bool:
    """True for a bool array or a numeric one whose values are all 0 or 1 (NeuroBench's test of
    a binary layer input). Exact: no tolerance, 0.999 is analog."""
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return True
    if a.dtype.kind not in "biuf":
        return False
    return all(bool(np.all((s == 0) | (s == 1))) for s in _slices(a))


def is_counts(x) -> bool:
    """True for an array of non-negative integers (integer dtype, or float with integral values)
    that is not binary (some value is 2 or more): event counts. Exact, no tolerance."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or a.dtype.kind not in "iuf" or is_binary(a):
        return False
    if a.dtype.kind == "u":
        return True
    if a.dtype.kind == "i":
        return all(bool(np.all(s >= 0)) for s in _slices(a))
    return all(bool(np.all((s >= 0) & np.isfinite(s) & (s == np.floor(s)))) for s in _slices(a))


def input_kind(x) -> str:
    """The input-layer rule's kind of a whole input: "binary", "counts" or "analog"."""
    return "binary" if is_binary(x) else "counts" if is_counts(x) else "analog"


def _input_derived(info: GraphInfo, name: str) -> bool:
    t = info.types[name]
    if t == "Input":
        return True
    if t in ("Flatten", "Delay"):
        ps = [p for p in info.preds[name] if (p, name) not in info.back_edges]
        return bool(ps) and all(_input_derived(info, p) for p in ps)
    return False


def input_layer_nodes(info: GraphInfo) -> list[str]:
    """Synapse nodes that read the graph's Input (directly or through Flatten/Delay) and no other
    non-spiking source: every MAC they count is an input value through a weight."""
    out = []
    for n in info.order:
        if info.types[n] not in SYNAPSE_TYPES:
            continue
        analog = [p for p in info.preds[n] if not info.is_spiking(p)]
        if analog and all(_input_derived(info, p) for p in analog):
            out.append(n)
    return out


def _shift(a: np.ndarray, s: int) -> np.ndarray:
    out = np.zeros_like(a)
    if s < a.shape[0]:
        out[s:] = a[:a.shape[0] - s]
    return out


def _input_sources(info: GraphInfo, x: np.ndarray, n: str) -> list[np.ndarray]:
    """What node ``n``'s input-derived predecessors emit, from the input ``x`` (T, B, *shape):
    the Input itself, a Flatten of it (the same values in C order). A Delay's output is the input
    moved in time, which the step alignment in ``_count_weighted`` absorbs."""
    out = []
    for p in info.preds[n]:
        if info.is_spiking(p):
            continue
        out.append(x)
    return out


def _count_weighted(graph, info: GraphInfo, n: str, x: np.ndarray, macs: np.ndarray) -> np.ndarray:
    """Node ``n``'s input-layer synaptic ops under the counts rule, per step (int64 (T,)): the sum
    over inputs of value x nonzero fan-out (``fanout``, exact at borders and strides), summed over
    the batch. Aligned in time with the backend's MACs of the same node (which count the same
    inputs as a nonzero mask, delivered after the backend's synaptic delay): the delay is the
    shift that maps the mask count onto ``macs`` exactly (the first nonzero step fixes it)."""
    f = fanout(graph.nodes[n], info.in_shapes[n]).reshape(-1)
    T = x.shape[0]
    mask = np.zeros(T, dtype=np.int64)
    weighted = np.zeros(T, dtype=np.int64)
    for src in _input_sources(info, x, n):
        B = src.shape[1]
        chunk = max(1, (1 << 22) // max(1, f.size))  # samples per pass: bounded temporaries
        for t in range(T):
            for i in range(0, B, chunk):
                v = np.asarray(src[t, i:i + chunk]).reshape(min(chunk, B - i), -1)
                mask[t] += int(np.count_nonzero(v, axis=0).astype(np.int64) @ f)
                weighted[t] += int(v.sum(axis=0, dtype=np.int64) @ f)
    macs = np.asarray(macs, dtype=np.int64)
    for s in range(T + 1):
        if np.array_equal(_shift(mask, s), macs):
            return _shift(weighted, s)
    raise BackendError(f"node {n!r}: the input layer's counts do not match the input (a Delay with "
                       "per-element delays on the input?); the counts rule cannot be applied",
                       file=info.file)


def apply_input_rule(info: GraphInfo, counts: dict, kind, x=None, graph=None) -> dict:
    """The input-layer rule on counts made by ``count_ops`` (which counts every non-spike
    event as a MAC), in place, for ``kind`` (``input_kind`` of the whole input; True/False mean
    binary/analog):

    - "binary": the MACs of ``input_layer_nodes`` become synaptic operations;
    - "counts": they become synaptic operations weighted by the input values (a value k through
      a nonzero weight is k accumulates, exactly what k binary events cost); needs the input
      ``x`` (T, B, *shape) and the ``graph``;
    - "analog": they stay MACs.

    Returns the rule record for Trace.meta['input_layer']: {"input": kind, "rule": text,
    "nodes": [...]}. Decided once per run on the whole input (``backends.run_graph``), so every
    batch and shard follows the same rule."""
    if kind is True or kind is False:
        kind = "binary" if kind else "analog"
    if kind not in INPUT_LAYER_RULES:
        raise ValueError(f"input kind {kind!r} is not one of {sorted(INPUT_LAYER_RULES)}")
    nodes = input_layer_nodes(info)
    if kind != "analog":
        if kind == "counts" and (x is None or graph is None):
            raise ValueError("the counts rule needs the input x and the graph")
        for n in nodes:
            c = counts.get(n)
            if c is None:
                continue
            macs = np.asarray(c["macs"])
            add = macs if kind == "binary" else _count_weighted(graph, info, n, np.asarray(x), macs)
            c["synaptic_ops"] = np.asarray(c["synaptic_ops"]) + add
            c["macs"] = np.zeros_like(macs)
    return {"input": kind, "rule": INPUT_LAYER_RULES[kind], "nodes": nodes}
