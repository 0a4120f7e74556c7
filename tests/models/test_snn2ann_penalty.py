"""SNN2ANN's --spike-penalty (the spikes-for-accuracy knob), ATA's noisy test after the ANN
dropout (as the released code), the ATA-off ablation, and the study script's run names."""
from __future__ import annotations

import json

import pytest
import torch

from spikebridge.base.errors import InputError
from spikebridge.models.architectures import build_spec
from spikebridge.models.datasets import load_dataset
from spikebridge.models.methods.snn2ann import train_step
from spikebridge.models.snn2ann import ATA_STEP, SNN2ANNNet
from spikebridge.models.train import TrainConfig, train
from spikebridge.toolchain.cli import main as cli_main

SHAPE = (1, 8, 8)


def _digits(n=512):
    x, y = load_dataset("digits", "train")
    return torch.from_numpy(x[:n]), torch.from_numpy(y[:n])


def _short_run(penalty: float | None, steps: int = 20):
    """``steps`` Adam steps (lr 1e-2) on digits, seeded; then the eval SNN's spikes per sample
    and accuracy on 64 held-out images."""
    x, y = _digits()
    torch.manual_seed(0)
    kw = {} if penalty is None else {"spike_penalty": penalty}
    net = SNN2ANNNet(build_spec("cnn", SHAPE, 10), SHAPE, 4, **kw)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for i in range(steps):
        b = slice((i * 64) % 448, (i * 64) % 448 + 64)
        train_step(net, opt, x[b], y[b])
    net.eval()
    with torch.no_grad():
        logits, counts = net.snn_forward(x[448:])
    return net, float(sum(c.sum() for c in counts)) / 64, float((logits.argmax(1) == y[448:]).float().mean())


def test_spike_penalty_reduces_spikes():
    _, off, _ = _short_run(None)
    _, on, _ = _short_run(10.0)
    assert off > 0
    assert on < 0.8 * off  # measured: 572 vs 1229 spikes per sample


def test_spike_penalty_zero_is_the_default_bit_for_bit():
    a, sa, _ = _short_run(None)
    b, sb, _ = _short_run(0.0)
    assert sa == sb
    for (k, v), (k2, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, w), k


def test_activity_penalty_is_lambda_times_the_firing_rate():
    torch.manual_seed(1)
    net = SNN2ANNNet(build_spec("cnn", SHAPE, 10), SHAPE, 4, spike_penalty=3.0)
    x, _ = _digits(16)
    _, counts = net.snn_forward(x)
    act = []
    net.ann_forward(x, counts, act)
    neurons = sum(u.threshold.numel() for _, u in net.neuron_units())
    rate = float(sum(c.sum() for c in counts)) / (16 * 4 * neurons)  # STSU: h == n in the forward pass
    assert rate > 0
    assert float(net.activity_penalty(act, 16).detach()) == pytest.approx(3.0 * rate, rel=1e-5)


def test_train_records_the_penalty_and_zero_matches_the_default(tmp_path):
    base = dict(dataset="digits", arch="cnn", timesteps=2, epochs=1, batch_size=64, limit_train=128, limit_test=64,
                device="cpu")
    train(TrainConfig(**base), tmp_path / "off", progress=False)
    train(TrainConfig(**base, extra={"spike_penalty": 0.0}), tmp_path / "zero", progress=False)
    assert (tmp_path / "off" / "weights.safetensors").read_bytes() == \
        (tmp_path / "zero" / "weights.safetensors").read_bytes()
    train(TrainConfig(**base, extra={"spike_penalty": 5.0}), tmp_path / "on", progress=False)
    meta = json.loads((tmp_path / "on" / "model.json").read_text())
    assert meta["spike_penalty"] == 5.0 and meta["config"]["extra"]["spike_penalty"] == 5.0
    assert "spike_penalty" not in json.loads((tmp_path / "off" / "model.json").read_text())
    assert (tmp_path / "on" / "weights.safetensors").read_bytes() != \
        (tmp_path / "off" / "weights.safetensors").read_bytes()
    # a resume with another penalty is refused
    with pytest.raises(InputError, match="spike-penalty: 5.0 there, 1.0 now"):
        train(TrainConfig(**{**base, "epochs": 2}, extra={"spike_penalty": 1.0}), tmp_path / "on",
              progress=False, resume=True)


@pytest.mark.parametrize("args, msg", [
    (["--spike-penalty", "-1"], "finite number >= 0"),
    (["--spike-penalty", "nan"], "finite number >= 0"),
    (["--method", "bptt", "--spike-penalty", "1"], "snn2ann only"),
])
def test_cli_refuses_bad_penalty(tmp_path, capsys, args, msg):
    out = tmp_path / "run"
    rc = cli_main(["train", "--dataset", "digits", "--epochs", "1", "--limit-train", "64", "--out", str(out), *args])
    assert rc == 3
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_names_the_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    assert "--spike-penalty LAMBDA" in capsys.readouterr().out


