"""Energy models as data, and the energy estimate of a run (a pure function of a Trace).

Two kinds of model, kept apart and labelled by ``EnergyModel.kind``:

``gpu-style`` (the convention of SNN papers, e.g. ``horowitz-45nm``)
    E_SNN = E_MAC * MACs of analog-input layers + E_AC * synaptic ops
    E_ANN = E_MAC * MACs of the equivalent ANN (one forward pass, ``ann_macs``)
    The analog-input (first) layer: our Trace counts its MACs at every one of the T
    steps (direct encoding: the image is fed at each step). ``first_layer="per_step"``
    (default) charges what the trace measured; ``first_layer="once"`` divides the
    analog-layer MACs by T (the convention of many papers, which compute the first
    layer once and reuse it). The result names the rule used.

The input layer: a binary input (bool, or only 0/1 values: rate/latency/delta encodings,
binary event frames) is spike events, so its events are synaptic operations (E_AC here); a
counts input (non-negative integers, some 2 or more: event frames with several events per
pixel and bin) is that many spike events, so a value k through a nonzero weight is k synaptic
operations (E_AC each, what k binary events cost); an analog input's are MACs (E_MAC), to which
``first_layer`` applies. Binary and analog are costed as SpikingJelly's op counter and
NeuroBench count; for counts NeuroBench's Effective ACs/MACs differ (hardware/neurobench.py). The counts carry the rule (``backends.run_graph`` applies it,
hardware/eventsim/counts.py); ``input_layer_rule`` states it and every estimate records it.

``chip-style`` (a neuromorphic chip's own per-operation costs, e.g. ``loihi``)
    E = e_synop * synaptic ops + e_nu_active * active neuron updates
        + e_nu_inactive * inactive neuron updates + e_spike * spikes routed
    MACs of an analog first layer are not a Loihi operation. We charge each of them
    as one synaptic op carrying a graded spike (one nonzero input value through one
    nonzero weight is one synaptic event, as graded spikes on Loihi 2 are), at the
    model's synaptic-op cost. The chip really runs the first layer every step, so
    ``first_layer`` does not apply to chip-style models (always ``per_step``).

    Active neuron updates: Loihi charges an update as active when the neuron received
    input or spiked. The Trace only has per-node per-step totals, so we use a
    conservative (upper-bound) approximation at the granularity of a layer and a step:
    all of a neuron node's updates at step t are active if any node of the synaptic chain
    feeding it (``incoming_chain``) carried an event at t (synaptic_ops + macs > 0), or has a
    nonzero bias (injected every step), or the node emitted a spike at t; otherwise
    all are inactive. A trace that carries an ``active_neuron_updates`` count for a
    node is used as is instead.

    Spikes routed: one message per emitted spike at the within-tile cost (a lower
    bound: a spike sent to several cores, or across tiles, costs more).

``ann-device`` (a conventional device running the equivalent ANN, keras-spiking's
convention for its non-spiking devices cpu, gpu, arm)
    E = e_mac * MACs of the equivalent ANN (one forward pass, ``ann_macs``)
        + e_neuron_update * activations of the equivalent ANN (one per neuron)
    Independent of the trace and of T: the device computes every connection once per
    inference, not event by event (keras-spiking uses one timestep per inference on
    non-spiking devices). keras-spiking counts every connection; we count connections
    with a nonzero weight that read an in-bounds input (``ann_macs``), so a pruned or
    padded layer costs a little less here.

The device table of keras-spiking (``ModelEnergy.devices``): cpu, gpu, arm are
``ann-device`` models; spinnaker and spinnaker2 are chip-style models whose neuron update
costs the same active or inactive (keras-spiking charges every neuron update at one
cost) and which charge nothing per spike (keras-spiking has no spike term).
keras-spiking's own ``loihi`` row is not used: it charges (23.6 + 3.5) pJ per synaptic
op, and the 3.5 in Davies 2018 Table 2 is the time of a synaptic op in ns
(../shared/methods.md section 6); our ``loihi`` model takes Table 2 directly.

All constants are in pJ per operation and each carries its source.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import nir
import numpy as np

from . import graph as _graph
from spikebridge.base.errors import InputError
from .trace import Trace

GPU_STYLE = "gpu-style"
CHIP_STYLE = "chip-style"
ANN_DEVICE = "ann-device"
KINDS = (GPU_STYLE, CHIP_STYLE, ANN_DEVICE)

# Operation classes a model may charge (constant names in a model / TOML file).
OPERATIONS = {
    GPU_STYLE: ("mac", "synaptic_op"),
    CHIP_STYLE: ("synaptic_op", "neuron_update_active", "neuron_update_inactive", "spike"),
    ANN_DEVICE: ("mac", "neuron_update"),
}
REQUIRED = {GPU_STYLE: ("mac", "synaptic_op"), CHIP_STYLE: ("synaptic_op",), ANN_DEVICE: ("mac",)}

FIRST_LAYER_RULES = ("per_step", "once")

NEURON_TYPES = (nir.IF, nir.LIF, nir.CubaLIF, nir.LI, nir.CubaLI, nir.I)
SPIKING_TYPES = (nir.IF, nir.LIF, nir.CubaLIF)
SYNAPSE_TYPES = (nir.Affine, nir.Linear, nir.Conv2d, nir.Conv1d)
POOL_TYPES = (nir.SumPool2d, nir.AvgPool2d)


@dataclass(frozen=True)
class Constant:
    """One per-operation energy cost in pJ with where it comes from."""

    value_pj: float
    source: str


@dataclass(frozen=True)
class EnergyModel:
    """A set of per-operation costs (pJ). ``kind`` is ``gpu-style`` or ``chip-style``.

    ``constants`` maps an operation class (see ``OPERATIONS[kind]``) to its Constant;
    an operation class without a constant costs nothing in this model (e.g. TrueNorth's
    26 pJ per synaptic event is all-in: nothing is added on top).
    """

    name: str
    kind: str
    constants: Mapping[str, Constant]
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"energy model kind must be one of {KINDS}, got {self.kind!r}",
                             place=f"model {self.name!r}")
        object.__setattr__(self, "constants", MappingProxyType(dict(self.constants)))

    def pj(self, op: str) -> float:
        c = self.constants.get(op)
        return 0.0 if c is None else float(c.value_pj)

    @property
    def source(self) -> str:
        """All citations of the model, one per constant."""
        return "; ".join(f"{op} = {c.value_pj:g} pJ [{c.source}]" for op, c in self.constants.items())


_HOROWITZ = ("Horowitz, 'Computing's energy problem (and what we can do about it)', "
             "ISSCC 2014, 45 nm")
_DAVIES = ("Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', "
           "IEEE Micro 38(1) 2018, Table 2 (pre-silicon, 0.75 V)")
_MEROLLA = ("Merolla et al., 'A million spiking-neuron integrated circuit with a scalable "
            "communication network and interface', Science 345(6197) 2014")

_KERAS_SPIKING = ("as tabulated by keras-spiking (nengo/keras-spiking, keras_spiking/model_energy.py, "
                  "ModelEnergy.devices, commit 1384ec36745c), which cites")
_DEGNAN = ("Degnan, Marr and Hasler, 'Assessing trends in performance per watt for signal "
           "processing applications', IEEE Trans. VLSI Systems 24(1):58-66, 2015 "
           "(ieeexplore.ieee.org/document/7054508)")
_HOPPNER = ("Hoeppner et al., 'Dynamic power management for neuromorphic many-core systems', "
            "IEEE Trans. Circuits and Systems I 66(8):2973-2986, 2019 (arXiv:1903.08941)")


def _keras_spiking_device(name: str, kind: str, synop_j: float, neuron_j: float,
                          paper: str, what: str) -> "EnergyModel":
    """One row of keras-spiking's device table, converted from J to pJ."""
    src = f"{_KERAS_SPIKING} {paper}; {what}"
    syn_pj, nu_pj = synop_j * 1e12, neuron_j * 1e12
    if kind == ANN_DEVICE:
        consts = {"mac": Constant(syn_pj, f"{src}: energy_per_synop {synop_j:g} J, one MAC per connection"),
                  "neuron_update": Constant(nu_pj, f"{src}: energy_per_neuron {neuron_j:g} J")}
        desc = (f"{what}, running the equivalent ANN (keras-spiking's non-spiking device): "
                "E = e_synop x ANN MACs + e_neuron x ANN activations, once per inference.")
    else:
        consts = {"synaptic_op": Constant(syn_pj, f"{src}: energy_per_synop {synop_j:g} J"),
                  "neuron_update_active": Constant(nu_pj, f"{src}: energy_per_neuron {neuron_j:g} J"),
                  "neuron_update_inactive": Constant(nu_pj, f"{src}: energy_per_neuron {neuron_j:g} J "
                                                           "(one cost for every update)")}
        desc = (f"{what} (keras-spiking's spiking device): synaptic ops x e_synop + every neuron "
                "update x e_neuron; no spike term. Analog-layer MACs charged as synaptic ops.")
    return EnergyModel(name=name, kind=kind, constants=consts, description=desc)


