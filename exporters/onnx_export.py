"""Checkpoint -> ONNX: the ANN branch as a standard ONNX model (opset 17).

The ANN branch is the ReLU network that shares the SNN's weights: input x (N, C, H, W),
Conv/Gemm -> BatchNormalization (running statistics) -> Relu per hidden layer, the
classifier applied to h / T. The branch is fed T * x during training (see
models/snn2ann.py), so the first layer's weights are multiplied by T here; the model's
input is the plain preprocessed sample. Built with onnx.helper from the checkpoint's
layer list, so the graph is exactly what the architecture spec says.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spikebridge.base.fileio import atomic_path
from spikebridge.models.architectures import infer_shapes, pool_kernel, resblock_has_projection
from spikebridge.models.checkpoint import load_checkpoint

OPSET = 17


def checkpoint_to_onnx(ckpt_dir) -> onnx.ModelProto:
    from spikebridge.models import methods as method_registry
    from spikebridge.models.checkpoint import build_model

    meta, t = load_checkpoint(ckpt_dir)
    other = method_registry.get(meta["method"])
    if other is not None and other.to_onnx is not None:
        return other.to_onnx(meta, t, str(ckpt_dir))
    if meta["method"] == "bptt":
        from spikebridge.base.errors import UnsupportedError
        raise UnsupportedError("a BPTT model has no ANN branch to export as ONNX; export it as NIR "
                               "(--format nir) or as one SNN step (--format onnx-step where available)",
                               file=str(ckpt_dir), place="method")
    build_model(meta, t, file=str(ckpt_dir))  # validates names and shapes against the spec
    T = float(meta["timesteps"])
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    state = {"first": True}

    def synapse(key, node, spec, src, alpha=1.0):
        """Conv/Gemm (+ BN) (+ MaxPool) of the tensors under ``layers.<key>``; returns the output name."""
        w = t[f"layers.{key}.op.weight"].astype(np.float32)
        b = t[f"layers.{key}.op.bias"].astype(np.float32)
        if state["first"]:
            w = w * T
            state["first"] = False
        if spec["type"] == "conv":
            p, k = spec["padding"], spec["kernel_size"]
            nodes.append(helper.make_node("Conv", [src, const(f"{node}.weight", w), const(f"{node}.bias", b)],
                                          [f"{node}_z"], name=node, strides=[spec["stride"]] * 2,
                                          pads=[p, p, p, p], kernel_shape=[k, k]))
        else:
            nodes.append(helper.make_node("Gemm", [src, const(f"{node}.weight", w), const(f"{node}.bias", b)],
                                          [f"{node}_z"], name=node, transB=1, alpha=alpha))
        out = f"{node}_z"
        if spec.get("bn"):
            args = [const(f"{node}.bn.{k}", t[f"layers.{key}.bn.{k}"])
                    for k in ("weight", "bias", "running_mean", "running_var")]
            nodes.append(helper.make_node("BatchNormalization", [out] + args, [f"{node}_bn"],
                                          name=f"{node}_bn", epsilon=1e-5))
            out = f"{node}_bn"
        if spec.get("maxpool"):
            m = int(spec["maxpool"])
            nodes.append(helper.make_node("MaxPool", [out], [f"{node}_mp"], name=f"{node}_mp",
                                          kernel_shape=[m, m], strides=[m, m]))
            out = f"{node}_mp"
        return out

    def relu(src, node):
        nodes.append(helper.make_node("Relu", [src], [f"{node}_relu"], name=f"{node}_relu"))
        return f"{node}_relu"

    cur = "input"
    shapes = infer_shapes(meta["layers"], meta["input_shape"])
    for spec, (in_shape, _) in zip(meta["layers"], shapes):
        name = spec["name"]
        typ = spec["type"]
        if typ == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [f"{name}_out"], axis=1, name=name))
            cur = f"{name}_out"
            continue
        if typ in ("conv", "linear") and not spec.get("neuron"):
            cur = synapse(name, name, spec, cur, alpha=1.0 / T)
            break
        if typ in ("conv", "linear"):
            cur = relu(synapse(name, name, spec, cur), name)
        elif typ == "avgpool":
            k = pool_kernel(spec, in_shape)
            nodes.append(helper.make_node("AveragePool", [cur], [f"{name}_pool"], name=name,
                                          kernel_shape=[k, k], strides=[k, k]))
            cur = relu(f"{name}_pool", name)
        elif typ == "resblock":
            ch, st = spec["out_channels"], spec["stride"]
            conv = {"type": "conv", "padding": 1, "kernel_size": 3, "bn": True}
            h1 = relu(synapse(f"{name}.a", f"{name}_a", {**conv, "stride": st}, cur), f"{name}_a")
            zb = synapse(f"{name}.b", f"{name}_b", {**conv, "stride": 1}, h1)
            if resblock_has_projection(spec, in_shape):
                short = synapse(f"{name}.shortcut", f"{name}_shortcut",
                                {"type": "conv", "padding": 0, "kernel_size": 1, "bn": True, "stride": st}, cur)
            else:
                short = cur
            nodes.append(helper.make_node("Add", [zb, short], [f"{name}_sum"], name=f"{name}_add"))
            cur = relu(f"{name}_sum", name)
            del ch
    nodes.append(helper.make_node("Identity", [cur], ["logits"], name="logits"))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *meta["input_shape"]])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", int(meta["num_classes"])])
    graph = helper.make_graph(nodes, f"spikebridge_{meta['arch']}_ann", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="spikebridge")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(model: onnx.ModelProto, path) -> None:
    with atomic_path(Path(path)) as tmp:
        onnx.save(model, str(tmp))
