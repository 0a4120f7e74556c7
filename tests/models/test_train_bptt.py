"""BPTT baseline: the fused multi-step neuron against a plain autograd loop, gradients
through all T steps, training, checkpoint, NIR export reproduced by eventsim."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spikebridge.exporters.nir_export import checkpoint_to_nir
from spikebridge.models.deployed import from_checkpoint
from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import analyse
from spikebridge.models.architectures import build_spec
from spikebridge.models.bptt import BPTTNet, MultiStepNeuron, reference_neuron
from spikebridge.models.checkpoint import build_model, load_checkpoint
from spikebridge.models.datasets import load_dataset
from spikebridge.models.train import TrainConfig, train


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("surrogate", ["rectangular", "atan", "sigmoid"])
@pytest.mark.parametrize("soft", [False, True])
def test_fused_neuron_matches_autograd_loop(kind, surrogate, soft):
    torch.manual_seed(0)
    decay, gain = (1.0, 1.0) if kind == "if" else (0.5, 0.5)
    x = (torch.randn(6, 3, 40, dtype=torch.float64) * 1.5).requires_grad_()
    w = torch.randn(6, 3, 40, dtype=torch.float64)
    s = MultiStepNeuron.apply(x, 1.0, decay, gain, soft, surrogate)
    (s * w).sum().backward()
    g = x.grad.clone()
    x.grad = None
    r = reference_neuron(x, 1.0, decay, gain, soft, surrogate)
    (r * w).sum().backward()
    assert torch.equal(s, r)
    assert s.sum() > 0
    assert torch.allclose(g, x.grad, atol=1e-12)


def test_gradients_flow_through_all_steps():
    """A loss on the last step's spikes only reaches the input of every earlier step."""
    x = torch.full((5, 1, 4), 0.3, requires_grad=True)
    s = MultiStepNeuron.apply(x, 1.0, 0.5, 0.5, False, "atan")
    s[-1].sum().backward()
    assert (x.grad.abs() > 0).all()
    # the whole network: every parameter gets a gradient through the T-step unrolled graph
    torch.manual_seed(0)
    net = BPTTNet(build_spec("cnn", (1, 8, 8), 10), (1, 8, 8), timesteps=4, neuron="lif")
    logits, counts = net(torch.rand(8, 1, 8, 8) * 2)
    torch.nn.functional.cross_entropy(logits, torch.arange(8) % 10).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert len(counts) == 3  # conv1, conv2, fc1


def test_multistep_equals_single_step_loop():
    """Each layer over all T at once gives the same spikes as stepping the layers one by one."""
    torch.manual_seed(1)
    net = BPTTNet(build_spec("cnn", (1, 8, 8), 10), (1, 8, 8), timesteps=3, neuron="if").eval()
    x = torch.rand(4, 1, 8, 8) * 2
    with torch.no_grad():
        logits, _, spikes = net(x, record=True)
        from spikebridge.models.neurons import NeuronConfig, if_step
        v = {}
        outs = {i: [] for i in range(3)}
        acc = 0
        for t in range(3):
            h = x
            for i, name in enumerate(["conv1", "conv2", "fc1"]):
                if name == "fc1":
                    h = h.flatten(1)
                cur = net.layers[name](h)
                s, v[name] = if_step(cur, v.get(name, torch.zeros_like(cur)), 1.0, NeuronConfig())
                outs[i].append(s)
                h = s
            acc = acc + h
        ref = net.layers["classifier"](acc / 3)
    for i in range(3):
        assert torch.equal(torch.stack(outs[i]), spikes[i])
    assert torch.allclose(ref, logits, atol=1e-6)


@pytest.fixture(scope="module", params=["lif", "if"])
def bptt_ckpt(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"bptt-{request.param}") / "ckpt"
    train(TrainConfig(method="bptt", neuron=request.param, surrogate="rectangular", arch="cnn",
                      dataset="digits", epochs=1, limit_train=320, limit_test=64, timesteps=4, seed=0), out, progress=False)
    return out


