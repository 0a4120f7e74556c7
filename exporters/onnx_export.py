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

from hardware.fileio import atomic_path
from models.architectures import infer_shapes
from models.checkpoint import load_checkpoint

OPSET = 17


def checkpoint_to_onnx(ckpt_dir) -> onnx.ModelProto:
    from models import methods as method_registry
    from models.checkpoint import build_model

    meta, t = load_checkpoint(ckpt_dir)
    other = method_registry.get(meta["method"])
    if other is not None and other.to_onnx is not None:
        return other.to_onnx(meta, t, str(ckpt_dir))
    build_model(meta, t, file=str(ckpt_dir))  # validates names and shapes against the spec
    T = float(meta["timesteps"])
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    cur = "input"
    first = True
    shapes = infer_shapes(meta["layers"], meta["input_shape"])
    for spec, _ in zip(meta["layers"], shapes):
        name = spec["name"]
        if spec["type"] == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [f"{name}_out"], axis=1, name=name))
            cur = f"{name}_out"
            continue
        w = t[f"layers.{name}.op.weight"].astype(np.float32)
        b = t[f"layers.{name}.op.bias"].astype(np.float32)
        if first:
            w = w * T
            first = False
        is_classifier = not spec.get("neuron")
        if spec["type"] == "conv":
            p = spec["padding"]
            nodes.append(helper.make_node("Conv", [cur, const(f"{name}.weight", w), const(f"{name}.bias", b)],
                                          [f"{name}_z"], name=name, strides=[spec["stride"]] * 2,
                                          pads=[p, p, p, p], kernel_shape=[spec["kernel_size"]] * 2))
        else:
            nodes.append(helper.make_node("Gemm", [cur, const(f"{name}.weight", w), const(f"{name}.bias", b)],
                                          [f"{name}_z"], name=name, transB=1,
                                          alpha=(1.0 / T) if is_classifier else 1.0))
        cur = f"{name}_z"
        if is_classifier:
            break
        if spec.get("bn"):
            args = [const(f"{name}.bn.{k}", t[f"layers.{name}.bn.{k}"])
                    for k in ("weight", "bias", "running_mean", "running_var")]
            nodes.append(helper.make_node("BatchNormalization", [cur] + args, [f"{name}_bn"],
                                          name=f"{name}_bn", epsilon=1e-5))
            cur = f"{name}_bn"
        nodes.append(helper.make_node("Relu", [cur], [f"{name}_relu"], name=f"{name}_relu"))
        cur = f"{name}_relu"
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