BUILTIN_MODELS: dict[str, EnergyModel] = {
    "horowitz-45nm": EnergyModel(
        name="horowitz-45nm",
        kind=GPU_STYLE,
        constants={
            "mac": Constant(4.6, f"{_HOROWITZ}: fp32 mult 3.7 pJ + fp32 add 0.9 pJ"),
            "synaptic_op": Constant(0.9, f"{_HOROWITZ}: fp32 add 0.9 pJ (accumulate)"),
        },
        description="GPU-style convention of SNN papers: E_SNN = E_MAC*MACs(analog layers) "
                    "+ E_AC*SOPs; E_ANN = E_MAC*MACs(equivalent ANN).",
    ),
    "loihi": EnergyModel(
        name="loihi",
        kind=CHIP_STYLE,
        constants={
            "synaptic_op": Constant(23.6, f"{_DAVIES}: synaptic spike op"),
            "neuron_update_active": Constant(81.0, f"{_DAVIES}: neuron update (active)"),
            "neuron_update_inactive": Constant(52.0, f"{_DAVIES}: neuron update (inactive)"),
            "spike": Constant(1.7, f"{_DAVIES}: spike within tile"),
        },
        description="Chip-style: synaptic ops + neuron updates (active/inactive) + spikes "
                    "routed (within tile). Analog-layer MACs charged as graded-spike synaptic ops.",
    ),
    "truenorth": EnergyModel(
        name="truenorth",
        kind=CHIP_STYLE,
        constants={
            "synaptic_op": Constant(26.0, f"{_MEROLLA}: 26 pJ per synaptic event, all-in "
                                          "(total chip energy / events)"),
        },
        description="Chip-style, all-in: 26 pJ per synaptic event, nothing added on top. "
                    "Analog-layer MACs charged as synaptic events.",
    ),
    # keras-spiking's device table (see the module docstring); values in J there.
    "cpu": _keras_spiking_device("cpu", ANN_DEVICE, 8.6e-9, 8.6e-9, _DEGNAN,
                                 "CPU (Intel i7-4960X)"),
    "gpu": _keras_spiking_device("gpu", ANN_DEVICE, 0.3e-9, 0.3e-9, _DEGNAN,
                                 "GPU (Nvidia GTX Titan Black, large batches)"),
    "arm": _keras_spiking_device("arm", ANN_DEVICE, 0.9e-9, 0.9e-9, _DEGNAN, "ARM Cortex-A"),
    "spinnaker": _keras_spiking_device("spinnaker", CHIP_STYLE, 13.3e-9, 26e-9, _HOPPNER,
                                       "SpiNNaker"),
    "spinnaker2": _keras_spiking_device("spinnaker2", CHIP_STYLE, 450e-12, 2.19e-9, _HOPPNER,
                                        "SpiNNaker 2"),
}
KERAS_SPIKING_DEVICES = ("cpu", "gpu", "arm", "spinnaker", "spinnaker2")


