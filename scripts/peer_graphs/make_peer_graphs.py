"""Generate the per-library NIR conformance data in tests/data/peers/<lib>/<case>/.

For every library: build small dense and conv spiking nets with the library's own
modules, simulate them WITH THE LIBRARY on fixed random spike inputs, export them with
the library's OWN NIR exporter, and store

    graph.nir      what the library's exporter wrote (nir.write)
    input.npy      (T, batch, *input_shape) float32 spikes
    expected.npy   (T, batch, n_out) the library's own output at every step
    meta.json      library and torch versions, the modules used, seed

tests/hardware/test_profiles.py replays each graph through spikebridge.hardware.eventsim with the library's
profile and compares. The ``*_options`` generators write the non-default settings the
exporters do not record (snnTorch reset zero / same-step subtract, RLeaky / RSynaptic
with a recurrent bias, Norse exported both ways, sinabs SingleSpike / MembraneReset /
min_v_mem, SpikingJelly decay_input=False and non-zero v_reset); their meta.json names
the profile string that reads them (``profile``) and the settings used (``settings``). Not run in CI (the libraries are not dependencies); run it in a
throwaway environment:

    python3.11 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0   # the CPU build first
    /tmp/peers-venv/bin/pip install snntorch==1.0.0 norse==1.1.0 sinabs==3.1.3 spikingjelly==2.0.0
    /tmp/peers-venv/bin/pip install --no-deps torch==2.13.0  # if a dependency upgraded it
    /tmp/peers-venv/bin/python scripts/peer_graphs/make_peer_graphs.py --only norse sinabs \
        norse_options sinabs_options readouts  # sinabs 3.1.3 pins nir <= 1.0.4: written by 1.0.4
    /tmp/peers-venv/bin/pip install nir==1.0.8 nirtorch==2.6   # snnTorch 1.0 and SpikingJelly
    /tmp/peers-venv/bin/pip install --no-deps torch==2.13.0    # 2.0 need these (v_reset,
    /tmp/peers-venv/bin/python scripts/peer_graphs/make_peer_graphs.py --only snntorch \
        spikingjelly snntorch_options spikingjelly_options   # torch_to_nir(type_check=))
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2] / "tests" / "data" / "peers"
T, B = 12, 4


def spikes(rng, shape, rate=0.3):
    return (rng.random(shape) < rate).astype(np.float32)


def init_weights(net, seed, gain):
    """Gaussian weights; a negative gain means multiples of 1/4 (|gain| * N(0,1) rounded),
    no bias: membranes then land exactly on thresholds, which tells > from >=."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = torch.randn(m.weight.shape, generator=g) * abs(gain)
                m.weight.copy_(torch.round(w * 4) / 4 if gain < 0 else w)
                if m.bias is not None:
                    b = torch.randn(m.bias.shape, generator=g) * 0.1 * gain
                    m.bias.copy_(torch.zeros_like(b) if gain < 0 else b)


def record_input_shapes(net, sample):
    """Per-sample input shape of every Conv2d / Flatten submodule (forward hooks)."""
    shapes, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Flatten)):
            def hook(mod, inp, out, name=name):
                shapes.setdefault(name, tuple(inp[0].shape[1:]))  # returns None: output kept
            hooks.append(m.register_forward_hook(hook))
    try:
        net(sample)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def patch_none_types(graph, shapes):
    """Some exporters leave Conv2d.input_shape / Flatten.input_type as None, which
    nir.write cannot store. Fill them from the shapes seen in a forward pass; every
    change is listed in meta.json (patched_by_script)."""
    patched = []
    for name, node in graph.nodes.items():
        t = type(node).__name__
        if t == "Conv2d" and node.input_shape is None and name in shapes:
            node.input_shape = tuple(shapes[name][1:])
            node.input_type = {"input": np.array(shapes[name])}
            patched.append(f"{name}: Conv2d.input_shape was None, set to {shapes[name][1:]}")
        if t == "Flatten" and node.input_type.get("input") is None and name in shapes:
            node.input_type = {"input": np.array(shapes[name])}
            patched.append(f"{name}: Flatten.input_type was None, set to {shapes[name]}")
        for k in ("input_type", "output_type"):
            d = getattr(node, k, None)
            if isinstance(d, dict) and any(v is None for v in d.values()):
                setattr(node, k, {a: b for a, b in d.items() if b is not None})
                patched.append(f"{name}: dropped None entries of {k}")
    return patched


