"""Library profiles against graphs the libraries exported and simulated themselves.

tests/data/peers/<lib>/<case>/ holds what scripts/peer_graphs/make_peer_graphs.py wrote
with snnTorch 1.0, Norse 1.1, sinabs 3.1 and SpikingJelly 2.0 (their own NIR exporters,
their own simulation on fixed spike inputs; versions in each meta.json). The libraries
are not needed here. Tolerance: none, spikes (and sinabs' multi-spike counts) must be
identical; the libraries compute in float32 and we in float64, and no membrane of
these cases lies within float32 rounding of its threshold except the `ties_*` cases,
whose weights are multiples of 1/4 so that the threshold test (> or >=) is exercised
exactly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nir
import numpy as np
import pytest

from spikebridge.base.errors import GraphError, UnsupportedError
from spikebridge.hardware.eventsim import PROFILES, Profile, adapt_graph, register_profile, simulate
from spikebridge.hardware.eventsim.profiles import get_profile
from spikebridge.hardware.graph import analyse, load_graph

PEERS = Path(__file__).parent / "data" / "peers"
LIBS = ("snntorch", "norse", "sinabs", "spikingjelly")
CASES = sorted(f"{p.parent.name}/{p.name}" for p in PEERS.glob("*/*") if p.is_dir())


def load_case(case: str):
    d = PEERS / case
    return (load_graph(d / "graph.nir"), np.load(d / "input.npy"), np.load(d / "expected.npy"),
            json.loads((d / "meta.json").read_text()))


def run_case(case: str, profile):
    graph, x, y, _ = load_case(case)
    lib = case.split("/")[0]
    g = adapt_graph(graph, profile if isinstance(profile, Profile) else lib)
    info = analyse(g)
    tr = simulate(g, x, profile=profile, info=info)
    return tr.outputs[info.outputs[0]].reshape(y.shape), y, tr


def test_every_library_has_dense_conv_and_ties_cases():
    for lib in LIBS:
        names = {c.split("/")[1] for c in CASES if c.startswith(lib + "/")}
        assert any(n.startswith("dense") for n in names), lib
        assert any(n.startswith("conv") for n in names), lib
        assert any(n.startswith("ties") for n in names), lib
        meta = load_case(next(c for c in CASES if c.startswith(lib + "/")))[3]
        assert meta["library"] == lib and meta["version"]


@pytest.mark.parametrize("case", CASES)
def test_library_graph_reproduces_library_outputs(case):
    lib = case.split("/")[0]
    out, y, tr = run_case(case, lib)
    assert (y != 0).sum() > 0, "the case must spike"
    np.testing.assert_array_equal(out, y)
    assert tr.profile == lib


# one field per library that the data pins down: flipping it breaks some case
ABLATIONS = {
    "snntorch": dict(reset_timing="same_step"),   # subtract one step late (reset_delay)
    "norse": dict(current_input="euler"),         # input jumps into the current unscaled
    "sinabs": dict(multi_spike=False),            # MultiSpike
    "spikingjelly": dict(threshold_test="gt"),    # v >= theta
}


@pytest.mark.parametrize("lib", LIBS)
def test_profile_fields_are_pinned_by_the_data(lib):
    """The stored outputs discriminate: the strict nir profile, and the library profile
    with its distinguishing field flipped, both mismatch on some case."""
    cases = [c for c in CASES if c.startswith(lib + "/")]
    abl = dataclasses.replace(PROFILES[lib], name=f"{lib}-ablated", **ABLATIONS[lib])
    for prof in ("nir", abl):
        bad = 0
        for c in cases:
            out, y, _ = run_case(c, prof) if prof != "nir" else _strict_after_adapt(c)
            bad += int((out != y).sum())
        assert bad > 0, (lib, prof)


def _strict_after_adapt(case):
    graph, x, y, _ = load_case(case)
    g = adapt_graph(graph, case.split("/")[0])  # shapes fixed, then read as plain NIR
    info = analyse(g)
    return simulate(g, x, profile="nir", info=info).outputs[info.outputs[0]].reshape(y.shape), y, None


def test_norse_tau_is_written_in_dt_times_seconds():
    """Norse 1.1 writes tau = dt / tau_inv = dt * tau (1e-5 for tau_mem = 10 ms at dt = 1 ms);
    its profile reads it with dt = dt**2 = 1e-6 so dt/tau is Norse's dt * tau_inv."""
    graph = load_case("norse/dense_lif_cuba")[0]
    cuba = next(n for n in graph.nodes.values() if type(n).__name__ == "CubaLIF")
    assert float(np.asarray(cuba.tau_mem).reshape(-1)[0]) == pytest.approx(1e-5)
    assert PROFILES["norse"].default_dt == pytest.approx(1e-6)


