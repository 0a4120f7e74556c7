"""SNN2ANN semantics: mapping units, branch equality, ATA, BN folding, training, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spikebridge.base.errors import CheckpointError
from spikebridge.models.architectures import build_spec, infer_shapes
from spikebridge.models.checkpoint import build_model, load_checkpoint, read_meta
from spikebridge.models.datasets import load_dataset, parse_idx
from spikebridge.models.neurons import NeuronConfig, if_step, run_if
from spikebridge.models.snn2ann import ATA_STEP, ReSU, SNN2ANNNet, STSU
from tests._trained import trained_checkpoint


def _net(arch="cnn", T=4, shape=(1, 8, 8)):
    torch.manual_seed(0)
    net = SNN2ANNNet(build_spec(arch, shape, 10), shape, T)
    # give BN non-trivial running statistics so folding is exercised
    for layer in net.layers.values():
        if layer.bn is not None:
            n = layer.bn.num_features
            layer.bn.running_mean.uniform_(-0.5, 0.5)
            layer.bn.running_var.uniform_(0.5, 2.0)
            layer.bn.weight.data.uniform_(0.5, 1.5)
            layer.bn.bias.data.uniform_(-0.2, 0.2)
            assert n > 0
    return net


def test_if_step_hard_and_soft_reset_and_ge():
    x = torch.tensor([0.6, 0.6, 1.0])
    v = torch.zeros(3)
    s, v = if_step(x, v, torch.tensor([1.0, 0.5, 1.0]))
    assert s.tolist() == [0, 1, 0] and v.tolist() == pytest.approx([0.6, 0.0, 1.0])
    s, v2 = if_step(x, torch.tensor([0.6, 0.0, 1.0]), 1.0, NeuronConfig(reset="subtract"))
    assert s.tolist() == [1, 0, 1] and v2.tolist() == pytest.approx([0.2, 0.6, 1.0])
    s, _ = if_step(torch.tensor([1.0]), torch.zeros(1), 1.0, NeuronConfig(threshold_test="ge"))
    assert s.tolist() == [1]
    s, _ = if_step(torch.tensor([1.0]), torch.zeros(1), 1.0, NeuronConfig(threshold_test="gt"))
    assert s.tolist() == [0]


def test_stsu_forward_is_count_backward_identity_to_relu_dropout():
    """h = SMU(ReLU(Dropout(z)), n): forward the count (ReSU: where r > 0), backward
    identity to r, so dh/dz is what autograd gives for ReLU(z * mask)."""
    z = torch.tensor([-1.0, 0.3, 2.5, 0.7])
    mask = torch.tensor([2.0, 2.0, 2.0, 0.0])  # inverted dropout, p = 1/2; the last one dropped
    n = torch.tensor([1.0, 0.0, 3.0, 2.0])
    zr = z.clone().requires_grad_()
    (torch.relu(zr * mask) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    gate = (z > 0).float() * mask
    for unit, want in ((STSU, [1.0, 0.0, 3.0, 2.0]), (ReSU, [0.0, 0.0, 3.0, 0.0])):
        zz = z.clone().requires_grad_()
        h = unit.apply(zz, n, gate)
        assert h.tolist() == want
        (h * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        assert zz.grad.tolist() == zr.grad.tolist() == [0.0, 4.0, 6.0, 0.0]


def test_keep_mask_is_inverted_dropout_and_seeded():
    from spikebridge.models.snn2ann import keep_mask
    like = torch.empty(200_000)
    for p in (0.5, 0.2, 0.25):
        torch.manual_seed(3)
        m = keep_mask(like, p)
        assert torch.unique(m).tolist() == pytest.approx([0.0, 1 / (1 - p)])
        assert abs(float((m > 0).float().mean()) - (1 - p)) < 0.005  # 200k draws: sd ~0.001
        torch.manual_seed(3)
        assert torch.equal(m, keep_mask(like, p))  # torch's seed decides the mask
    a, b = keep_mask(like, 0.5), keep_mask(like, 0.5)
    assert not torch.equal(a, b)
    # neighbouring bits are independent (no byte-level pattern): P(both kept) ~ 1/4
    k = (a > 0).float()
    assert abs(float((k[:-1] * k[1:]).mean()) - 0.25) < 0.01


def test_stsu_counts_equal_snn_spike_counts_and_logits_match():
    net = _net().eval()
    x = torch.rand(5, 1, 8, 8)
    snn_logits, counts, spikes = net.snn_forward(x, record=True)
    for c, s in zip(counts, spikes):
        assert torch.equal(c, s.sum(0))
        assert c.max() <= net.timesteps and c.min() >= 0
    ann_logits, noisy = net.ann_forward(x, counts)
    assert torch.allclose(ann_logits, snn_logits, atol=1e-5)  # the forward pass is the SNN's
    assert len(noisy) == len(counts)


def test_bn_folding_total_current_equals_ann_bn_output():
    """Sum over T of the SNN current (folded BN, bias/T) == BN_eval(op(h)) with h = counts (T*x first)."""
    net = _net().eval()
    T = net.timesteps
    x = torch.rand(3, 1, 8, 8)
    layer = net.layers["conv1"]
    per_step = layer.snn_current(x, T)
    with torch.no_grad():
        ann = layer.ann(x * T)
    assert torch.allclose(per_step * T, ann, atol=1e-4)
    # a deeper layer: spikes in, counts on the ANN side
    s = (torch.rand(T, 3, 16, 8, 8) > 0.7).float()
    l2 = net.layers["conv2"]
    total = l2.snn_current(s.flatten(0, 1), T).view(T, 3, 32, 4, 4).sum(0)
    with torch.no_grad():
        ann2 = l2.ann(s.sum(0))
    assert torch.allclose(total, ann2, atol=1e-4)


def test_ata_raises_thresholds_only_above_ten_percent():
    net = _net()
    before = [l.threshold.clone() for l in net.layers.values() if l.neuron]
    rhos = net.adapt_thresholds([0.05, 0.1, 0.11])
    after = [l.threshold for l in net.layers.values() if l.neuron]
    assert rhos == pytest.approx([0.05, 0.1, 0.11])
    assert torch.equal(after[0], before[0])
    assert torch.equal(after[1], before[1])  # exactly 0.1 is not above 0.1
    assert torch.allclose(after[2], before[2] + ATA_STEP)


def test_noisy_fraction_counts_spikes_where_relu_is_zero():
    net = _net().eval()
    x = torch.rand(4, 1, 8, 8)
    _, counts = net.snn_forward(x)
    _, noisy = net.ann_forward(x, counts)
    layer = net.layers["conv1"]
    with torch.no_grad():
        r = torch.relu(layer.ann(x * net.timesteps))
    expect = ((counts[0] > 0) & (r <= 0)).float().mean()
    assert float(noisy[0]) == pytest.approx(float(expect))


def test_membrane_dropout_only_in_training():
    cur = torch.full((6, 2, 50), 0.3)
    a = run_if(cur, 1.0, membrane_dropout=0.5, training=False)
    b = run_if(cur, 1.0, membrane_dropout=0.5, training=False)
    assert torch.equal(a, b)
    torch.manual_seed(1)
    c = run_if(cur, 1.0, membrane_dropout=0.5, training=True)
    assert not torch.equal(a, c)


def test_shapes_of_architectures():
    assert infer_shapes(build_spec("cnn", (1, 8, 8), 10), (1, 8, 8))[-1][1] == (10,)
    assert infer_shapes(build_spec("cnn", (1, 28, 28), 10), (1, 28, 28))[2][1] == (64, 7, 7)
    assert infer_shapes(build_spec("mlp", (1, 8, 8), 10), (1, 8, 8))[1][0] == (64,)


def test_training_reaches_accuracy_and_checkpoint_round_trips():
    ckpt = trained_checkpoint()
    rows = [json.loads(l) for l in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert {"epoch", "loss", "ann_test_accuracy", "snn_test_accuracy", "seconds"} <= set(rows[-1])
    assert rows[-1]["snn_test_accuracy"] >= 0.90
    assert (ckpt / "curves.png").read_bytes()[:4] == b"\x89PNG"
    meta, tensors = load_checkpoint(ckpt)
    net = build_model(meta, tensors)
    x, y = load_dataset("digits", "test")
    logits, _ = net.snn_forward(torch.from_numpy(x))
    acc = float((logits.argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(rows[-1]["snn_test_accuracy"])


def test_same_seed_same_weights(tmp_path):
    from spikebridge.models.train import TrainConfig, train
    from spikebridge.models.checkpoint import load_tensors
    for d in ("a", "b"):
        train(TrainConfig(arch="mlp", epochs=2, seed=3, limit_train=256), tmp_path / d, progress=False)
    ta, tb = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    assert ta.keys() == tb.keys()
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_checkpoint_rejects_bad_model_json(tmp_path):
    ckpt = trained_checkpoint()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.safetensors").write_bytes((ckpt / "weights.safetensors").read_bytes())
    for text, rule in [("{", "not valid JSON"), ("[]", "top level"), ('{"format": "x"}', "missing field"),
                       (json.dumps({**json.loads((ckpt / "model.json").read_text()), "timesteps": float("nan")}),
                        "not valid JSON")]:
        (bad / "model.json").write_text(text)
        with pytest.raises(CheckpointError, match=rule):
            read_meta(bad)


def test_idx_parser_validates_header():
    good = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    assert parse_idx(good, "x").tolist() == [7, 8, 9]
    from spikebridge.base.errors import DatasetError
    for bad in (good[:3], bytes([0, 0, 9, 1]) + good[4:], good[:-1], bytes([0, 0, 8, 1, 255, 255, 255, 255])):
        with pytest.raises(DatasetError):
            parse_idx(bad, "x")


def test_fashion_mnist_loads_when_installed():
    import os
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Debian's dataset-fashion-mnist is not installed here")
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,) and set(np.unique(y)) == set(range(10))


_LBL_RES = [  # residual (identity, then projection) blocks, one first in the net (analog input), avg-pool
    {"name": "block0", "type": "resblock", "out_channels": 2, "stride": 1, "neuron": True},
    {"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
     "bn": True, "neuron": True},
    {"name": "block1", "type": "resblock", "out_channels": 4, "stride": 1, "neuron": True},
    {"name": "block2", "type": "resblock", "out_channels": 6, "stride": 2, "neuron": True},
    {"name": "pool", "type": "avgpool", "kernel_size": 2, "neuron": True},
    {"name": "flatten", "type": "flatten"},
    {"name": "classifier", "type": "linear", "out_features": 5, "bn": False, "neuron": False},
]
_LBL_MAXPOOL = [
    {"name": "conv1", "type": "conv", "out_channels": 6, "kernel_size": 3, "stride": 1, "padding": 1,
     "bn": True, "neuron": True, "maxpool": 2},
    {"name": "conv2", "type": "conv", "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
     "bn": True, "neuron": True, "maxpool": 2},
    {"name": "flatten", "type": "flatten"},
    {"name": "classifier", "type": "linear", "out_features": 5, "bn": False, "neuron": False},
]


@pytest.mark.parametrize("case", ["cnn8", "cnn28", "mlp", "res", "maxpool"])
def test_layer_by_layer_snn_equals_step_by_step(case):
    """The layer-by-layer SNN branch (default) and the step-by-step reference give bit-identical
    spikes, counts, logits, ANN gradients and thresholds after ATA, with membrane and ANN dropout
    on (same torch seed -> same masks), over two training iterations, and in eval."""
    import copy

    if case in ("res", "maxpool"):
        shape = (2, 8, 8)
        spec = _LBL_RES if case == "res" else _LBL_MAXPOOL
    else:
        shape = {"cnn8": (1, 8, 8), "cnn28": (1, 28, 28), "mlp": (1, 8, 8)}[case]
        spec = build_spec(case[:3], shape, 10)
    torch.manual_seed(0)
    base = SNN2ANNNet(spec, shape, 5, ann_dropout=0.2, membrane_dropout=0.5)
    g = torch.Generator().manual_seed(1)
    for m in base.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            # running mean below the batch's: the SNN fires where BN_train(z) <= 0 (noisy spikes)
            m.running_mean.copy_(torch.rand(n, generator=g) - 1.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 + 0.5)
    for _, unit in base.neuron_units():
        unit.threshold.mul_(0.3)  # plenty of spikes and some noisy ones, so ATA acts
    x = torch.rand(6, *shape, generator=g) * 2
    y = torch.randint(0, 5, (6,), generator=g)
    # float64: the two forms run the same convolution over B or T*B samples, which a CPU's
    # kernels (AVX2, AVX-512, another algorithm per batch size) may sum in another order; in
    # float64 that moves a current by ~1e-16 of its size, so no membrane near a U[0,1)
    # threshold flips a spike, and every other tensor follows from the spikes
    base, x = base.double(), x.double()
    runs = []
    for stepwise in (False, True):
        net = copy.deepcopy(base)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        torch.manual_seed(7)
        out = []
        for _ in range(2):
            net.train()
            logits, counts = net.snn_forward(x, stepwise=stepwise)  # layer by layer: the reused buffers
            ann_logits, noisy = net.ann_forward(x, counts)
            loss = torch.nn.functional.cross_entropy(ann_logits, y)
            opt.zero_grad()
            loss.backward()
            grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
            opt.step()
            rhos = net.adapt_thresholds(noisy)
            out.append((logits, counts, ann_logits, grads, rhos,
                        [u.threshold.clone() for _, u in net.neuron_units()]))
        net.eval()
        out.append(net.snn_forward(x, record=True, stepwise=stepwise))
        out.append(net.snn_forward(x, stepwise=stepwise))
        runs.append(out)
    flat = [[], []]
    for i, run in enumerate(runs):
        def walk(o):
            if isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)
            else:
                flat[i].append(o)
        walk(run)
    assert len(flat[0]) == len(flat[1])
    for a, b in zip(*flat):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and torch.equal(a, b)
        else:
            assert a == b
    # not vacuous: spikes happened, dropout acted, ATA raised some layer
    assert any(float(c.sum()) > 0 for c in runs[0][0][1])
    rhos = [r for it in runs[0][:2] for r in it[4]]
    assert any(r > 0 for r in rhos)  # noisy spikes (compared above) are there
    if case != "maxpool":  # (max-pool on the currents gives few noisy spikes here)
        assert any(r > 0.1 for r in rhos), rhos  # ATA raised thresholds (compared above)


def test_snn_forward_picks_layer_by_layer_for_small_layers(monkeypatch):
    from spikebridge.models import snn2ann

    net = _net(T=4).eval()  # cnn on 8x8: largest layer 16 x 8 x 8 = 1024 neurons
    x = torch.rand(3, 1, 8, 8)
    ref = net.snn_forward(x, stepwise=True)
    calls = []
    orig = SNN2ANNNet._snn_steps
    monkeypatch.setattr(SNN2ANNNet, "_snn_steps", lambda self, *a: calls.append(1) or orig(self, *a))
    out = net.snn_forward(x)
    assert calls == [] and net.layerwise_fits(3)
    monkeypatch.setattr(snn2ann, "LAYERWISE_MAX_ELEMENTS", 4 * 3 * 1024 - 1)
    assert not net.layerwise_fits(3)
    out2 = net.snn_forward(x)
    assert calls == [1]
    for a, b in zip(ref[1] + [ref[0]], out[1] + [out[0]]):
        assert torch.equal(a, b)
    for a, b in zip(out[1] + [out[0]], out2[1] + [out2[0]]):
        assert torch.equal(a, b)