def get_model(name: str | EnergyModel) -> EnergyModel:
    if isinstance(name, EnergyModel):
        return name
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise InputError(f"unknown energy model {name!r}; built-in: {sorted(BUILTIN_MODELS)}",
                         place="energy model") from None


MAX_TOML_BYTES = 1 << 20


def load_energy_model_toml(path: str | Path) -> EnergyModel:
    """Read a user energy model. Format::

        name = "my-chip"
        kind = "chip-style"            # or "gpu-style"
        description = "..."            # optional
        [constants.synaptic_op]
        value_pj = 10.0
        source = "Doe et al. 2030, Table 1"

    The file must be a regular UTF-8 file of at most 1 MiB (read with a bound; a FIFO,
    directory or device is refused). Every constant needs a finite, non-negative
    ``value_pj`` and a non-empty ``source``;
    names must be operation classes of the kind. Violations raise InputError naming the
    file and the constant.
    """
    from spikebridge.base.fileio import read_regular_bytes

    path = Path(path)
    raw = read_regular_bytes(path, MAX_TOML_BYTES, InputError)  # a FIFO or device is refused, not read
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 ({e.reason} at byte {e.start})", file=path, place="file") from None
    except (tomllib.TOMLDecodeError, RecursionError, ValueError, MemoryError) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__  # RecursionError: deeply nested tables
        raise InputError(f"not valid TOML: {msg}", file=path, place="file") from None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("missing string field 'name'", file=path)
    kind = data.get("kind")
    if kind not in KINDS:
        raise InputError(f"field 'kind' must be one of {KINDS}", file=path, place="kind")
    consts = data.get("constants")
    if not isinstance(consts, dict) or not consts:
        raise InputError("missing table 'constants'", file=path, place="constants")
    out = {}
    for op, entry in consts.items():
        place = f"constants.{op}"
        if op not in OPERATIONS[kind]:
            raise InputError(f"unknown operation {op!r} for a {kind} model; allowed: "
                             f"{OPERATIONS[kind]}", file=path, place=place)
        if not isinstance(entry, dict):
            raise InputError("must be a table with value_pj and source", file=path, place=place)
        value = entry.get("value_pj")
        try:  # a 400-digit integer does not fit a float
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value)) \
                and value >= 0
        except OverflowError:
            ok = False
        if not ok:
            raise InputError("value_pj must be a finite number >= 0", file=path, place=place)
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise InputError(f"constant {op!r} has no source (every constant needs one)",
                             file=path, place=place)
        extra = set(entry) - {"value_pj", "source"}
        if extra:
            raise InputError(f"unknown keys {sorted(extra)}", file=path, place=place)
        out[op] = Constant(float(value), source.strip())
    for op in REQUIRED[kind]:
        if op not in out:
            raise InputError(f"a {kind} model needs constant {op!r}", file=path,
                             place=f"constants.{op}")
    desc = data.get("description", "")
    return EnergyModel(name=name, kind=kind, constants=out, description=str(desc))