def save_case(lib, case, graph, x, y, info):
    import nir
    out = ROOT / lib / case
    tmp = Path(tempfile.mkdtemp(dir=ROOT))
    try:
        nir.write(str(tmp / "graph.nir"), graph)
        np.save(tmp / "input.npy", np.ascontiguousarray(x, dtype=np.float32))
        np.save(tmp / "expected.npy", np.ascontiguousarray(y, dtype=np.float32))
        meta = {"library": lib, "version": md.version(lib), "torch": torch.__version__,
                "nir": md.version("nir"), "nirtorch": md.version("nirtorch"), **info}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{lib}/{case}: output spikes {int((y != 0).sum())} of {y.size}, "
          f"graph nodes {sorted(type(n).__name__ for n in graph.nodes.values())}")


# ---------------------------------------------------------------------------- snnTorch
def gen_snntorch():
    import snntorch as snn
    from snntorch import utils as snn_utils
    from snntorch.export_nir import export_to_nir
    rng = np.random.default_rng(1)

    def run(net, x):
        snn_utils.reset(net)
        with torch.no_grad():
            return np.stack([net(torch.from_numpy(x[t])).numpy() for t in range(len(x))])

    def full(shape, v):  # per-neuron parameters: with scalar beta/threshold the exporter's
        return torch.full(shape, float(v))  # graph fails nir 1.0.8's type inference

    cases = {
        "dense_leaky": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.Leaky(beta=full((8,), 0.8), threshold=full((8,), 1.0),
                                        init_hidden=True),
            nn.Linear(8, 5), snn.Leaky(beta=full((5,), 0.9), threshold=full((5,), 0.7),
                                       init_hidden=True)), (10,), 1.0),
        "dense_synaptic": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.Synaptic(alpha=full((8,), 0.6), beta=full((8,), 0.85),
                                           threshold=full((8,), 1.0), init_hidden=True),
            nn.Linear(8, 5), snn.Synaptic(alpha=full((5,), 0.5), beta=full((5,), 0.9),
                                          threshold=full((5,), 1.0), init_hidden=True)),
            (10,), 0.7),
        "ties_leaky": (lambda: nn.Sequential(
            nn.Linear(10, 6), snn.Leaky(beta=full((6,), 0.5), threshold=full((6,), 1.0),
                                        init_hidden=True)), (10,), -1.0),
        "conv_leaky": (lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), snn.Leaky(beta=full((3, 6, 6), 0.75),
                                                     threshold=full((3, 6, 6), 1.0),
                                                     init_hidden=True),
            nn.Flatten(), nn.Linear(3 * 6 * 6, 5),
            snn.Leaky(beta=full((5,), 0.9), threshold=full((5,), 1.0), init_hidden=True)),
            (1, 6, 6), 0.8),
    }
    for i, (case, (make, shape, gain)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 10 + i, gain)
        x = spikes(rng, (T, B, *shape))
        y = run(net, x)
        snn_utils.reset(net)
        # A batched sample (as in snnTorch's docs) writes Input (batch, n), which nir 1.0.8's
        # type inference rejects ("type mismatch: input.output: [[4 10]] -> 0.input: [[10]]"):
        # export with one unbatched sample.
        sample = x[0, 0] if len(shape) == 1 else x[0, :1]  # nn.Flatten needs a batch dim
        patched = []
        try:
            graph = export_to_nir(net, torch.from_numpy(sample))
        except IndexError:
            # snnTorch writes Conv2d(input_shape=None); nir 1.0.8's type inference then
            # crashes (nir/ir/utils.py _index_tuple: IndexError). Export again with the
            # inference skipped, then fill the shapes from a forward pass.
            import nir
            orig = nir.NIRGraph.infer_types, nir.NIRGraph.check_types
            nir.NIRGraph.infer_types = nir.NIRGraph.check_types = lambda self: None
            try:
                snn_utils.reset(net)
                graph = export_to_nir(net, torch.from_numpy(sample))
            finally:
                nir.NIRGraph.infer_types, nir.NIRGraph.check_types = orig
            patched.append("export_to_nir raised IndexError in nir.NIRGraph.infer_types; "
                           "exported again with infer_types/check_types skipped")
            snn_utils.reset(net)
            shapes = record_input_shapes(net, torch.from_numpy(sample))
            patched += patch_none_types(graph, shapes)
            for name, node in graph.nodes.items():
                if type(node).__name__ == "Input":
                    node.input_type = {"input": np.array(shape)}
                    node.output_type = {"output": np.array(shape)}
                    patched.append(f"{name}: Input shape set to {shape} (was the batched sample's)")
        snn_utils.reset(net)
        save_case("snntorch", case, graph, x, y,
                  {"modules": repr(net), "simulated": "net(x[t]) for t in range(T), init_hidden",
                   "exported_with": f"export_to_nir(net, sample of shape {sample.shape})",
                   "patched_by_script": patched})


