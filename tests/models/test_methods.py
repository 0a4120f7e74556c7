"""Defining properties of the qcfs, parallel, bridge and lasnn methods, on small tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikebridge.exporters.nir_export import to_nir
from spikebridge.models.deployed import from_layers
from spikebridge.models.methods import common as C
from spikebridge.models.methods import bridge as B
from spikebridge.models.methods import lasnn as LA
from spikebridge.models.methods import parallel as P
from spikebridge.models.methods import qcfs as Q

MLP = [{"name": "flatten", "type": "flatten"},
       {"name": "fc1", "type": "linear", "out_features": 12, "bn": True, "neuron": True},
       {"name": "classifier", "type": "linear", "out_features": 5, "bn": False, "neuron": False}]
CNN = [{"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
        "bn": True, "neuron": True},
       {"name": "conv2", "type": "conv", "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1,
        "bn": True, "neuron": True},
       {"name": "flatten", "type": "flatten"},
       {"name": "fc1", "type": "linear", "out_features": 10, "bn": True, "neuron": True},
       {"name": "classifier", "type": "linear", "out_features": 3, "bn": False, "neuron": False}]
SHAPE = (1, 6, 6)


def _randomise_bn(model, gen):
    with torch.no_grad():
        for blk in model.layers.values():
            if blk.bn is not None:
                n = blk.bn.num_features
                blk.bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                blk.bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                blk.bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                blk.bn.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model.eval()


def _away_from_ties(v, step):
    """True where v / step is not within 1e-6 of a half-integer (floor ties)."""
    f = (v / step) % 1.0
    return (f - 0.5).abs() > 1e-6


# ---- QCFS ----------------------------------------------------------------------------

def test_qcfs_activation_formula_and_straight_through_gradient():
    lam, L = torch.tensor(2.0, requires_grad=True), 4
    z = torch.linspace(-1, 3, 41, dtype=torch.float32).requires_grad_(True)
    a = Q.qcfs(z, lam, L)
    ref = lam.detach() * torch.clamp(torch.floor(z.detach() * L / lam.detach() + 0.5) / L, 0, 1)
    assert torch.allclose(a.detach(), ref)
    a.sum().backward()
    inside = (z.detach() >= 0) & (z.detach() <= 2.0)
    assert torch.all(z.grad[inside] == 1) and torch.all(z.grad[~inside] == 0)
    assert lam.grad is not None


@pytest.mark.parametrize("L", [1, 2, 4, 8])
def test_qcfs_converted_snn_with_T_equal_L_equals_ann_exactly(L):
    """Constant input (direct encoding) into an IF layer with subtract reset, v(0) = theta/2,
    '>=' and spikes of theta: its rate over T = L steps is the QCFS activation, so the
    logits (an affine map of the rates) equal the ANN's."""
    gen = torch.Generator().manual_seed(L)
    model = _randomise_bn(Q.QCFSNet(MLP, SHAPE, L), gen).double()
    with torch.no_grad():
        model.lam["fc1"].fill_(1.7)
    x = torch.rand(64, *SHAPE, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        z = model.layers["fc1"](x.flatten(1))
        keep = _away_from_ties(z, 1.7 / L).all(1)
        ann = model.ann(x[keep])
    snn, _ = C.run_deployed(Q.deployed(model), x[keep], L)
    assert keep.sum() > 10
    assert torch.equal(snn.argmax(1), ann.argmax(1))
    np.testing.assert_allclose(snn.numpy(), ann.numpy(), rtol=0, atol=1e-9)


# ---- parallel ------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 3, 4, 8])
def test_window_neuron_rate_equals_qcfs_with_L_equal_T_and_spikes_form_a_block(T):
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(T, 32, 7, generator=gen, dtype=torch.float64) * 2
    theta = 1.3
    keep = _away_from_ties(x.mean(0), theta / T)
    out = P.window_neuron(x, theta)
    rate = out.mean(0)
    ref = Q.qcfs(x.mean(0), torch.tensor(theta, dtype=torch.float64), T)
    k = (out != 0).sum(0).double()
    k_ref = torch.clamp(torch.floor(T * x.mean(0) / theta + 0.5), 0, T)
    assert torch.equal(k[keep], k_ref[keep])  # the spike count is exactly QCFS's level
    assert torch.allclose(rate[keep], ref[keep], rtol=0, atol=1e-12)
    assert torch.all(out[1:] <= out[:-1])  # ordered block: spikes first, then silence
    assert set(torch.unique(out).tolist()) <= {0.0, theta}


def test_parallel_network_equals_its_proxy_ann_and_sequential_if_is_exported():
    T = 4
    gen = torch.Generator().manual_seed(1)
    net = _randomise_bn(P.ParallelNet(CNN, SHAPE, T), gen).double()
    with torch.no_grad():
        for blk in net.neuron_blocks():
            c = blk.out_shape[0]
            net.cal(blk, "theta").copy_(torch.rand(c, generator=gen) + 0.5)
            net.cal(blk, "phi").copy_(torch.rand(c, generator=gen))
            net.cal(blk, "psi").copy_(torch.randn(c, generator=gen) * 0.1)
    x = torch.rand(16, *SHAPE, generator=gen, dtype=torch.float64)
    par, _ = P.run_parallel(P.deployed(net, "PAR"), x, T)
    with torch.no_grad():
        proxy = net.proxy(x)
    np.testing.assert_allclose(par.numpy(), proxy.numpy(), rtol=0, atol=1e-9)
    layers = P.deployed(net, "IF")
    n = layers[0]["neuron"]
    assert n["reset"] == "subtract" and n["test"] == "ge"
    assert torch.allclose(n["v_init"], n["threshold"] * n["phi"])


def test_da_qcfs_calibration_is_identity_for_a_qcfs_source_with_L_equal_T():
    T = 4
    gen = torch.Generator().manual_seed(2)
    src = _randomise_bn(Q.QCFSNet(CNN, SHAPE, T), gen)
    with torch.no_grad():
        for p in src.lam.values():
            p.fill_(1.0)
    x = torch.rand(40, *SHAPE, generator=gen)
    net = P.convert(src, src.act, "qcfs", x, T, batch_size=8)
    for blk in net.neuron_blocks():
        assert torch.allclose(net.cal(blk, "psi"), torch.zeros(1), atol=1e-6)
        assert torch.allclose(net.cal(blk, "phi"), torch.full((1,), 0.5), atol=1e-6)
        assert torch.allclose(net.cal(blk, "theta"), torch.ones(1))
    with torch.no_grad():
        assert torch.allclose(net.proxy(x), src.ann(x), atol=1e-5)


def test_training_free_path_sets_per_channel_max_thresholds_and_calibration_reduces_the_mean_error():
    T = 2
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    src = _randomise_bn(C.Stack(CNN, SHAPE), gen)
    x = torch.rand(256, *SHAPE, generator=gen)
    net = P.convert(src, C.relu_act, "relu", x, T, batch_size=32)
    first = net.neuron_blocks()[0]
    with torch.no_grad():
        _, feats = src(x, C.relu_act, record=True)
        mx = feats[0].transpose(0, 1).reshape(feats[0].shape[1], -1).amax(1).clamp_min(1e-3)
        assert torch.allclose(net.cal(first, "theta"), mx)
        z = first(x)
        err_cal = P._chan_mean(feats[0] - net.proxy_act(0, first, z)).abs().sum()
        err_raw = P._chan_mean(feats[0] - net.proxy_act(0, first, z, phi=torch.full_like(mx, 0.5))).abs().sum()
    assert torch.allclose(net.cal(first, "psi"), torch.zeros(1), atol=1e-6)  # same input: no bias error
    assert err_cal < err_raw


# ---- bridge --------------------------------------------------------------------------

@pytest.mark.parametrize("E", [1, 2, 5, 30])
def test_bridge_activation_anneals_to_the_step_function_at_the_last_epoch(E):
    a0, b0 = B.sharpen_schedule(0, E)
    if E > 1:
        assert (a0, b0) == (0.0, 1.0)  # first epoch: clip(u, 0, 1)
        widths = [b - a for a, b in (B.sharpen_schedule(e, E) for e in range(E))]
        assert all(w1 >= w2 for w1, w2 in zip(widths, widths[1:]))
    u = torch.linspace(-1, 2, 301, dtype=torch.float64)
    a, b = B.sharpen_schedule(E - 1, E)
    f = B.SharpReLU.apply(u, a, b)
    assert torch.equal(f, (u > 0.5).double())


def test_bridge_last_epoch_ann_is_the_T1_lif_snn_and_deploys_exactly():
    gen = torch.Generator().manual_seed(4)
    ann = _randomise_bn(C.Stack(CNN, SHAPE, bn_init=0.5), gen)
    snn = C.SpikingStack(CNN, SHAPE, B.DECAY, B.THRESHOLD)
    snn.load_state_dict(ann.state_dict())
    snn.eval()
    x = torch.rand(16, *SHAPE, generator=gen)
    with torch.no_grad():
        ref = ann(x, B.sharp_act(*B.sharpen_schedule(9, 10)))
        out = snn.run(x, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    for T in (1, 3):
        with torch.no_grad():
            out = snn.run(x, T)
        dep, _ = C.run_deployed(C.lif_deployed(snn, B.DECAY, B.THRESHOLD), x, T)
        assert torch.allclose(dep.float(), out, atol=1e-4)


# ---- lasnn ---------------------------------------------------------------------------

def test_lasnn_distillation_terms_are_zero_for_identical_logits_and_maps():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 10, generator=gen)
    maps = [torch.rand(8, 4, 5, 5, generator=gen), torch.rand(8, 6, 3, 3, generator=gen), torch.rand(8, 7)]
    y = torch.randint(0, 10, (8,), generator=gen)
    total, parts = LA.lasnn_loss(logits, logits.clone(), y, maps, [m * 3.0 for m in maps])
    assert abs(float(parts["kd"])) < 1e-6
    assert abs(float(parts["at"])) < 1e-6  # attention maps are normalised: scale does not matter
    assert torch.allclose(total, parts["ce"], atol=1e-6)
    _, parts2 = LA.lasnn_loss(logits, logits.flip(1), y, maps, [m.flip(-1) for m in maps])
    assert float(parts2["kd"]) > 0 and float(parts2["at"]) > 0


def test_lasnn_attention_matches_spatial_sizes():
    s = torch.rand(2, 3, 4, 4)
    t = s.repeat_interleave(2, -1).repeat_interleave(2, -2)  # teacher at twice the resolution
    assert float(LA.attention_loss([s], [t])) < 1e-6


# ---- NIR export == torch deployed, through eventsim ----------------------------------

@pytest.mark.parametrize("kind", ["qcfs", "parallel", "lif"])
def test_exported_graph_runs_in_eventsim_like_the_torch_deployed_network(kind):
    from spikebridge.hardware.eventsim import simulate
    from spikebridge.hardware.graph import analyse

    T = 3
    gen = torch.Generator().manual_seed(6)
    if kind == "qcfs":
        layers = Q.deployed(_randomise_bn(Q.QCFSNet(CNN, SHAPE, 2), gen))
    elif kind == "parallel":
        net = _randomise_bn(P.ParallelNet(CNN, SHAPE, T), gen)
        with torch.no_grad():
            for blk in net.neuron_blocks():
                c = blk.out_shape[0]
                net.cal(blk, "theta").copy_(torch.rand(c, generator=gen) + 0.2)
                net.cal(blk, "phi").copy_(torch.rand(c, generator=gen))
        layers = P.deployed(net, "IF")
    else:
        layers = C.lif_deployed(_randomise_bn(C.SpikingStack(CNN, SHAPE), gen), B.DECAY, B.THRESHOLD)
    meta = {"timesteps": T, "layers": CNN, "input_shape": list(SHAPE), "num_classes": 3, "method": kind,
            "arch": "test"}
    graph = to_nir(from_layers(layers, meta))
    x = torch.rand(12, *SHAPE, generator=gen, dtype=torch.float64) * 2
    ref, _ = C.run_deployed(layers, x, T)
    tr = simulate(graph, np.broadcast_to(x.numpy()[None], (T, *x.shape)), info=analyse(graph))
    out = tr.outputs["output"].sum(0)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)