def test_adapt_strips_exporter_batch_dims_only_for_library_profiles():
    graph = load_case("norse/dense_lif_cuba")[0]  # Input (4, 10): Norse kept the batch
    with pytest.raises(GraphError, match="expects input shape"):
        analyse(adapt_graph(graph, "nir"))
    assert adapt_graph(graph, "nir") is graph
    g = adapt_graph(graph, "norse")
    info = analyse(g)
    assert info.shapes[info.inputs[0]] == (10,)
    # sinabs wrote its time dimension: Input (12, 10)
    g = adapt_graph(load_case("sinabs/dense_iaf_lif")[0], "sinabs")
    assert analyse(g).shapes["input"] == (10,)


def test_dt_overrides_the_profile():
    # snnTorch's graph at dt = 1e-4 is v = beta*v + I; doubling dt changes the decay
    out, y, _ = run_case("snntorch/dense_leaky", "snntorch")
    graph, x, _, _ = load_case("snntorch/dense_leaky")
    g = adapt_graph(graph, "snntorch")
    tr = simulate(g, x, profile="snntorch", dt=1e-4)
    np.testing.assert_array_equal(tr.outputs["output"].reshape(y.shape), y)
    tr2 = simulate(g, x, profile="snntorch", dt=0.5e-4)
    assert tr2.meta["dt"] == 0.5e-4 and not np.array_equal(tr2.outputs["output"].reshape(y.shape), y)


def test_cli_simulate_with_library_profile_and_dt(tmp_path):
    from spikebridge.toolchain.cli import main
    d = PEERS / "norse" / "dense_lif_cuba"
    y = np.load(d / "expected.npy")
    out = tmp_path / "o.npz"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--profile", "norse", "--out", str(out)]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["output"].reshape(y.shape), y)
    out2 = tmp_path / "o2.npz"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--profile", "norse", "--dt", "2e-6", "--out", str(out2)]) == 0
    with np.load(out2) as z:
        assert not np.array_equal(z["output"].reshape(y.shape), y)
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--profile", "brian", "--out", str(tmp_path / "o3.npz")]) == 3
    assert not (tmp_path / "o3.npz").exists()


# ---- lava-float: Lava's floating_pt LIF and the one-step delay per synaptic layer