# --------------------------------------------------------------------------- graph helpers


@dataclass(frozen=True)
class _GraphInfo:
    order: tuple[str, ...]
    preds: Mapping[str, tuple[str, ...]]      # forward-edge predecessors (back edges dropped)
    shapes: Mapping[str, tuple[int, ...]]     # output shape per node (no batch)
    in_shapes: Mapping[str, tuple[int, ...]]  # input shape per node (no batch)


def _pair(x) -> tuple[int, int]:
    a = np.asarray(x).reshape(-1)
    if a.size == 1:
        return int(a[0]), int(a[0])
    return int(a[0]), int(a[1])


def analyse(graph: nir.NIRGraph) -> _GraphInfo:
    """Topological order, forward predecessors and shapes, from ``spikebridge.hardware.graph.analyse``
    (which validates the graph and raises GraphError / UnsupportedError listing every
    problem). Back edges of cycles carry the previous step's value and are dropped here."""
    gi = _graph.analyse(graph)
    back = set(gi.back_edges)
    preds = {n: tuple(p for p in gi.preds[n] if (p, n) not in back) for n in gi.order}
    return _GraphInfo(tuple(gi.order), MappingProxyType(preds),
                      MappingProxyType(dict(gi.shapes)), MappingProxyType(dict(gi.in_shapes)))


# --------------------------------------------------------------------------- ANN MACs


def _valid_taps_1d(n_in: int, k: int, pad: int, stride: int, dil: int, n_out: int) -> np.ndarray:
    """For each kernel tap j: number of output positions whose input index is in bounds."""
    o = np.arange(n_out)[:, None]
    idx = o * stride - pad + np.arange(k)[None, :] * dil
    return ((idx >= 0) & (idx < n_in)).sum(axis=0)


def conv_macs(node, in_shape: tuple[int, ...]) -> int:
    """Exact MACs of one Conv1d/Conv2d forward: the sum over nonzero weights w[o, c, *tap]
    of the number of output positions where that tap reads an in-bounds (not padding)
    input. ``in_shape`` is (C, *spatial)."""
    w = np.asarray(node.weight)
    ndim = w.ndim - 2
    spatial = tuple(int(v) for v in in_shape[-ndim:])
    kernel, stride, dil, lo, _hi, out = _graph.conv_geometry(node, ndim, spatial)
    count = (w != 0).sum(axis=(0, 1)).astype(np.int64)  # nonzero weights per tap over (o, c)
    for d in range(ndim):
        v = _valid_taps_1d(spatial[d], kernel[d], lo[d], stride[d], dil[d], out[d])
        count = count * v.reshape([-1 if i == d else 1 for i in range(ndim)])
    return int(count.sum())


