"""The NIR dialect spikebridge writes and reads: node kinds and the metadata key.

NIR (nir 1.0.8) has no soft reset, no per-neuron initial membrane, no multi-spike and
no ``>=`` threshold test. What a graph needs beyond the spec travels in node and graph
metadata under one key, ``META_KEY``; every backend honours it (docs/nir-conventions.md).
Every layer reads node kinds from here, so they cannot disagree.
"""
from __future__ import annotations

META_KEY = "spikebridge"

# every node type a spikebridge backend or reader may meet (nir 1.0.8 names)
KNOWN_TYPES = (
    "Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d",
    "AvgPool2d", "Flatten", "IF", "LIF", "CubaLIF", "CubaLI", "LI", "I", "Threshold",
    "Delay", "NIRGraph",
)
# neurons that emit spikes
SPIKING_TYPES = frozenset({"IF", "LIF", "CubaLIF", "Threshold"})
# every node with a state that integrates over time (spiking or not: LI/CubaLI/I readouts)
NEURON_TYPES = frozenset({"IF", "LIF", "CubaLIF", "CubaLI", "LI", "I", "Threshold"})
# nodes that carry weights or pool: where synaptic operations are counted
SYNAPSE_TYPES = frozenset({"Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d"})


def node_type(node) -> str:
    """The NIR type name of a node object ("LIF", "Affine", ...)."""
    return type(node).__name__


def node_meta(node) -> dict:
    """The spikebridge part of a node's metadata ({} when absent or not a dict)."""
    md = getattr(node, "metadata", None) or {}
    m = md.get(META_KEY) if isinstance(md, dict) else None
    return m if isinstance(m, dict) else {}