def run_norse(net, x):
    """Run a Norse (stateful, one step per call) network over the time-major input x."""
    state, out = None, []
    with torch.no_grad():
        for t in range(len(x)):
            y, state = net(torch.from_numpy(x[t]), state)
            out.append(y.numpy())
    return np.stack(out)


# ------------------------------------------------------------------------------- Norse
def gen_norse():
    from norse.torch import IAFCell, LIFBoxCell, LIFCell, SequentialState
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.utils.export_nir import to_nir
    rng = np.random.default_rng(2)


    cases = {
        "dense_lif_cuba": (lambda: SequentialState(
            nn.Linear(10, 8), LIFCell(LIFParameters(tau_mem_inv=torch.tensor(100.0),
                                                    tau_syn_inv=torch.tensor(200.0))),
            nn.Linear(8, 5), LIFCell()), (10,), 3.0),
        "dense_lifbox_iaf": (lambda: SequentialState(
            nn.Linear(10, 8), LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.tensor(150.0))),
            nn.Linear(8, 5), IAFCell()), (10,), 4.0),
        "ties_iaf": (lambda: SequentialState(nn.Linear(10, 6), IAFCell()), (10,), -1.0),
        # Norse 1.1's exporter maps nn.Flatten to None (nir.write then fails), so the
        # conv case ends in a conv layer instead of Flatten + Linear
        "conv_lif": (lambda: SequentialState(
            nn.Conv2d(1, 3, 3, padding=1), LIFBoxCell(), nn.Conv2d(3, 2, 3, stride=2),
            LIFCell()), (1, 6, 6), 3.0),
    }
    for i, (case, (make, shape, gain)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 20 + i, gain)
        x = spikes(rng, (T, B, *shape))
        y = run_norse(net, x)
        graph = to_nir(net, torch.from_numpy(x[0]))
        patched = patch_none_types(graph, record_input_shapes(net, torch.from_numpy(x[0])))
        save_case("norse", case, graph, x, y,
                  {"modules": repr(net), "simulated": "SequentialState, one step per call, dt=1e-3",
                   "patched_by_script": patched})


# ------------------------------------------------------------------------------ sinabs
def gen_sinabs():
    import sinabs
    import sinabs.layers as sl
    from sinabs.nir import to_nir
    rng = np.random.default_rng(3)

    def run_seq(net, x):  # sinabs layers take (batch, time, ...)
        sinabs.reset_states(net)
        with torch.no_grad():
            y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))
        return y.numpy().transpose(1, 0, 2)

    def run_squeeze(net, x):  # Squeeze layers take (batch*time, ...)
        sinabs.reset_states(net)
        xb = np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(B * T, *x.shape[2:])
        with torch.no_grad():
            y = net(torch.from_numpy(xb)).numpy()
        return np.swapaxes(y.reshape(B, T, -1), 0, 1)

    cases = {
        "dense_iaf_lif": (lambda: nn.Sequential(
            nn.Linear(10, 8), sl.IAF(spike_threshold=1.0),
            nn.Linear(8, 5), sl.LIF(tau_mem=4.0, spike_threshold=0.5)), (10,), 1.5, run_seq),
        "ties_iaf": (lambda: nn.Sequential(nn.Linear(10, 6), sl.IAF(spike_threshold=1.0)),
                     (10,), -1.0, run_seq),
        "conv_iaf": (lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), sl.IAFSqueeze(batch_size=B),
            nn.Flatten(), nn.Linear(3 * 6 * 6, 5), sl.IAFSqueeze(batch_size=B)),
            (1, 6, 6), 1.0, run_squeeze),
    }
    for i, (case, (make, shape, gain, run)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 30 + i, gain)
        x = spikes(rng, (T, B, *shape))
        y = run(net, x)
        if run is run_seq:
            sample = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
        else:
            sample = torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(B * T, *shape))
        sinabs.reset_states(net)
        graph = to_nir(net, sample)
        patched = patch_none_types(graph, record_input_shapes(net, sample))
        sinabs.reset_states(net)
        save_case("sinabs", case, graph, x, y,
                  {"modules": repr(net), "simulated": "whole sequence in one call (sinabs layout)",
                   "patched_by_script": patched})