def test_bptt_checkpoint_and_metrics(bptt_ckpt):
    meta, tensors = load_checkpoint(bptt_ckpt)
    assert meta["method"] == "bptt" and meta["neuron"]["model"] in ("IF", "LIF")
    assert meta["neuron"]["reset"] == "zero" and meta["neuron"]["threshold_test"] == "gt"
    rows = [json.loads(line) for line in (bptt_ckpt / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "loss", "snn_test_accuracy", "seconds", "spikes_per_sample"} <= set(rows[-1])
    assert "ann_test_accuracy" not in rows[-1]
    assert isinstance(build_model(meta, tensors), BPTTNet)


def test_bptt_nir_export_reproduced_by_eventsim(bptt_ckpt):
    meta, tensors = load_checkpoint(bptt_ckpt)
    net = build_model(meta, tensors)
    x, _ = load_dataset("digits", "test")
    x = x[:60]
    with torch.no_grad():
        logits, _, spikes = net(torch.from_numpy(x), record=True)
    g = checkpoint_to_nir(bptt_ckpt)
    T = meta["timesteps"]
    tr = simulate(g, np.broadcast_to(x[None], (T, *x.shape)), info=analyse(g))
    names = from_checkpoint(bptt_ckpt).neuron_names()
    assert len(names) == len(spikes)
    total = mism = 0
    for name, s_t in zip(names, spikes):
        a = tr.spikes[name].astype(bool)
        total += a.size
        mism += int((a != s_t.numpy().astype(bool)).sum())
    assert sum(int(s.sum()) for s in spikes) > 0
    assert mism / total < 1e-4, (mism, total)
    assert np.allclose(tr.outputs["output"].sum(0), logits.numpy(), atol=1e-3)
    # every field is plain NIR: the strict `nir` reading (forward Euler, dt from the graph) agrees
    strict = simulate(g, np.broadcast_to(x[None], (T, *x.shape)), profile="nir")
    for name in names:
        assert np.array_equal(strict.spikes[name], tr.spikes[name]), name


def test_bptt_onnx_export_is_refused_clearly(bptt_ckpt):
    from spikebridge.exporters.onnx_export import checkpoint_to_onnx
    with pytest.raises(UnsupportedError, match="no ANN branch"):
        checkpoint_to_onnx(bptt_ckpt)


@pytest.mark.parametrize("arch,shape", [("cnn", (1, 28, 28)), ("resnet17", (3, 32, 32))])
def test_channels_last_bptt_computes_the_same_network(arch, shape, tmp_path):
    """The CPU default lays BPTT's convolutions out NHWC: same spikes, logits and gradients
    as NCHW (up to float summation order), parameters really channels-last, and the
    checkpointed tensors plain contiguous."""
    from spikebridge.models.methods.snn2ann import make_model
    torch.manual_seed(0)
    cfg = TrainConfig(method="bptt", arch=arch, timesteps=3, channels_last=False)
    a = make_model(cfg, shape, 10, torch.device("cpu"))
    b = make_model(TrainConfig(method="bptt", arch=arch, timesteps=3), shape, 10, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    convs = [p for p in b.parameters() if p.dim() == 4]
    assert b.channels_last and not a.channels_last and convs
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # (a 1-channel kernel is both layouts at once)
    x = torch.rand(4, *shape) * 2
    (la, ca), (lb, cb) = a(x), b(x)
    assert torch.allclose(la, lb, atol=1e-4)
    agree = sum(int((p == q).sum()) for p, q in zip(ca, cb)) / sum(p.numel() for p in ca)
    assert agree > 0.999 and sum(float(c.sum()) for c in ca) > 0
    la.square().sum().backward()
    lb.square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-3, rtol=1e-3), n
    from spikebridge.models.checkpoint import load_tensors, save_checkpoint
    save_checkpoint(tmp_path, b.state_dict(), {"arch": arch})
    t = load_tensors(tmp_path)
    assert all(np.array_equal(t[k], v.detach().numpy()) for k, v in b.state_dict().items() if k in t)
    assert any(v.ndim == 4 for v in t.values())