def lava_loop(W1, b1, W2, b2, x, dv1, dv2, du=1.0):
    """Lava floating_pt by its published equations: Dense a_out(t) = W s(t-1);
    u = u(1-du) + a_in; v = v(1-dv) + u + bias; s = v > 1; v[s] = 0 (vth = 1); LIFReset
    zeroes a population's u and v when its first input arrives (step = its depth) and
    nothing is recorded before (the Lava backend's sample window)."""
    T, B, _ = x.shape
    u1 = v1 = np.zeros((B, W1.shape[0]))
    u2 = v2 = np.zeros((B, W2.shape[0]))
    a1 = np.zeros((B, W1.shape[0]))
    a2 = np.zeros((B, W2.shape[0]))
    out = np.zeros((T, B, W2.shape[0]))
    for t in range(T):
        if t == 1:
            u1 = v1 = np.zeros((B, W1.shape[0]))
        if t == 2:
            u2 = v2 = np.zeros((B, W2.shape[0]))
        u1 = u1 * (1 - du) + a1
        v1 = v1 * (1 - dv1) + u1 + b1
        s1 = v1 > 1.0
        v1 = np.where(s1, 0.0, v1)
        u2 = u2 * (1 - du) + a2
        v2 = v2 * (1 - dv2) + u2 + b2
        s2 = v2 > 1.0
        v2 = np.where(s2, 0.0, v2)
        out[t] = s2 * (t >= 2)
        s1 = s1 * (t >= 1)
        a1 = x[t] @ W1.T  # delivered next step
        a2 = s1 @ W2.T
    return out


def test_lava_float_matches_lava_equations_with_delay():
    rng = np.random.default_rng(5)
    T, B, n0, n1, n2 = 20, 3, 6, 5, 4
    W1, W2 = rng.normal(size=(n1, n0)) * 0.8, rng.normal(size=(n2, n1)) * 1.2
    b1, b2 = rng.normal(size=n1) * 0.4, rng.normal(size=n2) * 0.4  # large: the window start matters
    tau1, tau2 = 4.0, 2.0
    g = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([n0])),
        "fc1": nir.Affine(W1, b1),
        "lif1": nir.LIF(tau=np.full(n1, tau1), r=np.full(n1, tau1), v_leak=np.zeros(n1),
                        v_threshold=np.ones(n1)),
        "fc2": nir.Affine(W2, b2),
        "lif2": nir.LIF(tau=np.full(n2, tau2), r=np.full(n2, tau2), v_leak=np.zeros(n2),
                        v_threshold=np.ones(n2)),
        "output": nir.Output(np.array([n2]))},
        edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"),
               ("lif2", "output")], type_check=False)
    # r = tau makes (dt/tau) * r = 1: v = (1-dv) v + W s + b, Lava's form with bias b
    x = (rng.random((T, B, n0)) < 0.4).astype(float)
    tr = simulate(g, x, profile="lava-float")
    ref = lava_loop(W1, b1, W2, b2, x, 1 / tau1, 1 / tau2)
    np.testing.assert_array_equal(tr.outputs["output"], ref)
    assert tr.total("spikes") > 0
    # two synaptic layers: nothing reaches lif2 before step 2; aligned, it is the plain reading
    plain = simulate(g, x, profile="nir")
    assert not np.array_equal(plain.outputs["output"], tr.outputs["output"])
    np.testing.assert_array_equal(plain.outputs["output"][:-2], tr.outputs["output"][2:])
    # counts: an event is counted when it is delivered, one step after it was sent
    s1 = tr.spikes["lif1"]
    ev = (s1 != 0).sum(axis=1) @ (W2 != 0).sum(axis=0)
    np.testing.assert_array_equal(tr.counts["fc2"]["synaptic_ops"], np.r_[0, ev[:-1]])


def test_registry_is_data_and_validates():
    p = register_profile(dataclasses.replace(PROFILES["nir"], name="test-tmp", default_dt=0.5))
    try:
        assert get_profile("test-tmp") is p and PROFILES["test-tmp"].default_dt == 0.5
        for f in ("integrator", "reset", "reset_timing", "threshold_test", "current_input",
                  "if_input", "synaptic_delay", "multi_spike", "strip_io_dims", "source"):
            assert f in p.as_dict()
    finally:
        PROFILES.pop("test-tmp")
    with pytest.raises(ValueError, match="integrator"):
        Profile(name="bad", honour_metadata=False, dt_from_graph=False, integrator="rk4")
    with pytest.raises(UnsupportedError, match="unknown profile"):
        get_profile("brian")
    for lib in LIBS:
        assert PROFILES[lib].source and PROFILES[lib].description
