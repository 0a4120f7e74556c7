"""Architectures as data: a list of layer specs that the trainers (SNN2ANN, BPTT), the
exporters (NIR, ONNX) and the checkpoint all read, so they can never disagree.

Layer specs (dicts, in order; the last one is the classifier):
  {"name": "conv1", "type": "conv", "out_channels": 16, "kernel_size": 3, "stride": 1,
   "padding": 1, "bn": true, "neuron": true[, "maxpool": 2]}
      conv -> BN -> [max-pool on the current (SNN) / pre-activation (ANN)] -> neurons
  {"name": "pool1", "type": "avgpool", "kernel_size": 2, "neuron": true}
      spikes -> average pool -> neurons (the SNN2ANN IF -> avgpool -> IF chain)
  {"name": "block1", "type": "resblock", "out_channels": 64, "stride": 1, "neuron": true}
      basic residual block: conv_a (3x3, stride) -> BN -> neurons (``<name>.a``);
      conv_b (3x3) -> BN; shortcut = identity, or 1x1 conv (stride) -> BN when the shape
      changes; the block's neurons receive conv_b's current + the shortcut's current.
  {"name": "flatten", "type": "flatten"}
  {"name": "fc1", "type": "linear", "out_features": 128, "bn": true, "neuron": true}
The classifier is a linear layer with neuron = false (analog readout).

``ecnn`` is sized for event frames (N-MNIST 2x34x34, DVS Gesture 2xSxS); ``mlp`` is the dense
net for SHD's 700 (or binned) channels.

VGG-11/13 and ResNet-18 follow the usual CIFAR layouts (3x3 stem, no stem pooling).
ResNet-17 is our reading of the SNN2ANN paper's network (no public definition was
available here): a 3x3 stem plus 8 basic blocks of 64/128/256 channels laid out 3/3/2
(17 convolutional layers on the main path), global average pooling, one classifier.
"""
from __future__ import annotations

from spikebridge.base.errors import InputError


def _conv(name, out, k=3, s=1, p=1, maxpool=None):
    d = {"name": name, "type": "conv", "out_channels": out, "kernel_size": k, "stride": s,
         "padding": p, "bn": True, "neuron": True}
    if maxpool:
        d["maxpool"] = int(maxpool)
    return d


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


def ecnn(input_shape, num_classes):
    """CNN for event frames (2 polarities x S x S: N-MNIST 34x34, DVS Gesture 32/64/128): a 3x3
    conv of 16 channels (stride 2 when S >= 64), then stride-2 3x3 convs of 32, 64, 64, ... channels
    until the map is at most 8x8, one hidden linear layer of 128, the classifier. Strided convs, no
    pooling, so every layer maps onto Loihi-style synapses. (SHD's 1-D channels: use ``mlp``.)"""
    if len(input_shape) != 3:
        raise InputError(f"architecture ecnn needs (C, H, W) frames (nmnist, dvsgesture); got input shape "
                         f"{tuple(input_shape)} (for shd use --arch mlp)")
    side = min(input_shape[1:])
    layers = [_conv("conv1", 16, s=2 if side >= 64 else 1)]
    side = (side + 1) // 2 if side >= 64 else side
    ch = 32
    while side > 8:
        layers.append(_conv(f"conv{len(layers) + 1}", ch, s=2))
        side = (side + 1) // 2
        ch = min(ch * 2, 64)
    return layers + [{"name": "flatten", "type": "flatten"}, _fc("fc1", 128),
                     _fc("classifier", num_classes, neuron=False)]


VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


def _vgg(cfg_name):
    def build(input_shape, num_classes):
        _need_image(cfg_name, input_shape, 32)
        layers, i = [], 0
        for v in VGG_CFG[cfg_name]:
            if v == "M":  # max-pool on the preceding conv's current / pre-activation
                layers[-1]["maxpool"] = 2
                continue
            i += 1
            layers.append(_conv(f"conv{i}", v))
        return layers + [{"name": "flatten", "type": "flatten"}, _fc("fc1", 512), _fc("fc2", 512),
                         _fc("classifier", num_classes, neuron=False)]
    build.__doc__ = f"{cfg_name.upper()} (max-pool on currents; 32x32 or 64x64 inputs)."
    return build


def _resnet(name, stages):
    def build(input_shape, num_classes):
        _need_image(name, input_shape, 32)
        layers = [_conv("conv1", stages[0][0])]
        cin, b = stages[0][0], 0
        for si, (ch, n) in enumerate(stages):
            for j in range(n):
                b += 1
                stride = 2 if (si > 0 and j == 0) else 1
                layers.append({"name": f"block{b}", "type": "resblock", "out_channels": ch,
                               "stride": stride, "neuron": True})
                cin = ch
        hw = infer_shapes(layers, input_shape)[-1][1][1]  # global average pool over the last map
        return layers + [{"name": "gap", "type": "avgpool", "kernel_size": int(hw), "neuron": True},
                         {"name": "flatten", "type": "flatten"},
                         _fc("classifier", num_classes, neuron=False)]
    return build


def _need_image(arch, input_shape, min_hw):
    if len(input_shape) != 3 or min(input_shape[1:]) < min_hw:
        raise InputError(f"architecture {arch} needs images of at least {min_hw}x{min_hw} "
                         f"(cifar10, cifar100, tiny-imagenet); got input shape {tuple(input_shape)}")


ARCHITECTURES = {"mlp": mlp, "cnn": cnn, "ecnn": ecnn, "vgg11": _vgg("vgg11"), "vgg13": _vgg("vgg13"),
                 "resnet17": _resnet("resnet17", [(64, 3), (128, 3), (256, 2)]),
                 "resnet18": _resnet("resnet18", [(64, 2), (128, 2), (256, 2), (512, 2)])}


def build_spec(arch: str, input_shape, num_classes) -> list[dict]:
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(input_shape), num_classes)


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def pool_kernel(layer: dict, in_shape) -> int:
    k = layer["kernel_size"]
    if k == "global":
        if in_shape[1] != in_shape[2]:
            raise InputError(f"layer {layer['name']}: global pooling needs a square input, got {in_shape}")
        return int(in_shape[1])
    return int(k)


def infer_shapes(spec: list[dict], input_shape) -> list[tuple[tuple, tuple]]:
    """(input shape, output shape) of every layer, no batch dimension."""
    shape = tuple(int(s) for s in input_shape)
    out = []
    for layer in spec:
        t = layer["type"]
        if t in ("conv", "resblock", "avgpool") and len(shape) != 3:
            raise InputError(f"layer {layer['name']}: {t} needs a (C, H, W) input, got {shape}")
        if t == "conv":
            c, h, w = shape
            k, s, p = layer["kernel_size"], layer["stride"], layer["padding"]
            new = (layer["out_channels"], _conv_out(h, k, s, p), _conv_out(w, k, s, p))
            mp = layer.get("maxpool")
            if mp:
                new = (new[0], new[1] // int(mp), new[2] // int(mp))
        elif t == "resblock":
            s = int(layer["stride"])
            new = (layer["out_channels"], _conv_out(shape[1], 3, s, 1), _conv_out(shape[2], 3, s, 1))
        elif t == "avgpool":
            k = pool_kernel(layer, shape)
            new = (shape[0], shape[1] // k, shape[2] // k)
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
        if min(new) < 1:
            raise InputError(f"layer {layer['name']}: input {shape} is too small (output {new})")
        out.append((shape, new))
        shape = new
    return out


def resblock_has_projection(layer: dict, in_shape) -> bool:
    return int(layer["stride"]) != 1 or int(in_shape[0]) != int(layer["out_channels"])
