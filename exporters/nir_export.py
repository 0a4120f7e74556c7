"""Checkpoint -> NIR graph, with the conventions of docs/nir-conventions.md.

The SNN a checkpoint describes is written exactly as it runs in torch: BN folded from
running statistics, bias spread over T (SNN2ANN) or injected every step (BPTT),
per-neuron thresholds as arrays, hard reset to zero with a strict ``>`` (plain NIR's IF
or LIF under forward Euler with dt = 1, r = 1), and an analog readout whose output
summed over T equals the model's SNN logits. What plain NIR
cannot say (reset kind, threshold test, v(0), spike amplitude, dt, T, readout) is carried
under the metadata key ``"spikebridge"``.
"""
from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from spikebridge.base.errors import CheckpointError
from spikebridge.models.architectures import infer_shapes, pool_kernel
from spikebridge.models.checkpoint import build_model, load_checkpoint

from spikebridge.base.dialect import META_KEY  # noqa: E402


def neuron_metadata(reset="zero", threshold_test="gt", v_init=0.0, spike_amplitude=1.0) -> dict:
    return {META_KEY: {"reset": reset, "threshold_test": threshold_test,
                       "v_init": v_init, "spike_amplitude": spike_amplitude}}


def checkpoint_to_nir(ckpt_dir) -> nir.NIRGraph:
    from spikebridge.models import methods as method_registry

    meta, tensors = load_checkpoint(ckpt_dir)
    other = method_registry.get(meta["method"])
    if other is not None and other.to_nir is not None:
        return other.to_nir(meta, tensors, str(ckpt_dir))
    model = build_model(meta, tensors, file=str(ckpt_dir))
    return model_to_nir(model, meta)


def neuron_node_names(meta: dict) -> list[str]:
    """NIR names of the neuron nodes, in the order the torch models report counts/spikes."""
    kind = "lif" if meta["method"] == "bptt" and str(meta["neuron"].get("model", "")).upper() == "LIF" else "if"
    out = []
    for spec in meta["layers"]:
        if spec["type"] == "flatten" or not spec.get("neuron"):
            continue
        if spec["type"] == "resblock":
            out.append(f"{spec['name']}_a_{kind}")
        out.append(f"{spec['name']}_{kind}")
    return out


