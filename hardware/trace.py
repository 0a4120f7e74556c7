"""The one result type every backend returns (eventsim, lava) and the energy, latency
and report code consume."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COUNT_KINDS = ("synaptic_ops", "macs", "neuron_updates", "spikes")


@dataclass
class Trace:
    """What a run of a graph did, time first.

    outputs: Output node name -> array (T, batch, *shape) of what reached that node.
    spikes:  neuron node name -> array (T, batch, *shape) of its output spikes (bool), when recorded.
    counts:  node name -> {kind: int64 array (T,)} summed over the batch, kind in COUNT_KINDS:
             synaptic_ops   one input spike event through one nonzero weight (synapse nodes)
             macs           one nonzero analog input value through one nonzero weight (synapse nodes
                            whose input is not spikes, e.g. the first layer under direct encoding)
             neuron_updates one neuron state update (neuron nodes: every neuron, every step)
             spikes         spikes emitted (neuron nodes)
    """

    timesteps: int
    batch: int
    outputs: dict[str, np.ndarray]
    counts: dict[str, dict[str, np.ndarray]]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)
    backend: str = "eventsim"
    profile: str = "spikebridge"
    meta: dict = field(default_factory=dict)

    def total(self, kind: str) -> int:
        """Total of one count kind over nodes, steps and the batch."""
        return int(sum(int(c[kind].sum()) for c in self.counts.values() if kind in c))

    def per_sample(self, kind: str) -> float:
        return self.total(kind) / max(self.batch, 1)


def merge_traces(parts: list[Trace]) -> Trace:
    """Join the traces of consecutive batches of one run: outputs concatenated on the batch
    axis, integer counts summed; spikes (and meta) are the first batch's."""
    first = parts[0]
    outputs = {k: np.concatenate([p.outputs[k] for p in parts], axis=1) for k in first.outputs}
    counts = {n: {k: sum(p.counts[n][k] for p in parts) for k in c} for n, c in first.counts.items()}
    meta = dict(first.meta)
    meta["spikes_recorded_for_batch"] = first.batch
    return Trace(timesteps=first.timesteps, batch=sum(p.batch for p in parts), outputs=outputs, counts=counts,
                 spikes=first.spikes, backend=first.backend, profile=first.profile, meta=meta)
