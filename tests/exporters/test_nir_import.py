"""NIR import: graph -> torch module (time-major) reproduces eventsim and the torch SNN;
nir.read(nir.write(g)) == g and module.to_nir() == g for our exports and hand-built graphs."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from spikebridge.exporters.nir_export import checkpoint_to_nir, neuron_metadata, write_nir
from spikebridge.exporters.nir_import import graph_differences, graph_to_torch, load_nir_module
from spikebridge.base.errors import InputError, UnsupportedError
from spikebridge.hardware.eventsim import simulate
from spikebridge.models.checkpoint import build_model, load_checkpoint
from spikebridge.models.datasets import load_dataset
from tests._trained import trained_checkpoint

F32 = np.float32


def _if(shape, thr, **meta):
    return nir.IF(r=np.ones(shape, F32), v_threshold=np.broadcast_to(np.asarray(thr, F32), shape).copy(),
                  v_reset=np.zeros(shape, F32), metadata=neuron_metadata(**meta))


def hand_built_graph(seed: int = 0) -> nir.NIRGraph:
    """Conv (stride, padding, groups) -> IF soft reset/ge/v_init -> SumPool -> Conv ->
    residual sum of (conv, Scale of spikes) into an IF with per-neuron thresholds and
    amplitude 0.5 -> AvgPool -> Flatten -> Affine -> LIF (dt 0.5) -> Affine -> CubaLIF -> Output."""
    rng = np.random.default_rng(seed)
    c1 = nir.Conv2d(input_shape=(6, 6), weight=rng.normal(0, 0.6, (4, 1, 3, 3)).astype(F32), stride=1,
                    padding=1, dilation=1, groups=1, bias=rng.normal(0, 0.1, 4).astype(F32))
    c2 = nir.Conv2d(input_shape=(6, 6), weight=rng.normal(0, 0.5, (4, 4, 3, 3)).astype(F32), stride=1,
                    padding=1, dilation=1, groups=1, bias=rng.normal(0, 0.1, 4).astype(F32))
    thr2 = rng.uniform(0.3, 1.0, (4, 6, 6)).astype(F32)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([1, 6, 6])}),
        "c1": c1,
        "if1": _if((4, 6, 6), 0.7, reset="subtract", threshold_test="ge", v_init=0.35),
        "c2": c2,
        "skip": nir.Scale(scale=np.full((4, 6, 6), 0.8, F32)),
        "if2": nir.IF(r=np.ones((4, 6, 6), F32), v_threshold=thr2, v_reset=np.zeros((4, 6, 6), F32),
                      metadata=neuron_metadata(reset="subtract", v_init=(thr2 / 2), spike_amplitude=0.5)),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "spool": nir.SumPool2d(kernel_size=np.array([3, 3]), stride=np.array([1, 1]), padding=np.array([1, 1])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=0, end_dim=-1),
        "fc1": nir.Affine(weight=rng.normal(0, 0.4, (12, 36)).astype(F32), bias=rng.normal(0, 0.1, 12).astype(F32)),
        "lif": nir.LIF(tau=np.full(12, 2.0, F32), r=np.ones(12, F32), v_leak=np.zeros(12, F32),
                       v_threshold=np.full(12, 0.5, F32), v_reset=np.zeros(12, F32),
                       metadata=neuron_metadata(reset="zero", threshold_test="gt")),
        "fc2": nir.Affine(weight=rng.normal(0, 0.5, (5, 12)).astype(F32), bias=np.zeros(5, F32)),
        "cuba": nir.CubaLIF(tau_syn=np.full(5, 2.0, F32), tau_mem=np.full(5, 4.0, F32), r=np.ones(5, F32),
                            v_leak=np.zeros(5, F32), v_threshold=np.full(5, 0.3, F32),
                            v_reset=np.zeros(5, F32), w_in=np.ones(5, F32),
                            metadata=neuron_metadata(reset="subtract")),
        "output": nir.Output(output_type={"output": np.array([5])}),
    }
    edges = [("input", "c1"), ("c1", "if1"), ("if1", "spool"), ("spool", "c2"), ("if1", "skip"),
             ("c2", "if2"), ("skip", "if2"),
             ("if2", "pool"), ("pool", "flat"), ("flat", "fc1"), ("fc1", "lif"), ("lif", "fc2"),
             ("fc2", "cuba"), ("cuba", "output")]
    meta = {"spikebridge": {"format_version": 1, "dt": 0.5, "timesteps": 6, "encoding": "direct",
                            "readout": "count", "method": "hand-built", "arch": "test"}}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def grouped_conv_graph() -> nir.NIRGraph:
    """Grouped, strided, dilated conv (nir 1.0.8's type inference ignores groups: built
    with type_check=False, so it is simulated but not round-tripped through nir.read)."""
    rng = np.random.default_rng(2)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([4, 9, 9])}),
        "conv": nir.Conv2d(input_shape=(9, 9), weight=rng.normal(0, 0.5, (6, 2, 3, 3)).astype(F32), stride=2,
                           padding=2, dilation=2, groups=2, bias=rng.normal(0, 0.1, 6).astype(F32)),
        "if": _if((6, 5, 5), 0.5, reset="subtract", v_init=0.25),
        "output": nir.Output(output_type={"output": np.array([6, 5, 5])}),
    }
    return nir.NIRGraph(nodes=nodes, edges=[("input", "conv"), ("conv", "if"), ("if", "output")],
                        metadata={"spikebridge": {"dt": 1.0, "timesteps": 4, "readout": "count"}},
                        type_check=False)


def recurrent_graph() -> nir.NIRGraph:
    rng = np.random.default_rng(1)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([3])}),
        "fc": nir.Affine(weight=rng.normal(0, 1, (4, 3)).astype(F32), bias=np.zeros(4, F32)),
        "rec": nir.Affine(weight=rng.normal(0, 0.5, (4, 4)).astype(F32), bias=np.zeros(4, F32)),
        "if": _if((4,), 0.6, reset="subtract"),
        "output": nir.Output(output_type={"output": np.array([4])}),
    }
    edges = [("input", "fc"), ("fc", "if"), ("if", "rec"), ("rec", "if"), ("if", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges,
                        metadata={"spikebridge": {"dt": 1.0, "timesteps": 5, "readout": "count"}})


@pytest.fixture(scope="module")
def ckpt():
    return trained_checkpoint()


def _spike_match(a, b) -> float:
    return float(np.mean((np.asarray(a) != 0) == (np.asarray(b) != 0)))


def test_export_import_matches_eventsim_and_torch(ckpt):
    meta, tensors = load_checkpoint(ckpt)
    x, _ = load_dataset("digits", "test")
    T = meta["timesteps"]
    xt = np.ascontiguousarray(np.broadcast_to(x[None], (T, *x.shape)))
    g = checkpoint_to_nir(ckpt)
    tr = simulate(g, xt)
    mod = graph_to_torch(g)
    # float64 (eventsim's arithmetic): identical outputs and spikes
    out64, rec64 = mod.double()(torch.from_numpy(xt), record=True)
    assert np.abs(out64["output"].numpy() - tr.outputs["output"]).max() <= 1e-12
    for name, s in tr.spikes.items():
        assert np.array_equal(rec64[name].numpy() != 0, s), name
    # float32 (torch's arithmetic): the original SNN's spikes and logits
    net = build_model(meta, tensors)
    with torch.no_grad():
        logits, _, spikes = net.snn_forward(torch.from_numpy(x), record=True)
        out32, rec32 = graph_to_torch(g)(torch.from_numpy(xt), record=True)
    names = [f"{s['name']}_if" for s in meta["layers"] if s.get("neuron")]
    for name, s in zip(names, spikes):
        assert _spike_match(rec32[name], s) >= 1 - 1e-4, name
    assert np.abs(out32["output"].sum(0).numpy() - logits.numpy()).max() < 1e-4


def test_hand_built_graph_matches_eventsim():
    g = hand_built_graph()
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (6, 7, 1, 6, 6))
    tr = simulate(g, x)
    mod = graph_to_torch(g).double()
    with torch.no_grad():
        out, rec = mod(torch.from_numpy(x), record=True)
    assert np.abs(out["output"].numpy() - tr.outputs["output"]).max() <= 1e-9
    for name, s in tr.spikes.items():
        assert np.array_equal(rec[name].numpy() != 0, s), name
    assert tr.spikes["if2"].any() and tr.spikes["lif"].any()  # the test exercises spiking paths
    # soft reset and amplitude really are honoured: graded output of if2 is 0.5
    assert set(np.unique(rec["if2"].numpy())) <= {0.0, 0.5}


def test_grouped_conv_matches_eventsim():
    g = grouped_conv_graph()
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 4, 9, 9))
    tr = simulate(g, x)
    out = graph_to_torch(g).double()(torch.from_numpy(x))
    assert np.abs(out["output"].numpy() - tr.outputs["output"]).max() <= 1e-12
    assert tr.outputs["output"].any()


def test_recurrent_graph_matches_eventsim():
    g = recurrent_graph()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 4, 3))
    tr = simulate(g, x)
    out = graph_to_torch(g).double()(torch.from_numpy(x))
    assert np.abs(out["output"].numpy() - tr.outputs["output"]).max() <= 1e-12


@pytest.mark.parametrize("which", ["trained", "hand", "recurrent"])
def test_round_trips(which, ckpt, tmp_path):
    g = {"trained": lambda: checkpoint_to_nir(ckpt), "hand": hand_built_graph, "recurrent": recurrent_graph}[which]()
    p = tmp_path / "g.nir"
    write_nir(g, p)
    assert graph_differences(g, nir.read(str(p))) == []
    mod = load_nir_module(p)  # hardened loader
    assert graph_differences(g, mod.to_nir()) == []
    # the module's tensors are what goes back out
    with torch.no_grad():
        next(iter(mod.parameters())).mul_(2.0)
    assert graph_differences(g, mod.to_nir()) != []


def test_graph_differences_sees_metadata():
    a, b = hand_built_graph(), hand_built_graph()
    b.nodes["if1"].metadata["spikebridge"]["reset"] = "zero"
    assert any("if1.metadata" in d for d in graph_differences(a, b))


def test_unsupported_node_is_named():
    g = recurrent_graph()
    g.nodes["d"] = nir.Delay(delay=np.ones(4, F32))
    g.edges.remove(("if", "output"))
    g.edges += [("if", "d"), ("d", "output")]
    with pytest.raises(UnsupportedError, match="Delay"):
        graph_to_torch(g)
    assert issubclass(UnsupportedError, InputError)


def test_inspect_displays_third_party_graphs(tmp_path, capsys):
    """Graphs as nirtorch-based exporters write them (no spikebridge metadata, Linear
    without bias, CubaLIF with tau in seconds; with the library-profile adaptation
    present, also the trace sample's batch dimension in the Input) display."""
    from spikebridge.toolchain.cli import main
    rng = np.random.default_rng(0)

    def peer(in_shape, out_shape):
        nodes = {
            "input": nir.Input(input_type={"input": np.array(in_shape)}),
            "0": nir.Linear(weight=rng.normal(0, 1, (6, 10)).astype(F32)),
            "1": nir.CubaLIF(tau_syn=np.full(6, 5e-3, F32), tau_mem=np.full(6, 1e-2, F32), r=np.ones(6, F32),
                             v_leak=np.zeros(6, F32), v_threshold=np.ones(6, F32), v_reset=np.zeros(6, F32),
                             w_in=np.ones(6, F32)),
            "output": nir.Output(output_type={"output": np.array(out_shape)}),
        }
        return nir.NIRGraph(nodes=nodes, edges=[("input", "0"), ("0", "1"), ("1", "output")], type_check=False)

    cases = [("plain", [10], [6])]
    try:
        import spikebridge.hardware.eventsim.adapt  # noqa: F401 - the library profiles' Input/Output adaptation
        cases.append(("batch_dim", [4, 10], [4, 6]))
    except ImportError:
        pass
    for name, i, o in cases:
        write_nir(peer(i, o), tmp_path / f"{name}.nir")
        assert main(["inspect", str(tmp_path / f"{name}.nir")]) == 0, name
        out = capsys.readouterr().out
        assert "CubaLIF" in out and "Linear" in out and "tau_mem" in out and "no spikebridge metadata" in out
        assert "eventsim: runs this graph" in out and "torch:" in out
    g2 = recurrent_graph()
    g2.nodes["if"].metadata = {}
    write_nir(g2, tmp_path / "plain.nir")
    assert main(["inspect", str(tmp_path / "plain.nir"), "--profile", "nir"]) == 0
    out = capsys.readouterr().out
    assert "profile nir" in out and "no spikebridge metadata" in out
    # a graph that analyses in no form is still rejected (exit 3, one error line)
    write_nir(peer([7], [6]), tmp_path / "bad.nir")
    assert main(["inspect", str(tmp_path / "bad.nir")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
