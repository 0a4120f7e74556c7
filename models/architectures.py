"""Architectures as data: a list of layer specs that the trainer (torch), the exporters
(NIR, ONNX) and the checkpoint all read, so the three can never disagree.

A layer spec is a dict:
  {"name": "conv1", "type": "conv", "out_channels": 16, "kernel_size": 3, "stride": 1,
   "padding": 1, "bn": true, "neuron": true}
  {"name": "flatten", "type": "flatten"}
  {"name": "fc1", "type": "linear", "out_features": 128, "bn": true, "neuron": true}
The last layer is the classifier: a linear layer with neuron = false (analog readout).
"""
from __future__ import annotations

from hardware.errors import InputError


def _conv(name, out, k=3, s=1, p=1):
    return {"name": name, "type": "conv", "out_channels": out, "kernel_size": k, "stride": s,
            "padding": p, "bn": True, "neuron": True}


def _fc(name, out, neuron=True):
    return {"name": name, "type": "linear", "out_features": out, "bn": neuron, "neuron": neuron}


def mlp(input_shape, num_classes):
    return [{"name": "flatten", "type": "flatten"}, _fc("fc1", 256), _fc("fc2", 128),
            _fc("classifier", num_classes, neuron=False)]


def cnn(input_shape, num_classes):
    """Small CNN for 8x8 (digits) and 28x28 (Fashion-MNIST) inputs; strided convs, no max-pool,
    so every layer maps onto Loihi-style synapses."""
    _, h, _ = input_shape
    layers = [_conv("conv1", 16), _conv("conv2", 32, s=2)]
    if h >= 16:
        layers.append(_conv("conv3", 64, s=2))
    return layers + [{"name": "flatten", "type": "flatten"}, _fc("fc1", 128),
                     _fc("classifier", num_classes, neuron=False)]


ARCHITECTURES = {"mlp": mlp, "cnn": cnn}


def build_spec(arch: str, input_shape, num_classes) -> list[dict]:
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(input_shape), num_classes)


def infer_shapes(spec: list[dict], input_shape) -> list[tuple[tuple, tuple]]:
    """(input shape, output shape) of every layer, no batch dimension."""
    shape = tuple(int(s) for s in input_shape)
    out = []
    for layer in spec:
        t = layer["type"]
        if t == "conv":
            c, h, w = shape
            k, s, p = layer["kernel_size"], layer["stride"], layer["padding"]
            new = (layer["out_channels"], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        elif t == "flatten":
            n = 1
            for d in shape:
                n *= d
            new = (n,)
        elif t == "linear":
            if len(shape) != 1:
                raise InputError(f"layer {layer['name']}: linear needs a flat input, got {shape}")
            new = (layer["out_features"],)
        else:
            raise InputError(f"layer {layer.get('name')}: unknown layer type {t!r}")
        out.append((shape, new))
        shape = new
    return out