# ------------------------------------------------------------------------ SpikingJelly
def gen_spikingjelly():
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    rng = np.random.default_rng(4)

    def run(net, x):
        functional.reset_net(net)
        with torch.no_grad():
            return np.stack([net(torch.from_numpy(x[t])).numpy() for t in range(len(x))])

    cases = {
        "dense_lif_if": (lambda: nn.Sequential(
            layer.Linear(10, 8), neuron.LIFNode(tau=2.0),
            layer.Linear(8, 5), neuron.IFNode()), (10,), 1.0),
        "dense_lif_nodecay": (lambda: nn.Sequential(
            layer.Linear(10, 8), neuron.LIFNode(tau=3.0, decay_input=False, v_threshold=0.8),
            layer.Linear(8, 5), neuron.LIFNode(tau=1.5)), (10,), 0.8),
        "ties_if": (lambda: nn.Sequential(layer.Linear(10, 6), neuron.IFNode()), (10,), -1.0),
        "conv_lif": (lambda: nn.Sequential(
            layer.Conv2d(1, 3, 3, padding=1), neuron.LIFNode(tau=2.0),
            layer.Flatten(), layer.Linear(3 * 6 * 6, 5), neuron.IFNode()), (1, 6, 6), 0.8),
    }
    for i, (case, (make, shape, gain)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 40 + i, gain)
        x = spikes(rng, (T, B, *shape))
        y = run(net, x)
        functional.reset_net(net)
        graph = export_to_nir(net, torch.from_numpy(x[0]))
        save_case("spikingjelly", case, graph, x, y,
                  {"modules": repr(net), "simulated": "step_mode 's', net(x[t]) per step"})


# ------------------------------------------------------------- non-default settings
def _steps(net, x, reset):
    reset(net)
    with torch.no_grad():
        return np.stack([net(torch.from_numpy(x[t])).numpy() for t in range(len(x))])