conv2d_macs = conv_macs


def ann_macs(graph: nir.NIRGraph) -> dict[str, int]:
    """MACs per sample of the equivalent ANN, one forward pass (not x T), per node.

    Affine/Linear: nonzero weights. Conv1d/Conv2d: exact with padding (in-bounds taps
    only, see ``conv_macs``). SumPool2d/AvgPool2d: output elements x kernel area.
    Scale: output elements. Neurons (the ANN's activation), Input, Output, Flatten: 0
    (not listed).
    """
    info = analyse(graph)
    out: dict[str, int] = {}
    for n in info.order:
        node = graph.nodes[n]
        if isinstance(node, (nir.Affine, nir.Linear)):
            out[n] = int(np.count_nonzero(node.weight))
        elif isinstance(node, (nir.Conv2d, nir.Conv1d)):
            out[n] = conv_macs(node, info.in_shapes[n])
        elif isinstance(node, POOL_TYPES):
            kh, kw = _pair(node.kernel_size)
            out[n] = int(np.prod(info.shapes[n])) * kh * kw
        elif isinstance(node, nir.Scale):
            out[n] = int(np.prod(info.shapes[n]))
    return out


# --------------------------------------------------------------------------- estimate


def _series(trace: Trace, node: str, kind: str) -> np.ndarray:
    c = trace.counts.get(node, {})
    if kind in c:
        return np.asarray(c[kind], dtype=np.float64).reshape(-1)
    return np.zeros(trace.timesteps, dtype=np.float64)


def incoming_chain(graph: nir.NIRGraph, info, node: str) -> list[str]:
    """The synaptic chain feeding ``node``: every node reached walking back along forward
    edges until a neuron node or an Input (Affine, Conv, pools, Scale, Flatten, ...).

    On a chip the whole chain is one connection into ``node``'s cores (the Lava lowering
    multiplies the chain's matrices), so its events are work of ``node``'s cores."""
    found, stack, seen = [], list(info.preds[node]), set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if isinstance(graph.nodes[p], (nir.Input, *NEURON_TYPES)):
            continue
        found.append(p)
        stack.extend(info.preds[p])
    return found


def active_neuron_updates(trace: Trace, graph: nir.NIRGraph, node: str, info=None) -> np.ndarray:
    """Per-step active neuron updates of a neuron node (summed over the batch).

    Uses the trace's ``active_neuron_updates`` count when present, else the layer-step
    upper bound described in the module docstring.
    """
    info = info or analyse(graph)
    if "active_neuron_updates" in trace.counts.get(node, {}):
        return _series(trace, node, "active_neuron_updates")
    nu = _series(trace, node, "neuron_updates")
    active = _series(trace, node, "spikes") > 0
    for s in incoming_chain(graph, info, node):
        active |= (_series(trace, s, "synaptic_ops") + _series(trace, s, "macs")) > 0
        bias = getattr(graph.nodes[s], "bias", None)
        if bias is not None and np.any(np.asarray(bias) != 0):
            active |= True
    return np.where(active, nu, 0.0)


def input_layer_rule(graph: nir.NIRGraph, trace: Trace | None) -> dict | None:
    """How the input layer of ``trace`` was costed: ``{"input": "binary"|"counts"|"analog", "rule":
    text, "nodes": [...]}``. A binary input (bool, or only 0/1 values) is counted as synaptic
    operations (accumulates: E_AC in gpu-style models), a counts input (non-negative integers,
    some 2 or more) as value-weighted synaptic operations, an analog one as MACs (E_MAC); see
    hardware/eventsim/counts.py ``apply_input_rule``. From ``trace.meta["input_layer"]`` (set by
    ``backends.run_graph``); a trace without it (read back from a file) is told from its
    counts: MACs in the input-layer nodes mean the analog rule was applied; synaptic ops alone
    are reported as binary, with a ``note`` that a counts input looks the same in the counts."""
    from spikebridge.hardware.eventsim.counts import INPUT_LAYER_RULES, input_layer_nodes

    if trace is None:
        return None
    rec = (trace.meta or {}).get("input_layer")
    if rec:
        return dict(rec)
    try:
        nodes = input_layer_nodes(_graph.analyse(graph))
    except InputError:
        return None
    macs = sum(float(_series(trace, n, "macs").sum()) for n in nodes)
    sops = sum(float(_series(trace, n, "synaptic_ops").sum()) for n in nodes)
    kind = "binary" if sops > 0 and macs == 0 else "analog"
    rec = {"input": kind, "rule": INPUT_LAYER_RULES[kind], "nodes": nodes, "told_from": "counts"}
    if kind == "binary":
        rec["note"] = "synaptic operations only: a binary or a counts input (the counts alone cannot tell which)"
    return rec