def test_ata_noisy_test_is_after_the_ann_dropout():
    """Released code: adjust_Vth(relu(dropout(z)), n): a unit the ANN dropout zeroed where the SNN
    fired is noisy. With n > 0 everywhere and dropout p, rho_after = 1 - (1 - p)(1 - rho_before)."""
    x, _ = _digits(64)
    torch.manual_seed(2)
    after = SNN2ANNNet(build_spec("cnn", SHAPE, 10), SHAPE, 4, ann_dropout=0.5)
    before = SNN2ANNNet(build_spec("cnn", SHAPE, 10), SHAPE, 4, ann_dropout=0.5, ata_noisy="before_dropout")
    before.load_state_dict(after.state_dict())
    counts = [torch.ones((64, *u.out_shape)) for _, u in after.neuron_units()]
    after.train()
    before.train()
    _, rho_a = after.ann_forward(x, counts)
    _, rho_b = before.ann_forward(x, counts)
    for a, b in zip(rho_a, rho_b):
        assert float(a) == pytest.approx(1 - 0.5 * (1 - float(b)), abs=0.05)
        assert float(a) > float(b)
    with torch.no_grad():  # the first layer's ReLU(z) by hand: rho_before is the fraction of z <= 0
        z = before.layers["conv1"].ann(x * 4)
    assert float(rho_b[0]) == pytest.approx(float((z <= 0).float().mean()), abs=1e-6)


def test_ata_off_keeps_thresholds():
    net = SNN2ANNNet(build_spec("cnn", SHAPE, 10), SHAPE, 4, ata=False)
    th = [u.threshold.clone() for _, u in net.neuron_units()]
    assert net.adapt_thresholds([0.5] * len(th)) == [0.5] * len(th)
    assert all(torch.equal(a, u.threshold) for a, (_, u) in zip(th, net.neuron_units()))
    net.ata = True
    net.adapt_thresholds([0.5] * len(th))
    assert all(torch.allclose(a + ATA_STEP, u.threshold) for a, (_, u) in zip(th, net.neuron_units()))


def test_study_run_names():
    from spikebridge.benchmarks.snn2ann_study import config_of, summarize

    assert config_of("snn2ann-e20") == ({"method": "snn2ann", "timesteps": 5}, 20)
    assert config_of("bptt-lif-e5") == ({"method": "bptt", "neuron": "lif", "timesteps": 8}, 5)
    assert config_of("snn2ann-pen0.5-e50")[0]["extra"] == {"spike_penalty": 0.5}
    for bad in ("snn2ann", "snn2ann-e0", "nope-e5"):
        with pytest.raises(ValueError):
            config_of(bad)
    res = {"snn2ann-e5": {"method": "snn2ann", "epochs": 5, "spikes_per_sample": 50.0, "snn_test_accuracy": 0.8},
           "bptt-lif-e5": {"method": "bptt", "epochs": 5, "spikes_per_sample": 100.0, "snn_test_accuracy": 0.81}}
    s = summarize(res)["e5"]["snn2ann"]["bptt-lif"]
    assert s["spike_ratio"] == 0.5 and s["accuracy_diff_points"] == pytest.approx(-1.0)


def test_resblock_output_has_no_ann_dropout():
    """Released BasicBlock: dropout after conv_a (and the stem), none on the block's output. With
    n > 0 everywhere, a dropped unit is noisy: conv1 and block.a see the dropout, block outputs not."""
    shape = (2, 8, 8)
    spec = [{"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
             "bn": True, "neuron": True},
            {"name": "block1", "type": "resblock", "out_channels": 4, "stride": 1, "neuron": True},
            {"name": "flatten", "type": "flatten"},
            {"name": "classifier", "type": "linear", "out_features": 5, "bn": False, "neuron": False}]
    torch.manual_seed(0)
    x = torch.rand(32, *shape)
    nets = [SNN2ANNNet(spec, shape, 4, ann_dropout=0.5, ata_noisy=m) for m in ("after_dropout", "before_dropout")]
    nets[1].load_state_dict(nets[0].state_dict())
    counts = [torch.ones((32, *u.out_shape)) for _, u in nets[0].neuron_units()]  # conv1, block1.a, block1
    rho_a, rho_b = ([float(r) for r in net.train().ann_forward(x, counts)[1]] for net in nets)
    assert rho_a[0] > rho_b[0] + 0.1 and rho_a[1] > rho_b[1] + 0.1
    assert rho_a[2] == rho_b[2]
