"""NIR graph -> torch module that runs time-major (T, B, ...), the inverse of nir_export.

    module = graph_to_torch(graph)            # or load_nir_module("graph.nir")
    out = module(x)                           # x (T, B, *input_shape) -> {output name: (T, B, *shape)}
    out, record = module(x, record=True)      # record: every node's output (T, B, *shape)
    module.to_nir()                           # the graph back, from the module's current tensors

The module reads a graph the way ``spikebridge.hardware.eventsim`` does under the ``spikebridge``
profile (docs/nir-conventions.md): forward Euler with dt from the graph metadata (1.0
when absent), the ``"spikebridge"`` node metadata honoured (reset ``zero``/``subtract``,
threshold test ``gt``/``ge``, v(0) = ``v_init``, spike amplitude), per-neuron arrays as
they are, several edges into one node summed, a back edge delivering its source's
previous step (zero at step 0). Per step t and neuron node with input I:

    IF:      v <- v + dt*r*I
    LIF:     v <- v + dt/tau * (v_leak - v + r*I)
    CubaLIF: i <- i + dt/tau_syn * (-i + w_in*I);  v <- v + dt/tau_mem * (v_leak - v + r*i)
    spike s = v > theta (or >=); v <- v_reset (zero) or v - theta (subtract) where s;
    output s * spike_amplitude.  LI / I / CubaLI output v (no spike).

Stateless nodes (Affine, Linear, Conv1d/2d, SumPool2d, AvgPool2d, Flatten, Scale,
Threshold, Input, Output) are applied at every step; node shapes have no batch
dimension (CHW). Tensors are kept as they are in the graph: call ``module.double()``
to run in float64 (what eventsim uses) or leave it in float32 (what training uses).
Structure and shapes come from ``spikebridge.hardware.graph.analyse``, which rejects malformed
graphs with a GraphError naming every problem.
"""
from __future__ import annotations

import copy
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.graph import GraphInfo, analyse, conv_geometry, graph_meta, neuron_semantics

from spikebridge.base.dialect import META_KEY  # noqa: E402
STATEFUL = ("IF", "LIF", "CubaLIF", "LI", "I", "CubaLI")
SPIKING = ("IF", "LIF", "CubaLIF")
SUPPORTED = STATEFUL + ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "SumPool2d",
                        "AvgPool2d", "Flatten", "Scale", "Threshold")
_PARAM_FIELDS = {  # NIR field -> torch Parameter (trainable synapses) or buffer
    "Affine": ("weight", "bias"), "Linear": ("weight",), "Conv1d": ("weight", "bias"),
    "Conv2d": ("weight", "bias"), "Scale": ("scale",),
}
_BUFFER_FIELDS = {
    "IF": ("r", "v_threshold", "v_reset"),
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "LI": ("tau", "r", "v_leak"), "I": ("r",),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "Threshold": ("threshold",),
}


def _t(a) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype.kind in "biu":
        a = a.astype(np.float32)
    return torch.from_numpy(np.array(a, copy=True))


