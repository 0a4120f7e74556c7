"""Skip connections (paths of different synaptic depth into one neuron) and CubaLIF on Lava.

The lowering delays the shallower source's connection by the depth difference
(DelayDense / DelaySparse), so every input of a population arrives aligned; a CubaLIF is
a LIF with a current decay du = dt/tau_syn (its synaptic bias comes through a constant
source, since it must pass the current filter). Checked here:

* fixed point: Lava fixed_pt == the `loihi-fixed` integer model bit for bit (spikes of
  every population, final u and v, the analog readout) on residual graphs with an
  identity shortcut (a direct neuron -> neuron edge), a 1x1 stride-2 projection shortcut,
  and a graded Input -> population skip over 3 layers, with IF, LIF and CubaLIF;
* float: Lava floating_pt vs the `lava-float` profile (raw timing, which models the same
  delays): outputs within 1e-9, spikes equal (test_lava_float.py's tolerance rule);
* a ResNet checkpoint (identity and projection blocks, the real model classes, saved and
  exported like `spikebridge export`) through Lava fixed point, bit-exact.
"""
from __future__ import annotations

import nir
import numpy as np
import pytest

from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.loihi.fixedpoint import quantize
from spikebridge.hardware.lava import run_lava
from spikebridge.hardware.loihi import fixed_trace
from spikebridge.hardware.lava.describe import describe
from spikebridge.hardware.loihi.plan import BIAS_SOURCE, lower

TOL = 1e-9


def _neuron(rng, shape, kind):
    th = rng.uniform(0.5, 1.5, size=shape)
    z = np.zeros(shape)
    if kind == "IF":
        return nir.IF(r=np.ones(shape), v_threshold=th, v_reset=z)
    if kind == "LIF":
        return nir.LIF(tau=np.full(shape, 4.0), r=np.full(shape, 1.5), v_leak=np.full(shape, 0.05),
                       v_threshold=th, v_reset=z)
    return nir.CubaLIF(tau_syn=np.full(shape, 3.0), tau_mem=np.full(shape, 5.0), r=np.full(shape, 2.0),
                       v_leak=np.full(shape, 0.1), v_threshold=th * 0.3, v_reset=z,
                       w_in=rng.uniform(0.8, 1.2, size=shape))


def _conv(rng, cin, cout, hw, k=3, s=1, p=1, scale=0.6):
    return nir.Conv2d(input_shape=hw, weight=rng.normal(size=(cout, cin, k, k)) * scale, stride=s, padding=p,
                      dilation=1, groups=1, bias=rng.normal(size=cout) * 0.05)


def residual_graph(rng, projection: bool, kinds=("IF", "IF", "IF", "IF")):
    """stem conv -> n0; block n0 -> a -> na -> b -> nb plus the shortcut n0 -> nb (a direct
    edge, or a 1x1 stride-2 conv); nb -> fc -> n1 plus a graded skip Input -> skip_in -> n1
    (3 layers shallower); n1 -> readout (analog)."""
    C, H = 2, 6
    nodes = {"input": nir.Input(np.array([C, H, H]))}
    e = [("input", "stem")]
    nodes["stem"] = _conv(rng, C, 3, (H, H))
    nodes["n0"] = _neuron(rng, (3, H, H), kinds[0])
    e.append(("stem", "n0"))
    s, co = (2, 4) if projection else (1, 3)
    Ho = (H + 2 - 3) // s + 1
    nodes["a"] = _conv(rng, 3, co, (H, H), s=s)
    nodes["na"] = _neuron(rng, (co, Ho, Ho), kinds[1])
    nodes["b"] = _conv(rng, co, co, (Ho, Ho))
    nodes["nb"] = _neuron(rng, (co, Ho, Ho), kinds[2])
    e += [("n0", "a"), ("a", "na"), ("na", "b"), ("b", "nb")]
    if projection:
        nodes["short"] = _conv(rng, 3, co, (H, H), k=1, s=2, p=0, scale=1.0)
        e += [("n0", "short"), ("short", "nb")]
    else:
        e.append(("n0", "nb"))
    n = co * Ho * Ho
    nodes["flat"] = nir.Flatten(input_type={"input": np.array([co, Ho, Ho])}, start_dim=0, end_dim=-1)
    nodes["fc"] = nir.Affine(rng.normal(size=(8, n)) * 0.5, rng.normal(size=8) * 0.05)
    nodes["n1"] = _neuron(rng, (8,), kinds[3])
    e += [("nb", "flat"), ("flat", "fc"), ("fc", "n1")]
    nodes["flat_in"] = nir.Flatten(input_type={"input": np.array([C, H, H])}, start_dim=0, end_dim=-1)
    nodes["skip_in"] = nir.Affine(rng.normal(size=(8, C * H * H)) * 0.2, np.zeros(8))
    e += [("input", "flat_in"), ("flat_in", "skip_in"), ("skip_in", "n1")]
    nodes["readout"] = nir.Affine(rng.normal(size=(5, 8)), rng.normal(size=5))
    nodes["output"] = nir.Output(np.array([5]))
    e += [("n1", "readout"), ("readout", "output")]
    return nir.NIRGraph(nodes=nodes, edges=e, type_check=False)


