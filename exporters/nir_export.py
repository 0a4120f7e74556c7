"""Deployed network -> NIR graph, with the conventions of docs/nir-conventions.md.

``to_nir(net)`` is the one torch->NIR writer: every method hands it the ``DeployedNet`` its
registry entry builds (models/deployed.py; ``checkpoint_to_nir(ckpt)`` dispatches on
model.json's ``method`` through the method registry). The SNN is written exactly as it runs in torch: BN folded from
running statistics, the bias as injected per step, per-neuron thresholds as arrays, IF
(r = 1) or LIF under forward Euler with dt = 1, and an analog readout Affine(W/T, b/T) whose
output summed over T equals the model's SNN logits. What plain NIR cannot say (reset kind,
threshold test, v(0), spike amplitude, count-then-emit window; dt, T, readout, the input
encoding of training) is carried
under the metadata key ``"spikebridge"``.
"""
from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from spikebridge.base.dialect import META_KEY
from spikebridge.base.errors import UnsupportedError
from spikebridge.base.fileio import atomic_path
from spikebridge.models.deployed import AvgPool, DeployedNet, Flatten, Neuron, Synapse, from_checkpoint


def neuron_metadata(reset="zero", threshold_test="gt", v_init=0.0, spike_amplitude=1.0) -> dict:
    return {META_KEY: {"reset": reset, "threshold_test": threshold_test,
                       "v_init": v_init, "spike_amplitude": spike_amplitude}}


def to_nir(net: DeployedNet) -> nir.NIRGraph:
    """The NIR graph of a deployed network (node names are the DeployedNet's)."""
    T = int(net.timesteps)
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    for node in net.nodes:
        o = node.op
        if isinstance(o, Flatten):
            nodes[node.name] = nir.Flatten(input_type={"input": np.array(o.input_shape)}, start_dim=0, end_dim=-1)
        elif isinstance(o, Synapse):
            w, b = (o.weight / T, o.bias / T) if o.readout else (o.weight, o.bias)
            if o.kind == "conv":
                nodes[node.name] = nir.Conv2d(input_shape=o.input_hw, weight=w, stride=o.stride, padding=o.padding,
                                              dilation=1, groups=1, bias=b)
            else:
                nodes[node.name] = nir.Affine(weight=w, bias=b)
        elif isinstance(o, AvgPool):
            k = o.kernel
            nodes[node.name] = nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                             padding=np.array([0, 0]))
        elif isinstance(o, Neuron):
            md = neuron_metadata(reset=o.reset, threshold_test=o.test, v_init=o.v_init, spike_amplitude=o.amplitude)
            if o.window is not None:  # count-then-emit over the whole run (one window of T steps)
                md[META_KEY]["window"] = o.window
            if o.kind == "LIF":
                nodes[node.name] = nir.LIF(tau=o.tau, r=o.r, v_leak=o.v_leak, v_threshold=o.threshold,
                                           v_reset=o.v_reset, metadata=md)
            else:
                nodes[node.name] = nir.IF(r=o.r, v_threshold=o.threshold, v_reset=o.v_reset, metadata=md)
        else:
            raise UnsupportedError(f"node {node.name}: {type(o).__name__} has no NIR writer", place=node.name)
        edges.extend((src, node.name) for src in node.inputs)
    nodes["output"] = nir.Output(output_type={"output": np.array([int(net.num_classes)])})
    edges.append((net.nodes[-1].name if net.nodes else "input", "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={META_KEY: net.metadata})


def checkpoint_to_nir(ckpt_dir) -> nir.NIRGraph:
    """``export --format nir``: the checkpoint's DeployedNet (models.deployed.from_checkpoint) as NIR,
    with the input encoding it was trained with (model.json; graph metadata ``encoding``, which
    simulate and report then use for static inputs)."""
    from dataclasses import replace

    from spikebridge.models.checkpoint import read_meta
    from spikebridge.models.config import encoding_of

    net = from_checkpoint(ckpt_dir)
    return to_nir(replace(net, encoding=encoding_of(read_meta(ckpt_dir))))


def write_nir(graph: nir.NIRGraph, path) -> None:
    """Write atomically: HDF5 is built in memory (h5py failing on a full disk crashes the
    interpreter), then the bytes go to a temporary file that is renamed."""
    import io

    from spikebridge.base.fileio import atomic_write_bytes
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write_bytes(Path(path), buf.getvalue())