class NodeModule(nn.Module):
    """One NIR node: ``forward(x)`` for stateless nodes, ``init_state``/``step`` for neurons."""

    def __init__(self, name: str, node, info: GraphInfo, dt: float):
        super().__init__()
        self.name = name
        self.type = type(node).__name__
        self.shape = tuple(info.shapes[name])
        self.in_shape = tuple(info.in_shapes[name])
        self.dt = float(dt)
        self.source = node  # the NIR node as read (to_nir rebuilds from the tensors below)
        for f in _PARAM_FIELDS.get(self.type, ()):
            v = getattr(node, f, None)
            if v is not None:
                setattr(self, f, nn.Parameter(_t(v), requires_grad=False))
        for f in _BUFFER_FIELDS.get(self.type, ()):
            v = getattr(node, f, None)
            self.register_buffer(f, None if v is None else _t(v))
        if self.type in ("Conv1d", "Conv2d", "SumPool2d", "AvgPool2d"):
            nd = len(self.in_shape) - 1
            kernel, stride, dil, lo, hi, _ = conv_geometry(node, nd, self.in_shape[1:])
            self.geom = dict(kernel=kernel, stride=stride, dilation=dil, lo=lo, hi=hi,
                             groups=int(getattr(node, "groups", 1)))
        if self.type in STATEFUL:
            sem = neuron_semantics(node, name, None, self.shape)
            self.reset = sem["reset"]
            self.threshold_test = sem["threshold_test"]
            self.register_buffer("v_init", _t(np.broadcast_to(np.asarray(sem["v_init"]), self.shape)))
            self.register_buffer("spike_amplitude", _t(sem["spike_amplitude"]))

    # -- stateless ----------------------------------------------------------------
    def _pad(self, x):
        lo, hi = self.geom["lo"], self.geom["hi"]
        if not any(lo) and not any(hi):
            return x
        pads = []
        for a, b in zip(reversed(lo), reversed(hi)):  # F.pad: last dimension first
            pads += [a, b]
        return F.pad(x, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.type
        if t in ("Input", "Output", "Flatten"):
            return x.reshape(x.shape[0], *self.shape)
        if t in ("Affine", "Linear"):
            return F.linear(x, self.weight, getattr(self, "bias", None))
        if t == "Scale":
            return x * self.scale
        if t in ("Conv1d", "Conv2d"):
            conv = F.conv1d if t == "Conv1d" else F.conv2d
            b = getattr(self, "bias", None)
            if b is not None:
                b = b.reshape(-1).expand(self.weight.shape[0]) if b.numel() in (1, self.weight.shape[0]) else b
            return conv(self._pad(x), self.weight, b, stride=self.geom["stride"],
                        dilation=self.geom["dilation"], groups=self.geom["groups"])
        if t in ("SumPool2d", "AvgPool2d"):
            y = F.avg_pool2d(self._pad(x), self.geom["kernel"], self.geom["stride"])
            return y * float(np.prod(self.geom["kernel"])) if t == "SumPool2d" else y
        if t == "Threshold":
            return (x > self.threshold).to(x.dtype)
        raise UnsupportedError(f"node type {t} has no stateless forward", None, f"node {self.name!r}")

    # -- neurons --------------------------------------------------------------------
    def init_state(self, batch: int, dtype, device=None) -> dict:
        v = self.v_init.to(dtype=dtype, device=device).expand(batch, *self.shape).clone()
        st = {"v": v}
        if self.type in ("CubaLIF", "CubaLI"):
            st["i"] = torch.zeros_like(v)
        return st

    def step(self, inp: torch.Tensor, st: dict) -> tuple[torch.Tensor, dict]:
        t, dt = self.type, self.dt
        v = st["v"]
        if t in ("IF", "I"):
            v = v + dt * self.r * inp
        elif t in ("LIF", "LI"):
            v = v + dt / self.tau * (self.v_leak - v + self.r * inp)
        else:  # CubaLIF / CubaLI: the membrane sees the new synaptic current
            i = st["i"] + dt / self.tau_syn * (-st["i"] + self.w_in * inp)
            st = {**st, "i": i}
            v = v + dt / self.tau_mem * (self.v_leak - v + self.r * i)
        if t not in SPIKING:
            return v, {**st, "v": v}
        thr = self.v_threshold
        s = (v >= thr) if self.threshold_test == "ge" else (v > thr)
        if self.reset == "subtract":
            v = v - torch.where(s, thr, torch.zeros_like(thr))
        else:
            vr = self.v_reset if self.v_reset is not None else torch.zeros((), dtype=v.dtype)
            v = torch.where(s, vr.to(v.dtype), v)
        return s.to(v.dtype) * self.spike_amplitude, {**st, "v": v}

    # -- back to NIR ------------------------------------------------------------------
    def to_nir_node(self):
        node = copy.deepcopy(self.source)
        for f in _PARAM_FIELDS.get(self.type, ()) + _BUFFER_FIELDS.get(self.type, ()):
            v = getattr(self, f, None)
            if v is not None:
                old = np.asarray(getattr(node, f))
                setattr(node, f, v.detach().cpu().numpy().astype(old.dtype).reshape(old.shape))
        return node


class NIRModule(nn.Module):
    """A NIR graph as a torch module. ``forward(x)`` takes (T, B, *input_shape)."""

    def __init__(self, graph: nir.NIRGraph, file: str | None = None):
        super().__init__()
        info = analyse(graph, file=file)
        bad = sorted({f"{n!r} ({t})" for n, t in info.types.items() if t not in SUPPORTED})
        if bad:
            raise UnsupportedError("nir_import has no torch module for node(s) " + ", ".join(bad),
                                   file, "graph")
        if len(info.inputs) != 1:
            raise UnsupportedError(f"the module takes exactly one Input node, graph has {info.inputs}",
                                   file, "graph")
        self.info = info
        self.meta = graph_meta(graph, file)
        self.dt = float(self.meta["dt"])
        self.graph_metadata = copy.deepcopy(graph.metadata)
        self.edges = [(str(a), str(b)) for a, b in graph.edges]
        self._keys = {n: f"n{i}" for i, n in enumerate(graph.nodes)}  # ModuleDict keys cannot hold '.'
        self.nodes = nn.ModuleDict({self._keys[n]: NodeModule(n, graph.nodes[n], info, self.dt)
                                    for n in graph.nodes})

    def node(self, name: str) -> NodeModule:
        return self.nodes[self._keys[name]]

    @property
    def input_name(self) -> str:
        return self.info.inputs[0]

    def forward(self, x: torch.Tensor, record: bool = False):
        """x (T, B, *input_shape) -> {Output name: (T, B, *shape)} (and every node's output
        when ``record``). Runs step by step; samples never interact."""
        info = self.info
        want = tuple(info.shapes[self.input_name])
        if x.dim() != 2 + len(want) or tuple(x.shape[2:]) != want:
            raise UnsupportedError(f"input shape {tuple(x.shape)} is not (T, batch, *{want})", None,
                                   f"input {self.input_name!r}")
        dtype = _param_dtype(self)
        x = x.to(dtype)
        T, B = x.shape[:2]
        back = set(info.back_edges)
        states = {n: self.node(n).init_state(B, dtype, x.device)
                  for n in info.order if info.types[n] in STATEFUL}
        prev: dict[str, torch.Tensor] = {}
        outs: dict[str, list] = {n: [] for n in (info.order if record else info.outputs)}
        for t in range(T):
            cur: dict[str, torch.Tensor] = {}
            for n in info.order:
                m = self.node(n)
                if info.types[n] == "Input":
                    y = x[t]
                else:
                    inp = None
                    for p in info.preds[n]:
                        if (p, n) in back:
                            v = prev.get(p)
                            if v is None:
                                continue
                        else:
                            v = cur[p]
                        inp = v if inp is None else inp + v
                    if inp is None:  # only back edges, at step 0
                        inp = torch.zeros((B, *info.in_shapes[n]), dtype=dtype, device=x.device)
                    if n in states:
                        y, states[n] = m.step(inp, states[n])
                    else:
                        y = m(inp)
                cur[n] = y
                if n in outs:
                    outs[n].append(y)
            prev = cur
        stacked = {n: torch.stack(v) for n, v in outs.items()}
        result = {n: stacked[n] for n in info.outputs}
        return (result, stacked) if record else result

    def to_nir(self) -> nir.NIRGraph:
        """The graph back, with the module's current tensors (same names, edges, metadata)."""
        nodes = {n: self.node(n).to_nir_node() for n in self.info.types}
        return nir.NIRGraph(nodes=nodes, edges=list(self.edges),
                            metadata=copy.deepcopy(self.graph_metadata))


def _param_dtype(module: nn.Module):
    for p in module.parameters():
        return p.dtype
    for b in module.buffers():
        if b is not None and b.dtype.is_floating_point:
            return b.dtype
    return torch.float32


def graph_to_torch(graph: nir.NIRGraph, file: str | None = None) -> NIRModule:
    return NIRModule(graph, file)


def load_nir_module(path) -> NIRModule:
    """Read a NIR file with the hardened loader (never ``nir.read``) and build the module."""
    from spikebridge.hardware.graph import load_graph
    return NIRModule(load_graph(path), file=str(path))


# -- graph equality (round-trip tests) -----------------------------------------------

def _values_equal(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or set(a) != set(b):
            return False
        return all(_values_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    if a is None or b is None:
        return a is None and b is None
    try:
        x, y = np.asarray(a), np.asarray(b)
    except Exception:  # noqa: BLE001
        return a == b
    if x.dtype.kind in "biuf" and y.dtype.kind in "biuf":
        return x.shape == y.shape and bool(np.array_equal(x, y))
    return bool(np.array_equal(x.astype(str), y.astype(str)))


def graph_differences(a: nir.NIRGraph, b: nir.NIRGraph) -> list[str]:
    """Every difference between two graphs (node types, every field, metadata, edges,
    graph metadata); [] when equal. Numbers compare by value (float64 1.0 == int 1)."""
    diffs = []
    if set(a.nodes) != set(b.nodes):
        diffs.append(f"node names differ: {sorted(set(a.nodes) ^ set(b.nodes))}")
    for n in sorted(set(a.nodes) & set(b.nodes)):
        x, y = a.nodes[n], b.nodes[n]
        if type(x) is not type(y):
            diffs.append(f"{n}: type {type(x).__name__} != {type(y).__name__}")
            continue
        for f in sorted(set(vars(x)) | set(vars(y))):
            if not _values_equal(getattr(x, f, None), getattr(y, f, None)):
                diffs.append(f"{n}.{f} differs")
    if sorted(map(tuple, a.edges)) != sorted(map(tuple, b.edges)):
        diffs.append("edges differ")
    if not _values_equal(a.metadata or {}, b.metadata or {}):
        diffs.append("graph metadata differs")
    return diffs


__all__ = ["NIRModule", "NodeModule", "graph_to_torch", "load_nir_module", "graph_differences"]