def gen_snntorch_options():
    import snntorch as snn
    from snntorch import utils as snn_utils
    from snntorch.export_nir import export_to_nir
    rng = np.random.default_rng(5)

    def full(shape, v):
        return torch.full(shape, float(v))

    def leaky(n, beta, thr, **kw):
        return snn.Leaky(beta=full((n,), beta), threshold=full((n,), thr), init_hidden=True, **kw)

    cases = {
        # reset_mechanism="zero": the exporter still writes v_reset = 0, as for subtract
        "dense_leaky_zero": (lambda: nn.Sequential(
            nn.Linear(10, 8), leaky(8, 0.8, 1.0, reset_mechanism="zero"),
            nn.Linear(8, 5), leaky(5, 0.9, 0.7, reset_mechanism="zero")), 1.2,
            "snntorch:reset=zero", {"reset_mechanism": "zero"}),
        # reset_delay=False: subtract in the spiking step
        "dense_leaky_samestep": (lambda: nn.Sequential(
            nn.Linear(10, 8), leaky(8, 0.8, 1.0, reset_delay=False),
            nn.Linear(8, 5), leaky(5, 0.9, 0.7, reset_delay=False)), 1.2,
            "snntorch:reset_delay=false", {"reset_mechanism": "subtract", "reset_delay": False}),
        # RLeaky: all-to-all recurrent nn.Linear WITH bias (added from t = 0)
        "rleaky_bias": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.RLeaky(beta=0.85, threshold=1.0, linear_features=8,
                                         init_hidden=True),
            nn.Linear(8, 5), leaky(5, 0.9, 1.0)), 0.9,
            "snntorch", {"recurrent": "RLeaky(linear_features=8), nn.Linear with bias"}),
        "rsynaptic": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.RSynaptic(alpha=0.6, beta=0.85, threshold=1.0,
                                            linear_features=8, init_hidden=True),
            nn.Linear(8, 5), leaky(5, 0.9, 1.0)), 0.7,
            "snntorch", {"recurrent": "RSynaptic(linear_features=8), nn.Linear with bias"}),
        # reset to zero in Synaptic / RLeaky / RSynaptic: with reset_delay the whole step
        # after a spike is zeroed (a plain Leaky zeroes, then integrates)
        "dense_synaptic_zero": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.Synaptic(alpha=full((8,), 0.6), beta=full((8,), 0.85),
                                           threshold=full((8,), 1.0), init_hidden=True,
                                           reset_mechanism="zero"),
            nn.Linear(8, 5), snn.Synaptic(alpha=full((5,), 0.5), beta=full((5,), 0.9),
                                          threshold=full((5,), 1.0), init_hidden=True,
                                          reset_mechanism="zero")), 0.9,
            "snntorch:reset=zero", {"reset_mechanism": "zero", "neuron": "Synaptic"}),
        "rleaky_zero": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.RLeaky(beta=0.85, threshold=1.0, linear_features=8,
                                         init_hidden=True, reset_mechanism="zero"),
            nn.Linear(8, 5), leaky(5, 0.9, 1.0, reset_mechanism="zero")), 1.2,
            "snntorch:reset=zero", {"recurrent": "RLeaky(linear_features=8, reset_mechanism='zero')"}),
        "rsynaptic_zero": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.RSynaptic(alpha=0.6, beta=0.85, threshold=1.0,
                                            linear_features=8, init_hidden=True,
                                            reset_mechanism="zero"),
            nn.Linear(8, 5), leaky(5, 0.9, 1.0, reset_mechanism="zero")), 0.9,
            "snntorch:reset=zero",
            {"recurrent": "RSynaptic(linear_features=8, reset_mechanism='zero')"}),
        # same-step subtract in a recurrent layer (the NIR paper's braille RNN uses RSynaptic
        # so; snnTorch 1.0's RSynaptic(reset_delay=False) raises TypeError in forward, since
        # it reads a local `spk` it never set, so RLeaky stands in for it)
        "rleaky_samestep": (lambda: nn.Sequential(
            nn.Linear(10, 8), snn.RLeaky(beta=0.85, threshold=1.0, linear_features=8,
                                         init_hidden=True, reset_delay=False),
            nn.Linear(8, 5), leaky(5, 0.9, 1.0, reset_delay=False)), 0.9,
            "snntorch:reset_delay=false",
            {"recurrent": "RLeaky(linear_features=8, reset_delay=False)", "reset_delay": False}),
    }
    for i, (case, (make, gain, profile, settings)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 50 + i, gain)
        x = spikes(rng, (T, B, 10))
        y = _steps(net, x, snn_utils.reset)
        snn_utils.reset(net)
        graph = export_to_nir(net, torch.from_numpy(x[0, 0]))
        snn_utils.reset(net)
        save_case("snntorch", case, graph, x, y,
                  {"modules": repr(net), "simulated": "net(x[t]) for t in range(T), init_hidden",
                   "exported_with": "export_to_nir(net, one unbatched sample)",
                   "settings": settings, "profile": profile, "patched_by_script": []})