def model_to_nir(model, meta: dict) -> nir.NIRGraph:
    """The SNN of an SNN2ANN or BPTT model as a NIR graph.

    SNN2ANN: BN folded, bias / T, IF with per-neuron thresholds. BPTT: BN folded, bias at
    every step, IF or LIF (tau in steps, r = 1, v_leak = 0; dt = 1 in the graph metadata)
    with the network's scalar threshold written per neuron. Both: hard reset to 0, strict
    ``>``, classifier Affine(W/T, b/T) into Output (the output summed over T is the logits).
    Avg-pool -> AvgPool2d; a residual block -> two edges into the block's neuron node.
    Max-pool on currents has no NIR equivalent: UnsupportedError naming the layer.
    """
    import torch

    from spikebridge.base.errors import UnsupportedError
    from spikebridge.models.bptt import BPTTNet

    T = int(meta["timesteps"])
    bptt = isinstance(model, BPTTNet)
    shapes = infer_shapes(meta["layers"], meta["input_shape"])
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(meta["input_shape"])})}
    edges: list[tuple[str, str]] = []
    readout_node = None
    kind = "if"
    if bptt:
        kind = model.neuron.kind
        if model.neuron.reset != "zero":
            raise UnsupportedError("only hard reset is exported", place="neuron")

    def arr(t):
        return t.detach().cpu().numpy().astype(np.float32)

    def synapse(name, layer, in_shape, src):
        """Add the (BN-folded) conv/linear of ``layer`` as node ``name`` fed by ``src``."""
        if getattr(layer, "maxpool", 0):
            raise UnsupportedError(f"layer {layer_name}: max-pool on currents has no NIR node (NIR has no "
                                   "max-pool); nets with max-pool (vgg11, vgg13) are torch-only", place=layer_name)
        w, b = layer.folded() if bptt else layer.folded(T)
        if isinstance(layer.op, torch.nn.Conv2d):
            nodes[name] = nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=arr(w),
                                     stride=layer.op.stride, padding=layer.op.padding, dilation=1, groups=1,
                                     bias=arr(b))
        else:
            nodes[name] = nir.Affine(weight=arr(w), bias=arr(b))
        edges.append((src, name))
        return name

    def neuron(name, shape, threshold, srcs):
        shape = tuple(int(d) for d in shape)
        if bptt:
            th = np.full(shape, model.neuron.v_threshold, np.float32)
        else:
            th = arr(threshold)
            if th.shape != shape:
                raise CheckpointError(f"threshold shape {th.shape} != layer output {shape}", place=name)
        zeros, ones = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        if kind == "lif":
            nodes[name] = nir.LIF(tau=np.full(shape, model.neuron.tau, np.float32), r=ones, v_leak=zeros,
                                  v_threshold=th, v_reset=zeros, metadata=neuron_metadata())
        else:
            nodes[name] = nir.IF(r=ones, v_threshold=th, v_reset=zeros, metadata=neuron_metadata())
        edges.extend((s, name) for s in srcs)
        return name

    prev = "input"
    with torch.no_grad():
        for spec, (in_shape, out_shape) in zip(meta["layers"], shapes):
            layer_name = name = spec["name"]
            typ = spec["type"]
            if typ == "flatten":
                nodes[name] = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
                edges.append((prev, name))
                prev = name
                continue
            if typ in ("conv", "linear") and not spec.get("neuron"):
                layer = model.layers[name]
                nodes[name] = nir.Affine(weight=arr(layer.op.weight / T), bias=arr(layer.op.bias / T))
                edges.append((prev, name))
                prev = readout_node = name
                continue
            if typ in ("conv", "linear"):
                layer = model.layers[name]
                syn = synapse(name, layer, in_shape, prev)
                prev = neuron(f"{name}_{kind}", out_shape, None if bptt else layer.threshold, [syn])
            elif typ == "avgpool":
                k = pool_kernel(spec, in_shape)
                nodes[name] = nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                            padding=np.array([0, 0]))
                edges.append((prev, name))
                th = None if bptt else model.layers[name].threshold
                prev = neuron(f"{name}_{kind}", out_shape, th, [name])
            elif typ == "resblock":
                blk = model.layers[name]
                a = synapse(f"{name}_a", blk.a, in_shape, prev)
                a_n = neuron(f"{name}_a_{kind}", out_shape, None if bptt else blk.a.threshold, [a])
                b = synapse(f"{name}_b", blk.b, out_shape, a_n)
                short = prev if blk.shortcut is None else synapse(f"{name}_shortcut", blk.shortcut, in_shape, prev)
                prev = neuron(f"{name}_{kind}", out_shape, None if bptt else blk.threshold, [b, short])
            else:
                raise CheckpointError(f"unknown layer type {typ!r}", place=name)
    nodes["output"] = nir.Output(output_type={"output": np.array([int(meta["num_classes"])])})
    edges.append((prev, "output"))
    graph_meta = {META_KEY: {"format_version": 1, "dt": 1.0, "timesteps": T, "encoding": "direct",
                             "readout": "sum" if readout_node else "count",
                             "method": str(meta["method"]), "arch": str(meta["arch"])}}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_meta)


def write_nir(graph: nir.NIRGraph, path) -> None:
    """Write atomically: HDF5 is built in memory (h5py failing on a full disk crashes the
    interpreter), then the bytes go to a temporary file that is renamed."""
    import io

    from spikebridge.base.fileio import atomic_write_bytes
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write_bytes(Path(path), buf.getvalue())
