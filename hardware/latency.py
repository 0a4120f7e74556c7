"""Loihi-style mapping and latency of a graph from a Trace (first version).

Mapping. Each neuron node (IF, LIF, CubaLIF, LI, CubaLI, I) is placed on its own cores,
and so is the readout of each Output fed by a synaptic chain (analog readout: its
synaptic ops are work too, without neuron updates):

    cores_l = ceil(neurons_l / 1024) * ceil(fan_in_l / 4096)

1,024 neurons (compartments) per core and 4,096 fan-in axons per core (Davies 2018).
``fan_in_l`` is the largest number of inputs of one neuron through the synaptic chain
that feeds the layer (``spikebridge.hardware.energy.incoming_chain``: Affine, Conv, pools, Flatten...
between two neuron nodes, fused into one connection as the Lava lowering does): the
product of the chain nodes' largest nonzero-weights-per-output, capped by the number of
source neurons. A layer whose neurons need more than 4,096 inputs is split dendritically
over several cores per group of 1,024 neurons. For a convolution a group of neurons needs
the union of its receptive fields, which can exceed one neuron's fan-in: the core count
is then a lower bound.

Synaptic memory: each core stores the synapses of its neurons in 128 KB (Davies 2018:
16 MB of synaptic memory over 128 cores). A layer needs

    synaptic_bits_l = synapses_l * weight_bits_l
    cores_l = max(ceil(neurons_l / 1024) * ceil(fan_in_l / 4096),
                  ceil(synaptic_bits_l / (128 * 1024 * 8)))

Loihi 1 has no convolutional weight sharing, so every (source, target) pair with a
nonzero weight is stored: ``synapses_l`` is exact for a chain with one weighted node
(nonzero in-bounds connections, ``spikebridge.hardware.energy.ann_macs``) and the upper bound
neurons_l * fan_in_l for a fused chain (e.g. conv then pool). Only weight bits are
counted (no index or format overhead): the memory core count is a lower bound.
``weight_bits_l``: the ``weight_bits`` argument, else ``metadata["spikebridge"]
["weight_bits"]`` of the chain's weighted nodes, else of the graph, else 8 (Loihi's
8-bit weight mantissa, the fixed-point model of the Lava lowering). A width outside
1-8 bits, or a mapping that needs more than ``max_chips`` chips, is refused with
UnsupportedError naming the layer and the limit. Chips = ceil(cores / 128).

Time per step (per sample: the Trace's counts summed over the batch, divided by batch):

    step_time(t) = barrier + max_l work_l(t) / cores_l
    work_l(t)    = active_updates_l(t) * 8.4 ns + inactive_updates_l(t) * 5.3 ns
                   + synaptic_ops_l(t) * 3.5 ns

a layer's work spreading evenly over its cores; the synaptic ops of a layer are those of
the nodes of its incoming chain (they run in the destination cores); analog-input MACs are
counted as synaptic ops (graded spikes), as in the energy model. Active / inactive
updates use the rule of ``spikebridge.hardware.energy.active_neuron_updates``. The barrier uses the
conservative upper bound 465 ns of the published 113-465 ns range. Spike routing time
(2.1 ns within a tile, Table 2) is not added: it overlaps with synaptic work.

    latency per sample = (T + synaptic depth) * mean step time

since each synaptic connection adds one step of delay on Loihi (design notes); synaptic
depth is the largest number of connections (fused chains) on a forward path. samples/s = 1 / latency (one
sample at a time, no pipelining). Time to first output = (first step with a nonzero
output, 1-based, + depth) * mean step time, averaged over the samples that have one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import numpy as np

from .energy import (NEURON_TYPES, POOL_TYPES, SYNAPSE_TYPES, _pair, _series,
                     active_neuron_updates, analyse, incoming_chain)
from .energy import ann_macs as _ann_macs
from spikebridge.base.errors import InputError, UnsupportedError
from .trace import Trace

_DAVIES = ("Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', "
           "IEEE Micro 38(1) 2018")


@dataclass(frozen=True)
class ChipModel:
    """Per-operation times and mapping limits of a Loihi-style chip, each with its source."""

    name: str
    neurons_per_core: int
    fan_in_per_core: int
    synaptic_memory_bytes_per_core: int
    max_weight_bits: int
    default_weight_bits: int
    cores_per_chip: int
    barrier_ns: float
    t_neuron_update_active_ns: float
    t_neuron_update_inactive_ns: float
    t_synaptic_op_ns: float
    sources: tuple[tuple[str, str], ...]

    def constants(self) -> dict:
        src = dict(self.sources)
        return {k: {"value": getattr(self, k), "source": src[k]} for k in src}


LOIHI = ChipModel(
    name="loihi",
    neurons_per_core=1024,
    fan_in_per_core=4096,
    synaptic_memory_bytes_per_core=128 * 1024,
    max_weight_bits=8,
    default_weight_bits=8,
    cores_per_chip=128,
    barrier_ns=465.0,
    t_neuron_update_active_ns=8.4,
    t_neuron_update_inactive_ns=5.3,
    t_synaptic_op_ns=3.5,
    sources=(
        ("neurons_per_core", f"{_DAVIES}: 1,024 compartments per core"),
        ("fan_in_per_core", f"{_DAVIES}: 4,096 fan-in axons per core"),
        ("synaptic_memory_bytes_per_core", f"{_DAVIES}: 128 KB synaptic memory per core "
                                           "(16 MB per chip of 128 cores)"),
        ("max_weight_bits", "Loihi weight mantissa of 8 bits (with a shared exponent), as in "
                            "Lava's fixed-point models (lava-nc 0.10.0; docs design notes)"),
        ("default_weight_bits", "assumption: a float graph is quantized to Loihi's 8-bit weights"),
        ("cores_per_chip", f"{_DAVIES}: 128 neuromorphic cores per chip"),
        ("barrier_ns", f"{_DAVIES}, Table 2: barrier sync 113-465 ns per time step; "
                       "upper bound used (conservative)"),
        ("t_neuron_update_active_ns", f"{_DAVIES}, Table 2: neuron update, active, 8.4 ns"),
        ("t_neuron_update_inactive_ns", f"{_DAVIES}, Table 2: neuron update, inactive, 5.3 ns"),
        ("t_synaptic_op_ns", f"{_DAVIES}, Table 2: synaptic spike op, at most 3.5 ns"),
    ),
)

CHIPS = {"loihi": LOIHI}


def _local_fan_in(node) -> int:
    """Largest number of inputs one output element of a chain node reads."""
    if isinstance(node, SYNAPSE_TYPES):
        w = np.asarray(node.weight)
        if isinstance(node, (nir.Affine, nir.Linear)):
            return int(np.count_nonzero(w, axis=-1).max(initial=0))
        return int(np.count_nonzero(w.reshape(w.shape[0], -1), axis=1).max(initial=0))
    if isinstance(node, POOL_TYPES):
        kh, kw = _pair(node.kernel_size)
        return kh * kw
    return 1  # Scale, Identity, Flatten, Delay, Threshold: one input per output


def _fan_in(graph, info, node: str) -> int:
    """Fan-in of one neuron of ``node`` through its fused synaptic chain: the product of
    the chain nodes' local fan-ins (summed over parallel branches), capped by the number
    of source neurons (neuron nodes and Inputs where the chain starts)."""
    memo: dict[str, int] = {}
    sources: set[str] = set()

    def f(p: str) -> int:
        if isinstance(graph.nodes[p], (nir.Input, *NEURON_TYPES)):
            sources.add(p)
            return 1
        if p not in memo:
            memo[p] = _local_fan_in(graph.nodes[p]) * sum(f(q) for q in info.preds[p])
        return memo[p]

    fan = sum(f(p) for p in info.preds[node])
    cap = sum(int(np.prod(info.shapes[q])) if info.shapes[q] else 1 for q in sources)
    return int(min(fan, cap))


def synaptic_depth(graph: nir.NIRGraph, info=None) -> int:
    """Largest number of synaptic connections on a forward path from an Input.

    A connection is a chain of non-neuron nodes (Affine, Conv, pools, Flatten, ...)
    between two neuron nodes, or from an Input or to an Output; the Lava lowering fuses
    each chain into one Dense/Sparse process, and each adds one step of delay."""
    info = info or analyse(graph)
    total: dict[str, int] = {}
    pending: dict[str, bool] = {}
    for n in info.order:
        node = graph.nodes[n]
        preds = info.preds[n]
        if isinstance(node, (nir.Input, nir.Output, *NEURON_TYPES)):
            total[n] = max((total[p] for p in preds), default=0)
            pending[n] = False
        else:  # a chain node: opens a new connection unless its input already is one
            total[n] = max((total[p] if pending[p] else total[p] + 1 for p in preds), default=1)
            pending[n] = True
    return max(total.values(), default=0)


def _meta_bits(obj):
    md = getattr(obj, "metadata", None) or {}
    sb = md.get("spikebridge") if isinstance(md, dict) else None
    return sb.get("weight_bits") if isinstance(sb, dict) else None


def _weight_bits(graph, chain: list[str], layer: str, chip: ChipModel, weight_bits) -> int:
    if isinstance(weight_bits, dict):
        bits = weight_bits.get(layer)
    else:
        bits = weight_bits
    if bits is None:
        found = [b for b in (_meta_bits(graph.nodes[s]) for s in chain) if b is not None]
        bits = max(found) if found else _meta_bits(graph)
    if bits is None:
        bits = chip.default_weight_bits
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
            or not 1 <= int(bits) <= chip.max_weight_bits:
        raise UnsupportedError(
            f"weight bit width {bits!r} does not fit {chip.name}: synaptic weights are 1 to "
            f"{chip.max_weight_bits} bits", place=f"layer {layer!r}")
    return int(bits)


def _synapses(graph, chain: list[str], macs: dict, neurons: int, fan_in: int) -> tuple[int, bool]:
    """Stored synapses of a layer and whether the count is exact (one weighted node)."""
    weighted = [s for s in chain if isinstance(graph.nodes[s], (*SYNAPSE_TYPES, *POOL_TYPES, nir.Scale))]
    if len(weighted) == 1 and weighted[0] in macs:
        return int(macs[weighted[0]]), True
    return int(neurons) * int(fan_in), False


def map_cores(graph: nir.NIRGraph, chip: ChipModel = LOIHI, info=None, weight_bits=None,
              max_chips: int | None = None) -> dict[str, dict]:
    """Per neuron node (and readout Output): neurons, fan_in, synapses, weight bits,
    synaptic memory, cores, what limits the core count, role. See the module docstring.

    weight_bits: an int for every layer, a dict layer -> bits, or None (metadata, else the
    chip's default). max_chips: refuse a mapping needing more chips (UnsupportedError)."""
    info = info or analyse(graph)
    macs = _ann_macs(graph)
    mem_bits = chip.synaptic_memory_bytes_per_core * 8
    out = {}
    for n in info.order:
        node = graph.nodes[n]
        chain = incoming_chain(graph, info, n)
        readout = isinstance(node, nir.Output) and bool(chain)
        if not (isinstance(node, NEURON_TYPES) or readout):
            continue
        neurons = int(np.prod(info.shapes[n])) if info.shapes[n] else 1
        fan_in = _fan_in(graph, info, n)
        bits = _weight_bits(graph, chain, n, chip, weight_bits)
        synapses, exact = _synapses(graph, chain, macs, neurons, fan_in)
        by_limits = math.ceil(neurons / chip.neurons_per_core) * max(
            1, math.ceil(fan_in / chip.fan_in_per_core))
        by_memory = math.ceil(synapses * bits / mem_bits)
        cores = max(by_limits, by_memory, 1)
        out[n] = {"neurons": neurons, "fan_in": fan_in, "cores": cores,
                  "synapses": synapses, "synapses_exact": exact, "weight_bits": bits,
                  "synaptic_memory_bytes": math.ceil(synapses * bits / 8),
                  "cores_by_neurons_and_fan_in": by_limits, "cores_by_synaptic_memory": by_memory,
                  "limited_by": "synaptic memory" if by_memory > by_limits else "neurons and fan-in",
                  "role": "readout" if readout else "neurons"}
    if max_chips is not None:
        cores = sum(m["cores"] for m in out.values())
        chips = math.ceil(cores / chip.cores_per_chip)
        if chips > max_chips:
            worst = max(out, key=lambda k: out[k]["cores"])
            raise UnsupportedError(
                f"the graph needs {cores} cores = {chips} {chip.name} chips of "
                f"{chip.cores_per_chip} cores, above the limit of {max_chips} chip(s) "
                f"(largest layer {worst!r}: {out[worst]['cores']} cores, limited by "
                f"{out[worst]['limited_by']})", place="mapping")
    return out


def _first_output_steps(trace: Trace) -> list[int]:
    """Per sample: 1-based first step where any Output carries a nonzero value."""
    firsts = []
    for b in range(trace.batch):
        best = None
        for arr in trace.outputs.values():
            a = np.asarray(arr)
            if a.ndim < 2 or a.shape[1] <= b:
                continue
            nz = np.flatnonzero(np.abs(a[:, b].reshape(a.shape[0], -1)).sum(axis=1) > 0)
            if nz.size:
                t = int(nz[0]) + 1
                best = t if best is None else min(best, t)
        if best is not None:
            firsts.append(best)
    return firsts


def estimate_latency(trace: Trace, graph: nir.NIRGraph, chip: str | ChipModel = "loihi",
                     weight_bits=None, max_chips: int | None = None) -> dict:
    """Mapping and latency per sample on a Loihi-style chip. See module docstring."""
    if isinstance(chip, str):
        if chip not in CHIPS:
            raise InputError(f"unknown chip model {chip!r}; known: {sorted(CHIPS)}", place="chip")
        chip = CHIPS[chip]
    info = analyse(graph)
    mapping = map_cores(graph, chip, info, weight_bits=weight_bits, max_chips=max_chips)
    T = max(int(trace.timesteps), 1)
    batch = max(int(trace.batch), 1)
    work_ns = np.zeros((len(mapping), T))
    layer_names = list(mapping)
    per_layer = {}
    for i, n in enumerate(layer_names):
        nu = _series(trace, n, "neuron_updates")[:T] / batch
        act = active_neuron_updates(trace, graph, n, info)[:T] / batch
        sops = np.zeros(T)
        for s in incoming_chain(graph, info, n):
            sops += (_series(trace, s, "synaptic_ops")[:T] + _series(trace, s, "macs")[:T]) / batch
        w = (act * chip.t_neuron_update_active_ns + (nu - act) * chip.t_neuron_update_inactive_ns
             + sops * chip.t_synaptic_op_ns) / mapping[n]["cores"]
        work_ns[i, :len(w)] = w
        per_layer[n] = {**mapping[n],
                        "mean_core_work_ns_per_step": float(w.mean()) if w.size else 0.0,
                        "synaptic_ops_per_sample": float(sops.sum()),
                        "neuron_updates_per_sample": float(nu.sum())}
    slowest = work_ns.max(axis=0) if len(layer_names) else np.zeros(T)
    step_ns = chip.barrier_ns + slowest
    mean_step_s = float(step_ns.mean()) * 1e-9
    depth = synaptic_depth(graph, info)
    latency_s = (T + depth) * mean_step_s
    firsts = _first_output_steps(trace)
    ttfo = float(np.mean([(t + depth) * mean_step_s for t in firsts])) if firsts else None
    bottleneck = [layer_names[int(i)] for i in work_ns.argmax(axis=0)] if layer_names else []
    cores = int(sum(m["cores"] for m in mapping.values()))
    return {
        "chip": chip.name,
        "cores": cores,
        "chips": max(1, math.ceil(cores / chip.cores_per_chip)),
        "synaptic_memory_bytes": int(sum(m["synaptic_memory_bytes"] for m in mapping.values())),
        "per_layer": per_layer,
        "timesteps": T,
        "synaptic_depth": depth,
        "barrier_ns": chip.barrier_ns,
        "step_time_ns": [float(x) for x in step_ns],
        "slowest_core_work_ns": [float(x) for x in slowest],
        "bottleneck_layer_per_step": bottleneck,
        "mean_step_time_s": mean_step_s,
        "seconds_per_sample": latency_s,
        "samples_per_second": (1.0 / latency_s) if latency_s > 0 else None,
        "time_to_first_output_s": ttfo,
        "constants": chip.constants(),
        "source": "; ".join(f"{k}: {v}" for k, v in chip.sources),
        "rule": "latency = (T + synaptic depth) x mean(barrier + slowest core work per step)",
        "mapping_rule": "cores per layer = max(ceil(neurons/1024) x ceil(fan-in/4096), "
                        "ceil(synapses x weight bits / (128 KB x 8)))",
    }


__all__ = ["ChipModel", "LOIHI", "CHIPS", "estimate_latency", "map_cores", "synaptic_depth"]