def gen_norse_options():
    from norse.torch import LIFBoxCell, LIFCell, SequentialState
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.utils.export_nir import to_nir
    rng = np.random.default_rng(6)


    make = lambda: SequentialState(  # noqa: E731
        nn.Linear(10, 8), LIFCell(LIFParameters(tau_mem_inv=torch.tensor(100.0),
                                                tau_syn_inv=torch.tensor(200.0))),
        nn.Linear(8, 8), LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.tensor(150.0))),
        nn.Linear(8, 5), LIFCell())
    net = make()
    init_weights(net, 60, 3.0)
    x = spikes(rng, (T, B, 10))
    y = run_norse(net, x)
    # the same net exported both ways: to_nir's default (tau = 1e-3 * tau, norse#411) and
    # the workaround to_nir(..., dt=1.0), which writes the true time constants in seconds
    for case, kw, profile in (("dense_lif_export_default", {}, "norse"),
                              ("dense_lif_export_seconds", {"dt": 1.0}, "norse")):
        graph = to_nir(net, torch.from_numpy(x[0]), **kw)
        save_case("norse", case, graph, x, y,
                  {"modules": repr(net), "simulated": "SequentialState, one step per call, dt=1e-3",
                   "exported_with": f"to_nir(net, x[0]{', dt=1.0' if kw else ''})",
                   "settings": {"to_nir_dt": kw.get("dt", 1e-3)}, "profile": profile,
                   "profile_explicit": "norse:export_dt=" + ("1.0" if kw else "0.001"),
                   "patched_by_script": []})


def gen_readouts():
    """Membrane outputs: Norse LIBoxCell (nir.LI, Euler) and sinabs ExpLeak (nir.LI, exact
    decay). The library's float32 membrane is the expected output."""
    import importlib
    rng = np.random.default_rng(9)
    if importlib.util.find_spec("norse"):
        from norse.torch import LIBoxCell, LIFBoxCell, SequentialState
        from norse.torch.utils.export_nir import to_nir
        net = SequentialState(nn.Linear(10, 8), LIFBoxCell(), nn.Linear(8, 5), LIBoxCell())
        init_weights(net, 90, 3.0)
        x = spikes(rng, (T, B, 10))
        state, out = None, []
        with torch.no_grad():
            for t in range(T):
                y, state = net(torch.from_numpy(x[t]), state)
                out.append(y.numpy())
        y = np.stack(out)
        graph = to_nir(net, torch.from_numpy(x[0]))
        save_case("norse", "dense_lif_li_readout", graph, x, y,
                  {"modules": repr(net), "simulated": "SequentialState, one step per call, dt=1e-3",
                   "settings": {"readout": "LIBoxCell membrane"}, "profile": "norse",
                   "output": "membrane", "patched_by_script": []})
    import sinabs
    import sinabs.layers as sl
    from sinabs.nir import to_nir as sinabs_to_nir
    net = nn.Sequential(nn.Linear(10, 8), sl.IAF(spike_threshold=1.0), nn.Linear(8, 5),
                        sl.ExpLeak(tau_mem=5.0))
    init_weights(net, 91, 1.5)
    x = spikes(rng, (T, B, 10))
    sinabs.reset_states(net)
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))).numpy().transpose(1, 0, 2)
    sinabs.reset_states(net)
    graph = sinabs_to_nir(net, torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))
    save_case("sinabs", "dense_iaf_expleak_readout", graph, x, y,
              {"modules": repr(net), "simulated": "whole sequence in one call (sinabs layout)",
               "settings": {"readout": "ExpLeak membrane"}, "profile": "sinabs",
               "output": "membrane", "patched_by_script": []})