GRAPHS = [(False, ("IF", "LIF", "CubaLIF", "IF")), (True, ("CubaLIF", "IF", "LIF", "CubaLIF"))]


def test_lowering_delays_the_shallower_paths():
    """numpy only: depths, delays, the CubaLIF's du and its constant bias source, the fixed
    plan and `inspect --lava`."""
    rng = np.random.default_rng(0)
    for projection, kinds in GRAPHS:
        g = residual_graph(rng, projection, kinds)
        plan = lower(g, 8)
        depth = {p["name"]: p["depth"] for p in plan.meta["populations"]}
        assert depth == {"n0": 1, "na": 2, "nb": 3, "n1": 4}
        delays = {(c["source"], c["target"]): c["delay"] for c in plan.meta["connections"]}
        assert delays[("n0", "nb")] == 1 and delays[("input", "n1")] == 3
        assert delays[("na", "nb")] == 0 and delays[("nb", "n1")] == 0
        du = {p["name"]: p["du"] for p in plan.meta["populations"]}
        for name, kind in zip(("n0", "na", "nb", "n1"), kinds):
            assert du[name] == (pytest.approx(1 / 3) if kind == "CubaLIF" else 1.0)
            has_one = (BIAS_SOURCE, name) in delays
            assert has_one == (kind == "CubaLIF")
        q = quantize(plan)
        qd = {p["name"]: p["du"] for p in q.meta["populations"]}
        assert qd["nb" if kinds[2] == "CubaLIF" else "n0"] == round(4096 / 3) - 1
        assert {(c["source"], c["target"]): c["delay"] for c in q.meta["connections"]} == delays
        text = describe(g, 8)
        assert "n0 via DelayDense(+1)" in text and "input via DelayDense(+3)" in text
        assert "skip connections delayed" in text and "CubaLIF current decay" in text


