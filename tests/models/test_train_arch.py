"""Pooling and residual layers: both SNN2ANN branches agree, NIR export reproduces the
torch spikes in eventsim (avg-pool node, several edges into one IF), max-pool refused at
export with the layer named, VGG/ResNet shapes at 32x32 and 64x64, ONNX of the ANN branch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikebridge.exporters.nir_export import to_nir
from spikebridge.models.methods import bptt as MB
from spikebridge.models.methods import snn2ann as MS
from spikebridge.base.errors import InputError, UnsupportedError
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import analyse
from spikebridge.models.architectures import build_spec, infer_shapes
from spikebridge.models.bptt import BPTTNet
from spikebridge.models.snn2ann import SNN2ANNNet

SHAPE = (2, 8, 8)
SPEC = [
    {"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
     "bn": True, "neuron": True},
    {"name": "block1", "type": "resblock", "out_channels": 4, "stride": 1, "neuron": True},   # identity
    {"name": "block2", "type": "resblock", "out_channels": 6, "stride": 2, "neuron": True},   # projection
    {"name": "pool", "type": "avgpool", "kernel_size": 2, "neuron": True},
    {"name": "flatten", "type": "flatten"},
    {"name": "classifier", "type": "linear", "out_features": 5, "bn": False, "neuron": False},
]


def _randomise_bn(net):
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4)
    return net


def _meta(method, T, **neuron):
    return {"method": method, "arch": "test", "timesteps": T, "input_shape": list(SHAPE), "num_classes": 5,
            "layers": SPEC, "neuron": {"model": "IF", **neuron}}


def _compare(net, meta, record_fn, x):
    with torch.no_grad():
        logits, _, spikes = record_fn(torch.from_numpy(x))
    dep = (MB if meta["method"] == "bptt" else MS).deployed_from_model(net, meta)
    g = to_nir(dep)
    assert sum(1 for n in g.nodes.values() if type(n).__name__ == "AvgPool2d") == 1
    names = dep.neuron_names()  # conv1, block1.a, block1, block2.a, block2, pool
    into = [a for a, b in g.edges if b == names[2]]
    assert sorted(into) == sorted(["block1_b", names[0]])  # conv_b's current + the identity shortcut
    T = meta["timesteps"]
    tr = simulate(g, np.broadcast_to(x[None], (T, *x.shape)), info=analyse(g))
    assert len(names) == len(spikes) == 6
    total = mism = 0
    for name, s in zip(names, spikes):
        total += s.numel()
        mism += int((tr.spikes[name].astype(bool) != s.numpy().astype(bool)).sum())
    assert sum(int(s.sum()) for s in spikes) > 0
    assert mism / total < 1e-3, (mism, total)
    assert np.allclose(tr.outputs["output"].sum(0), logits.numpy(), atol=1e-3)


def test_snn2ann_pool_residual_branches_agree_and_export():
    torch.manual_seed(0)
    net = _randomise_bn(SNN2ANNNet(SPEC, SHAPE, timesteps=4)).eval()
    for _, unit in net.neuron_units():
        unit.threshold.mul_(0.5)
    x = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    logits, counts = net.snn_forward(torch.from_numpy(x))
    ann, noisy = net.ann_forward(torch.from_numpy(x), counts)
    assert len(counts) == len(noisy) == 6
    assert torch.allclose(ann, logits, atol=1e-5)  # STSU: the ANN forward is the SNN's
    _compare(net, _meta("snn2ann", 4), lambda t: net.snn_forward(t, record=True), x)


@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_bptt_pool_residual_export(neuron):
    torch.manual_seed(0)
    net = _randomise_bn(BPTTNet(SPEC, SHAPE, timesteps=4, neuron=neuron, v_threshold=0.5)).eval()
    x = np.random.default_rng(1).random((16, *SHAPE), dtype=np.float32) * 2
    meta = _meta("bptt", 4, tau=2.0, threshold=0.5)
    meta["neuron"]["model"] = neuron.upper()
    _compare(net, meta, lambda t: net(t, record=True), x)


def test_maxpool_export_names_the_layer():
    spec = [{"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
             "bn": True, "neuron": True, "maxpool": 2},
            {"name": "flatten", "type": "flatten"},
            {"name": "classifier", "type": "linear", "out_features": 3, "bn": False, "neuron": False}]
    net = SNN2ANNNet(spec, (1, 8, 8), 2).eval()
    meta = {"method": "snn2ann", "arch": "t", "timesteps": 2, "input_shape": [1, 8, 8], "num_classes": 3,
            "layers": spec, "neuron": {}}
    with pytest.raises(UnsupportedError, match="conv1.*max-pool"):
        MS.deployed_from_model(net, meta)
    # max-pool is taken on the current / pre-activation: the SNN current of one step is pooled
    x = torch.rand(2, 1, 8, 8)
    layer = net.layers["conv1"]
    assert layer.snn_current(x, 2).shape == (2, 4, 4, 4)
    assert layer.ann(x).shape == (2, 4, 4, 4)


@pytest.mark.parametrize("arch,hw,last", [("vgg11", 32, (512, 1, 1)), ("vgg13", 64, (512, 2, 2)),
                                          ("resnet17", 32, (256, 1, 1)), ("resnet18", 64, (512, 1, 1))])
def test_paper_architectures_shapes(arch, hw, last):
    spec = build_spec(arch, (3, hw, hw), 10)
    shapes = infer_shapes(spec, (3, hw, hw))
    flat_in = [s for s, (i, o) in zip(spec, shapes) if s["type"] == "flatten"]
    i = spec.index(flat_in[0])
    assert shapes[i][0] == last
    n_conv = sum(1 for s in spec if s["type"] == "conv") + 2 * sum(1 for s in spec if s["type"] == "resblock")
    assert n_conv == {"vgg11": 8, "vgg13": 10, "resnet17": 17, "resnet18": 17}[arch]
    with pytest.raises(InputError):
        build_spec(arch, (1, 8, 8), 10)


def test_onnx_ann_branch_with_pool_and_residual(tmp_path):
    import onnxruntime as ort

    from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
    from spikebridge.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = _randomise_bn(SNN2ANNNet(SPEC, SHAPE, timesteps=4)).eval()
    meta = {**_meta("snn2ann", 4), "smu": "stsu"}
    save_checkpoint(tmp_path / "ck", net.state_dict(), meta)
    write_onnx(checkpoint_to_onnx(tmp_path / "ck"), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((5, *SHAPE), dtype=np.float32)
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref, _ = net.ann_forward(torch.from_numpy(x))
    assert np.abs(got - ref.numpy()).max() < 1e-4