def gen_sinabs_options():
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike
    from sinabs.nir import to_nir
    rng = np.random.default_rng(7)

    def run_seq(net, x):
        sinabs.reset_states(net)
        with torch.no_grad():
            y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))
        return y.numpy().transpose(1, 0, 2)

    cases = {
        "dense_single_spike": (lambda: nn.Sequential(
            nn.Linear(10, 8), sl.IAF(spike_threshold=1.0, spike_fn=SingleSpike),
            nn.Linear(8, 5), sl.LIF(tau_mem=4.0, spike_threshold=0.5, spike_fn=SingleSpike)),
            1.5, "sinabs:spike=single", {"spike_fn": "SingleSpike"}),
        "dense_membrane_reset": (lambda: nn.Sequential(
            nn.Linear(10, 8), sl.IAF(spike_threshold=1.0, reset_fn=MembraneReset()),
            nn.Linear(8, 5), sl.LIF(tau_mem=4.0, spike_threshold=0.5, reset_fn=MembraneReset())),
            1.5, "sinabs:reset=zero", {"reset_fn": "MembraneReset(reset_value=0)"}),
        "dense_min_v_mem": (lambda: nn.Sequential(
            nn.Linear(10, 8), sl.IAF(spike_threshold=1.0, min_v_mem=-1.0),
            nn.Linear(8, 5), sl.IAF(spike_threshold=1.0, min_v_mem=-1.0)),
            1.5, "sinabs:floor=-1", {"min_v_mem": -1.0}),
        "dense_single_reset_floor": (lambda: nn.Sequential(
            nn.Linear(10, 8), sl.IAF(spike_threshold=1.0, spike_fn=SingleSpike,
                                     reset_fn=MembraneReset(), min_v_mem=-1.0),
            nn.Linear(8, 5), sl.IAF(spike_threshold=1.0, spike_fn=SingleSpike,
                                    reset_fn=MembraneReset(), min_v_mem=-1.0)),
            1.5, "sinabs:spike=single,reset=zero,floor=-threshold",
            {"spike_fn": "SingleSpike", "reset_fn": "MembraneReset", "min_v_mem": -1.0,
             "note": "thresholds are 1, so min_v_mem = -1 is -threshold (sinabs.from_nir's floor)"}),
    }
    for i, (case, (make, gain, profile, settings)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 70 + i, gain)
        x = spikes(rng, (T, B, 10))
        y = run_seq(net, x)
        sample = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
        sinabs.reset_states(net)
        graph = to_nir(net, sample)
        sinabs.reset_states(net)
        save_case("sinabs", case, graph, x, y,
                  {"modules": repr(net), "simulated": "whole sequence in one call (sinabs layout)",
                   "settings": settings, "profile": profile, "patched_by_script": []})


def gen_spikingjelly_options():
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    rng = np.random.default_rng(8)

    cases = {
        "dense_if_vreset": (lambda: nn.Sequential(
            layer.Linear(10, 8), neuron.IFNode(v_reset=0.3),
            layer.Linear(8, 5), neuron.IFNode(v_reset=-0.2)), (10,), 1.0,
            {"IFNode": "v_reset=0.3 / -0.2"}),
        "conv_lif_nodecay_vreset": (lambda: nn.Sequential(
            layer.Conv2d(1, 3, 3, padding=1),
            neuron.LIFNode(tau=2.0, decay_input=False, v_reset=-0.3),
            layer.Flatten(), layer.Linear(3 * 6 * 6, 5),
            neuron.LIFNode(tau=3.0, decay_input=False, v_reset=0.2)), (1, 6, 6), 0.5,
            {"LIFNode": "decay_input=False, v_reset=-0.3 / 0.2"}),
    }
    for i, (case, (make, shape, gain, settings)) in enumerate(cases.items()):
        net = make()
        init_weights(net, 80 + i, gain)
        x = spikes(rng, (T, B, *shape))
        y = _steps(net, x, functional.reset_net)
        functional.reset_net(net)
        graph = export_to_nir(net, torch.from_numpy(x[0]))
        save_case("spikingjelly", case, graph, x, y,
                  {"modules": repr(net), "simulated": "step_mode 's', net(x[t]) per step",
                   "settings": settings, "profile": "spikingjelly"})


GENERATORS = {"snntorch": gen_snntorch, "norse": gen_norse, "sinabs": gen_sinabs,
              "spikingjelly": gen_spikingjelly,
              "snntorch_options": gen_snntorch_options, "norse_options": gen_norse_options,
              "sinabs_options": gen_sinabs_options, "readouts": gen_readouts,
              "spikingjelly_options": gen_spikingjelly_options}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(GENERATORS))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    ROOT.mkdir(parents=True, exist_ok=True)
    failed = []
    for lib in args.only or GENERATORS:
        try:
            GENERATORS[lib]()
        except Exception as e:  # report every library, then fail
            import traceback
            traceback.print_exc()
            failed.append(f"{lib}: {type(e).__name__}: {e}")
    for f in failed:
        print("FAILED", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