def test_inspect_lava_cli_shows_delays_and_current_decay(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "resnet.nir"
    nir.write(str(path), residual_graph(np.random.default_rng(0), True, ("IF", "IF", "CubaLIF", "IF")))
    r = subprocess.run([sys.executable, "-m", "spikebridge", "inspect", "--lava", str(path)],
                       cwd=str(Path(__file__).resolve().parents[2]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for text in ("n0 via DelayDense(+1)", "input via DelayDense(+3)", "const 1 (synaptic bias into the current)",
                 "skip connections delayed (DelayDense/DelaySparse): n0 +1 step(s)", "du err", "CubaLIF current decay"):
        assert text in r.stdout, text


def test_skip_longer_than_loihi_delays_is_refused_in_fixed_point():
    """DelayDense/DelaySparse fixed_pt hold 6-bit delays: a skip over 65 layers (64 extra
    steps) lowers for float but the fixed-point plan refuses it, naming the connection."""
    from spikebridge.base.errors import UnsupportedError

    n, L = 3, 65
    nodes = {"input": nir.Input(np.array([n]))}
    e, prev = [], "input"
    for i in range(L):
        nodes[f"fc{i}"] = nir.Affine(np.eye(n) * 2.0, np.zeros(n))
        nodes[f"n{i}"] = nir.IF(r=np.ones(n), v_threshold=np.ones(n), v_reset=np.zeros(n))
        e += [(prev, f"fc{i}"), (f"fc{i}", f"n{i}")]
        prev = f"n{i}"
    nodes["skip"] = nir.Affine(np.eye(n), np.zeros(n))
    nodes["output"] = nir.Output(np.array([n]))
    e += [("input", "skip"), ("skip", f"n{L - 1}"), (f"n{L - 1}", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=e, type_check=False)
    plan = lower(g, 4)
    assert max(c["delay"] for c in plan.meta["connections"]) == 64
    with pytest.raises(UnsupportedError, match=r"more than 63 steps .*input -> n64: 64"):
        quantize(plan)


def test_cuba_lif_lowering_refusals():
    rng = np.random.default_rng(1)
    g = residual_graph(rng, False, ("IF", "IF", "CubaLIF", "IF"))
    g.nodes["nb"].metadata = {"spikebridge": {"v_init": 0.3}}
    with pytest.raises(Exception, match="v_init on a CubaLIF"):
        lower(g, 4)
    g.nodes["nb"].metadata = {}
    g.nodes["nb"].tau_syn = np.full(np.shape(g.nodes["nb"].tau_syn), 0.5)  # dt/tau_syn = 2
    with pytest.raises(Exception, match="outside"):
        lower(g, 4)


@pytest.mark.lava
def test_residual_graphs_lava_fixed_bit_exact_and_float_within_tolerance():
    rng = np.random.default_rng(11)
    T, B = 12, 2
    totals = {"spikes": 0, "graphs": 0}
    for projection, kinds in GRAPHS:
        g = residual_graph(rng, projection, kinds)
        x = rng.uniform(0, 1, size=(T, B, 2, 6, 6))
        D = lower(g, T).meta["max_depth"]
        a = fixed_trace(g, x, window=T + D, record_state=True)
        b = run_lava(g, x, precision="fixed", window=T + D, record_state=True)
        assert b.meta["worker"]["chunks"][0]["delayed"] == 2  # n0 -> nb and input -> n1
        for n in a.spikes:
            np.testing.assert_array_equal(b.spikes[n], a.spikes[n], err_msg=f"{projection} {n}")
            assert a.spikes[n].any(), n
        np.testing.assert_array_equal(b.outputs["output"], a.outputs["output"])
        assert set(a.meta["final_state"]) == set(b.meta["final_state"]) and len(a.meta["final_state"]) == 8
        for k, v in a.meta["final_state"].items():
            np.testing.assert_array_equal(b.meta["final_state"][k], v, err_msg=k)
        totals["spikes"] += sum(int(s.sum()) for s in a.spikes.values())

        f = run_lava(g, x)
        xp = np.concatenate([x, np.zeros((D,) + x.shape[1:])])
        ref = simulate(g, xp, profile="lava-float")
        dl = f.meta["lava_delay_steps"]
        for n, s in f.spikes.items():
            np.testing.assert_array_equal(s, ref.spikes[n][dl[n]:dl[n] + T], err_msg=f"float {n}")
        np.testing.assert_allclose(f.outputs["output"], ref.outputs["output"][dl["output"]:dl["output"] + T],
                                   rtol=TOL, atol=TOL)
        # aligned, Lava float is the delay-free NIR reading of the graph (plain forward Euler)
        plain = simulate(g, x, profile="nir")
        for n in f.spikes:
            np.testing.assert_array_equal(f.spikes[n], plain.spikes[n], err_msg=f"aligned {n}")
        totals["graphs"] += 1
    assert totals["graphs"] == 2 and totals["spikes"] > 500
    print(totals)


@pytest.mark.lava
def test_sparse_and_delay_sparse_connections_bit_exact(monkeypatch):
    """Large sparse connections become Sparse / DelaySparse (a ResNet's identity shortcut at
    16x16x16 is 4096x4096 with 4096 nonzeros): forced here on the small residual graph by
    lowering the Dense size limit, Lava fixed_pt still equals the integer model bit for bit,
    and float matches the lava-float profile."""
    from spikebridge.hardware.loihi import runner

    monkeypatch.setattr(runner, "DENSE_MAX_ELEMENTS", 200)  # Lava's and the integer model's choice
    rng = np.random.default_rng(4)
    g = residual_graph(rng, False, ("IF", "CubaLIF", "LIF", "IF"))
    T, B = 10, 2
    x = rng.uniform(0, 1, size=(T, B, 2, 6, 6))
    D = lower(g, T).meta["max_depth"]
    a = fixed_trace(g, x, window=T + D, record_state=True)
    b = run_lava(g, x, precision="fixed", window=T + D, record_state=True)
    ch = b.meta["worker"]["chunks"][0]
    assert ch["sparse"] >= 2 and ch["delayed"] == 2, ch  # n0 -> nb (identity, 108x108) is DelaySparse
    for n in a.spikes:
        np.testing.assert_array_equal(b.spikes[n], a.spikes[n], err_msg=n)
    np.testing.assert_array_equal(b.outputs["output"], a.outputs["output"])
    for k, v in a.meta["final_state"].items():
        np.testing.assert_array_equal(b.meta["final_state"][k], v, err_msg=k)
    f = run_lava(g, x)
    ref = simulate(g, np.concatenate([x, np.zeros((D,) + x.shape[1:])]), profile="lava-float")
    dl = f.meta["lava_delay_steps"]
    for n, s in f.spikes.items():
        np.testing.assert_array_equal(s, ref.spikes[n][dl[n]:dl[n] + T], err_msg=f"float {n}")


def _tiny_resnet_checkpoint(tmp_path):
    """A ResNet in the layout of resnet17/18 (stem, an identity block, a projection block
    with stride 2, global average pool, classifier), small enough for Lava: random weights
    and BN statistics, saved with the real checkpoint writer."""
    import torch

    from spikebridge.models.architectures import infer_shapes
    from spikebridge.models.checkpoint import save_checkpoint
    from spikebridge.models.snn2ann import SNN2ANNNet

    torch.manual_seed(0)
    spec = [{"name": "conv1", "type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1,
             "bn": True, "neuron": True},
            {"name": "block1", "type": "resblock", "out_channels": 4, "stride": 1, "neuron": True},
            {"name": "block2", "type": "resblock", "out_channels": 6, "stride": 2, "neuron": True}]
    hw = infer_shapes(spec, (1, 8, 8))[-1][1][1]
    spec += [{"name": "gap", "type": "avgpool", "kernel_size": int(hw), "neuron": True},
             {"name": "flatten", "type": "flatten"},
             {"name": "classifier", "type": "linear", "out_features": 10, "bn": False, "neuron": False}]
    T = 6
    model = SNN2ANNNet(spec, (1, 8, 8), T)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.8, 1.6)
            if hasattr(mod, "threshold") and isinstance(mod.threshold, torch.Tensor):
                mod.threshold.uniform_(0.05, 0.3)
    meta = {"arch": "resnet-tiny", "method": "snn2ann", "timesteps": T, "input_shape": [1, 8, 8],
            "num_classes": 10, "layers": spec, "neuron": {"model": "IF", "reset": "zero", "threshold_test": "gt"}}
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta)
    return tmp_path / "ckpt"


@pytest.mark.lava
def test_resnet_checkpoint_export_lava_fixed_bit_exact(tmp_path):
    from spikebridge.exporters.nir_export import checkpoint_to_nir
    from spikebridge.hardware.graph import classify
    from spikebridge.toolchain import pipeline

    g = checkpoint_to_nir(_tiny_resnet_checkpoint(tmp_path))
    edges = set(g.edges)
    assert ("conv1_if", "block1_if") in edges  # identity shortcut: a direct neuron -> neuron edge
    assert ("block2_shortcut", "block2_if") in edges  # projection shortcut
    plan = lower(g, 6)
    assert sorted(c["delay"] for c in plan.meta["connections"]) == [0] * 7 + [1, 1]  # 9 connections
    x, y = pipeline.dataset_samples("digits", "test", 12, (1, 8, 8))
    xt = np.ascontiguousarray(pipeline.direct_encode(x, 6))
    ref = fixed_trace(g, xt)
    lav = run_lava(g, xt, precision="fixed", timeout_s=600)
    for n in ref.spikes:
        np.testing.assert_array_equal(lav.spikes[n], ref.spikes[n], err_msg=n)
        assert ref.spikes[n].any(), n
    np.testing.assert_array_equal(lav.outputs["output"], ref.outputs["output"])
    assert classify(lav.outputs["output"], "sum").shape == (12,)
