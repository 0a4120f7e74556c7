"""Loihi-style mapping and latency of a graph from a Trace (first version).

Mapping. Each neuron node (IF, LIF, CubaLIF, LI, CubaLI, I) is placed on its own cores:

    cores_l = ceil(neurons_l / 1024) * ceil(fan_in_l / 4096)

1,024 neurons (compartments) per core and 4,096 fan-in axons per core (Davies 2018).
``fan_in_l`` is the largest number of nonzero weights into one neuron, summed over the
synapse nodes that feed the layer (through stateless nodes; a pool in between multiplies
by its kernel area). A layer whose neurons need more than 4,096 inputs is split
dendritically over several cores per group of 1,024 neurons. For a convolution a group of
neurons needs the union of its receptive fields, which can exceed one neuron's fan-in:
the core count is then a lower bound. Chips = ceil(cores / 128).

Time per step (per sample: the Trace's counts summed over the batch, divided by batch):

    step_time(t) = barrier + max_l work_l(t) / cores_l
    work_l(t)    = active_updates_l(t) * 8.4 ns + inactive_updates_l(t) * 5.3 ns
                   + synaptic_ops_l(t) * 3.5 ns

a layer's work spreading evenly over its cores; the synaptic ops of a layer are those of
the synapse nodes that feed it (they run in the destination cores); analog-input MACs are
counted as synaptic ops (graded spikes), as in the energy model. Active / inactive
updates use the rule of ``hardware.energy.active_neuron_updates``. The barrier uses the
conservative upper bound 465 ns of the published 113-465 ns range. Spike routing time
(2.1 ns within a tile, Table 2) is not added: it overlaps with synaptic work.

    latency per sample = (T + synaptic depth) * mean step time

since each synaptic layer adds one step of delay on Loihi (design notes); synaptic depth
is the largest number of synapse nodes on a forward path. samples/s = 1 / latency (one
sample at a time, no pipelining). Time to first output = (first step with a nonzero
output, 1-based, + depth) * mean step time, averaged over the samples that have one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import numpy as np

from .energy import (NEURON_TYPES, POOL_TYPES, SYNAPSE_TYPES, _pair, _series,
                     active_neuron_updates, analyse, upstream_synapses)
from .errors import InputError
from .trace import Trace

_DAVIES = ("Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', "
           "IEEE Micro 38(1) 2018")


@dataclass(frozen=True)
class ChipModel:
    """Per-operation times and mapping limits of a Loihi-style chip, each with its source."""

    name: str
    neurons_per_core: int
    fan_in_per_core: int
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
    cores_per_chip=128,
    barrier_ns=465.0,
    t_neuron_update_active_ns=8.4,
    t_neuron_update_inactive_ns=5.3,
    t_synaptic_op_ns=3.5,
    sources=(
        ("neurons_per_core", f"{_DAVIES}: 1,024 compartments per core"),
        ("fan_in_per_core", f"{_DAVIES}: 4,096 fan-in axons per core"),
        ("cores_per_chip", f"{_DAVIES}: 128 neuromorphic cores per chip"),
        ("barrier_ns", f"{_DAVIES}, Table 2: barrier sync 113-465 ns per time step; "
                       "upper bound used (conservative)"),
        ("t_neuron_update_active_ns", f"{_DAVIES}, Table 2: neuron update, active, 8.4 ns"),
        ("t_neuron_update_inactive_ns", f"{_DAVIES}, Table 2: neuron update, inactive, 5.3 ns"),
        ("t_synaptic_op_ns", f"{_DAVIES}, Table 2: synaptic spike op, at most 3.5 ns"),
    ),
)

CHIPS = {"loihi": LOIHI}


def _synapse_fan_in(node) -> int:
    w = np.asarray(node.weight)
    if w.ndim < 2:
        return 0
    if isinstance(node, (nir.Affine, nir.Linear)):
        return int(np.count_nonzero(w, axis=-1).max(initial=0))
    return int(np.count_nonzero(w.reshape(w.shape[0], -1), axis=1).max(initial=0))


def _fan_in(graph, info, node: str) -> int:
    """Largest nonzero inputs of one neuron: synapse fan-in x pool areas on the way."""
    total = 0
    stack = [(p, 1) for p in info.preds[node]]
    seen = set()
    while stack:
        p, mult = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        pn = graph.nodes[p]
        if isinstance(pn, SYNAPSE_TYPES):
            total += _synapse_fan_in(pn) * mult
        elif isinstance(pn, POOL_TYPES):
            kh, kw = _pair(pn.kernel_size)
            stack.extend((q, mult * kh * kw) for q in info.preds[p])
        elif not isinstance(pn, (nir.Input, *NEURON_TYPES)):
            stack.extend((q, mult) for q in info.preds[p])
    return total


def synaptic_depth(graph: nir.NIRGraph, info=None) -> int:
    """Largest number of synapse nodes (Affine, Linear, Conv) on a forward path."""
    info = info or analyse(graph)
    depth: dict[str, int] = {}
    for n in info.order:
        d = max((depth[p] for p in info.preds[n]), default=0)
        depth[n] = d + (1 if isinstance(graph.nodes[n], SYNAPSE_TYPES) else 0)
    return max(depth.values(), default=0)


def map_cores(graph: nir.NIRGraph, chip: ChipModel = LOIHI, info=None) -> dict[str, dict]:
    """Per neuron node: neurons, fan_in, cores (see module docstring)."""
    info = info or analyse(graph)
    out = {}
    for n in info.order:
        if not isinstance(graph.nodes[n], NEURON_TYPES):
            continue
        neurons = int(np.prod(info.shapes[n])) if info.shapes[n] else 1
        fan_in = _fan_in(graph, info, n)
        cores = math.ceil(neurons / chip.neurons_per_core) * max(
            1, math.ceil(fan_in / chip.fan_in_per_core))
        out[n] = {"neurons": neurons, "fan_in": fan_in, "cores": cores}
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


def estimate_latency(trace: Trace, graph: nir.NIRGraph, chip: str | ChipModel = "loihi") -> dict:
    """Mapping and latency per sample on a Loihi-style chip. See module docstring."""
    if isinstance(chip, str):
        if chip not in CHIPS:
            raise InputError(f"unknown chip model {chip!r}; known: {sorted(CHIPS)}", place="chip")
        chip = CHIPS[chip]
    info = analyse(graph)
    mapping = map_cores(graph, chip, info)
    T = max(int(trace.timesteps), 1)
    batch = max(int(trace.batch), 1)
    work_ns = np.zeros((len(mapping), T))
    layer_names = list(mapping)
    per_layer = {}
    for i, n in enumerate(layer_names):
        nu = _series(trace, n, "neuron_updates")[:T] / batch
        act = active_neuron_updates(trace, graph, n, info)[:T] / batch
        sops = np.zeros(T)
        for s in upstream_synapses(graph, info, n):
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
    }


__all__ = ["ChipModel", "LOIHI", "CHIPS", "estimate_latency", "map_cores", "synaptic_depth"]
