"""Checkpoint -> NIR graph, with the conventions of docs/nir-conventions.md.

The SNN a checkpoint describes is written exactly as it runs in torch: BN folded from
running statistics, bias spread over T, per-neuron thresholds as arrays, hard reset to
zero with a strict ``>`` (plain NIR's IF under forward Euler with dt = 1, r = 1), and an
analog readout whose output summed over T equals the model's SNN logits. What plain NIR
cannot say (reset kind, threshold test, v(0), spike amplitude, dt, T, readout) is carried
under the metadata key ``"spikebridge"``.
"""
from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from hardware.errors import CheckpointError
from hardware.fileio import atomic_path
from models.architectures import infer_shapes
from models.checkpoint import build_model, load_checkpoint

META_KEY = "spikebridge"


def neuron_metadata(reset="zero", threshold_test="gt", v_init=0.0, spike_amplitude=1.0) -> dict:
    return {META_KEY: {"reset": reset, "threshold_test": threshold_test,
                       "v_init": v_init, "spike_amplitude": spike_amplitude}}


def checkpoint_to_nir(ckpt_dir) -> nir.NIRGraph:
    from models import methods as method_registry

    meta, tensors = load_checkpoint(ckpt_dir)
    other = method_registry.get(meta["method"])
    if other is not None and other.to_nir is not None:
        return other.to_nir(meta, tensors, str(ckpt_dir))
    model = build_model(meta, tensors, file=str(ckpt_dir))
    return model_to_nir(model, meta)


def model_to_nir(model, meta: dict) -> nir.NIRGraph:
    import torch

    T = int(meta["timesteps"])
    shapes = infer_shapes(meta["layers"], meta["input_shape"])
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(meta["input_shape"])})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    readout_node = None
    with torch.no_grad():
        for spec, (in_shape, out_shape) in zip(meta["layers"], shapes):
            name = spec["name"]
            if spec["type"] == "flatten":
                nodes[name] = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
                edges.append((prev, name))
                prev = name
                continue
            layer = model.layers[name]
            if layer.neuron:
                w, b = (t.detach().cpu().numpy().astype(np.float32) for t in layer.folded(T))
            else:  # analog readout: sum over T of W/T s(t) + b/T == FC(mean_t s(t))
                w = (layer.op.weight / T).detach().cpu().numpy().astype(np.float32)
                b = (layer.op.bias / T).detach().cpu().numpy().astype(np.float32)
            if spec["type"] == "conv":
                nodes[name] = nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=w,
                                         stride=spec["stride"], padding=spec["padding"], dilation=1,
                                         groups=1, bias=b)
            else:
                nodes[name] = nir.Affine(weight=w, bias=b)
            edges.append((prev, name))
            prev = name
            if layer.neuron:
                th = layer.threshold.detach().cpu().numpy().astype(np.float32)
                if th.shape != tuple(out_shape):
                    raise CheckpointError(f"threshold shape {th.shape} != layer output {tuple(out_shape)}", place=name)
                nname = f"{name}_if"
                nodes[nname] = nir.IF(r=np.ones(out_shape, np.float32), v_threshold=th,
                                      v_reset=np.zeros(out_shape, np.float32), metadata=neuron_metadata())
                edges.append((prev, nname))
                prev = nname
            else:
                readout_node = name
    nodes["output"] = nir.Output(output_type={"output": np.array([int(meta["num_classes"])])})
    edges.append((prev, "output"))
    graph_meta = {META_KEY: {"format_version": 1, "dt": 1.0, "timesteps": T, "encoding": "direct",
                             "readout": "sum" if readout_node else "count",
                             "method": str(meta["method"]), "arch": str(meta["arch"])}}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_meta)


def write_nir(graph: nir.NIRGraph, path) -> None:
    """Write atomically (nir.write to a temporary file, then rename)."""
    with atomic_path(Path(path)) as tmp:
        nir.write(str(tmp), graph)