def estimate(trace: Trace, graph: nir.NIRGraph, model_name: str | EnergyModel,
             first_layer: str = "per_step") -> dict:
    """Energy per sample of the run in ``trace`` under one model. See module docstring."""
    model = get_model(model_name)
    if first_layer not in FIRST_LAYER_RULES:
        raise InputError(f"first_layer must be one of {FIRST_LAYER_RULES}, got {first_layer!r}",
                         place="first_layer")
    info = analyse(graph)
    batch = max(int(trace.batch), 1)
    T = max(int(trace.timesteps), 1)
    per_node: dict[str, float] = {}
    per_op: dict[str, float] = {}

    def charge(node: str, op: str, count: float, cost: float):
        if not cost:
            return  # an operation the model does not charge (e.g. all-in TrueNorth)
        e = count * cost / batch
        per_node[node] = per_node.get(node, 0.0) + e
        key = f"{op}_pj_per_sample"
        per_op[key] = per_op.get(key, 0.0) + e

    nodes = [n for n in info.order] + [n for n in trace.counts if n not in graph.nodes]
    if model.kind == ANN_DEVICE:
        rule_used = "not applicable"  # the ANN computes every connection once per inference
        macs = ann_macs(graph)
        for n in info.order:
            node = graph.nodes[n]
            charge(n, "mac", macs.get(n, 0) * batch, model.pj("mac"))
            if isinstance(node, NEURON_TYPES):
                neurons = int(np.prod(info.shapes[n])) if info.shapes[n] else 1
                charge(n, "neuron_update", neurons * batch, model.pj("neuron_update"))
    elif model.kind == GPU_STYLE:
        rule_used = first_layer
        scale = 1.0 / T if first_layer == "once" else 1.0
        for n in nodes:
            charge(n, "mac", _series(trace, n, "macs").sum() * scale, model.pj("mac"))
            charge(n, "synaptic_op", _series(trace, n, "synaptic_ops").sum(), model.pj("synaptic_op"))
    else:
        rule_used = "per_step"  # the chip runs the analog layer at every step
        for n in nodes:
            sop = _series(trace, n, "synaptic_ops").sum()
            mac = _series(trace, n, "macs").sum()
            charge(n, "synaptic_op", sop, model.pj("synaptic_op"))
            if mac:
                charge(n, "analog_input_as_synaptic_op", mac, model.pj("synaptic_op"))
            nu = _series(trace, n, "neuron_updates")
            if nu.any():
                if n in graph.nodes:
                    act = active_neuron_updates(trace, graph, n, info)
                else:
                    act = nu
                charge(n, "neuron_update_active", act.sum(), model.pj("neuron_update_active"))
                charge(n, "neuron_update_inactive", (nu - act).sum(),
                       model.pj("neuron_update_inactive"))
            charge(n, "spike", _series(trace, n, "spikes").sum(), model.pj("spike"))
    per_node = {k: v for k, v in per_node.items() if v != 0.0}
    total = float(sum(per_node.values()))
    result = {
        "model": model.name,
        "kind": model.kind,
        "total_pj_per_sample": total,
        "per_node_pj_per_sample": per_node,
        "per_operation_pj_per_sample": per_op,
        "first_layer": rule_used,
        "input_layer": input_layer_rule(graph, trace),
        "timesteps": T,
        "constants": {op: {"value_pj": c.value_pj, "source": c.source}
                      for op, c in model.constants.items()},
        "source": model.source,
        "description": model.description,
    }
    if model.kind == GPU_STYLE:
        macs = ann_macs(graph)
        ann = float(sum(macs.values())) * model.pj("mac")
        result["ann_macs_per_sample"] = int(sum(macs.values()))
        result["ann_pj_per_sample"] = ann
        result["snn_over_ann_ratio"] = total / ann if ann > 0 else None
    return result
