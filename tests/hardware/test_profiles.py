"""Library profiles against graphs the libraries exported and simulated themselves.

Cases with non-default settings (the ``*_options`` generators) name in meta.json the
profile string that reads them (``profile``, e.g. ``snntorch:reset=zero``); the others
are read with the bare library profile.

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

PEERS = Path(__file__).resolve().parents[1] / "data" / "peers"
LIBS = ("snntorch", "norse", "sinabs", "spikingjelly")
CASES = sorted(f"{p.parent.name}/{p.name}" for p in PEERS.glob("*/*") if p.is_dir())


def load_case(case: str):
    d = PEERS / case
    return (load_graph(d / "graph.nir"), np.load(d / "input.npy"), np.load(d / "expected.npy"),
            json.loads((d / "meta.json").read_text()))


def case_profile(case: str) -> str:
    return load_case(case)[3].get("profile", case.split("/")[0])


def run_case(case: str, profile):
    graph, x, y, _ = load_case(case)
    g = adapt_graph(graph, profile)
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
    """Every case, read with its profile string, gives the library's own spikes exactly."""
    lib = case.split("/")[0]
    meta = load_case(case)[3]
    for prof in [case_profile(case)] + ([meta["profile_explicit"]] if "profile_explicit" in meta else []):
        out, y, tr = run_case(case, prof)
        assert (y != 0).sum() > 0, "the case must spike"
        if meta.get("output") == "membrane":
            tol = membrane_tolerance(case, y)
            assert np.abs(out - y).max() <= tol, (prof, np.abs(out - y).max(), tol)
        else:
            np.testing.assert_array_equal(out, y, err_msg=prof)
        assert tr.profile == get_profile(prof).label and tr.profile.split(":")[0] == lib


def membrane_tolerance(case: str, y: np.ndarray) -> float:
    """The float32-vs-float64 membrane bound of the conformance suite (one definition)."""
    from tests.conformance.cases import membrane_tolerance as bound
    return bound(load_case(case)[0], y)


OPTION_CASES = sorted(c for c in CASES if "settings" in load_case(c)[3])


def test_corpus_has_the_non_default_settings():
    want = {"snntorch/dense_leaky_zero", "snntorch/dense_leaky_samestep", "snntorch/rleaky_bias",
            "snntorch/rsynaptic", "snntorch/rleaky_samestep", "snntorch/dense_synaptic_zero",
            "snntorch/rleaky_zero", "snntorch/rsynaptic_zero", "norse/dense_lif_export_default",
            "norse/dense_lif_export_seconds", "sinabs/dense_single_spike",
            "sinabs/dense_membrane_reset", "sinabs/dense_min_v_mem",
            "spikingjelly/dense_if_vreset", "spikingjelly/conv_lif_nodecay_vreset",
            "norse/dense_lif_li_readout", "sinabs/dense_iaf_expleak_readout"}
    assert want <= set(OPTION_CASES)


# the reading a case would get without its options, or with an option set wrong: the
# option must change the output (otherwise the case pins nothing)
WRONG = {
    "snntorch/dense_leaky_zero": ["snntorch"],
    "snntorch/dense_leaky_samestep": ["snntorch", "snntorch:reset_delay=true"],
    "snntorch/rleaky_samestep": ["snntorch"],
    "snntorch/dense_synaptic_zero": ["snntorch", "snntorch:reset=zero,reset_delay=false"],
    "snntorch/rleaky_zero": ["snntorch", "snntorch:reset=zero,reset_delay=false"],
    "snntorch/rsynaptic_zero": ["snntorch", "snntorch:reset=zero,reset_delay=false"],
    "sinabs/dense_single_spike": ["sinabs"],
    "sinabs/dense_membrane_reset": ["sinabs"],
    "sinabs/dense_min_v_mem": ["sinabs"],
    "sinabs/dense_single_reset_floor": ["sinabs", "sinabs:spike=single,reset=zero",
                                        "sinabs:spike=single,floor=-threshold"],
    "norse/dense_lif_export_seconds": ["norse:export_dt=0.001"],
    "norse/dense_lif_export_default": ["norse:export_dt=1"],
    "spikingjelly/dense_if_vreset": ["spikingjelly:v_reset=0"],
    "spikingjelly/conv_lif_nodecay_vreset": ["spikingjelly:decay_input=true",
                                             "spikingjelly:v_reset=0"],
    "sinabs/dense_iaf_expleak_readout": ["sinabs:norm_input=true"],
    "norse/dense_lif_li_readout": ["norse:export_dt=1", "norse:dt=0.002"],
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_options_matter(case):
    graph, x, y, _ = load_case(case)
    for prof in WRONG[case]:
        try:
            out, y, _ = run_case(case, prof)
        except GraphError as e:  # a decay out of range under the wrong convention
            assert "decay outside [0, 1]" in str(e)
            continue
        if load_case(case)[3].get("output") == "membrane":
            assert np.abs(out - y).max() > 100 * membrane_tolerance(case, y), (case, prof)
        else:
            assert not np.array_equal(out, y), (case, prof)


def test_recurrent_bias_is_present_from_step_zero():
    """snnTorch RLeaky/RSynaptic add recurrent(spk=0) = the Linear's bias at t = 0: the
    graphs match (test above), and with the recurrent bias zeroed they no longer do."""
    for case in ("snntorch/rleaky_bias", "snntorch/rsynaptic"):
        graph, x, y, _ = load_case(case)
        g = adapt_graph(graph, "snntorch")
        info = analyse(g)
        assert info.back_edges, case
        (src, dst), = info.back_edges
        rec = src if type(g.nodes[src]).__name__ == "Affine" else dst
        assert np.any(np.asarray(g.nodes[rec].bias) != 0)
        tr = simulate(g, x, profile="snntorch", info=info)
        np.testing.assert_array_equal(tr.outputs[info.outputs[0]].reshape(y.shape), y)
        # the same net whose bias reaches the neurons only from step 1 on: drop step 0's
        # bias by a graph whose back edge leaves the neuron (the Affine sits after it)
        nodes = dict(g.nodes)
        nodes[rec] = nir.Affine(weight=np.asarray(g.nodes[rec].weight),
                                bias=np.zeros_like(np.asarray(g.nodes[rec].bias)))
        g0 = nir.NIRGraph(nodes=nodes, edges=list(g.edges), type_check=False)
        tr0 = simulate(g0, x, profile="snntorch", info=analyse(g0))
        assert not np.array_equal(tr0.outputs[info.outputs[0]].reshape(y.shape), y), case


def test_back_edge_delivers_bias_at_step_zero_exactly():
    """Hand-made loop: v[t] = v[t-1] + x[t] + (W s[t-1] + b), IF with a huge threshold:
    the membrane after one step already holds b."""
    b = np.array([0.25, -0.5])
    g = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([2])}),
        "if": nir.IF(r=np.ones(2), v_threshold=np.full(2, 1e9)),
        "rec": nir.Affine(weight=np.eye(2), bias=b),
        "li": nir.Affine(weight=np.eye(2), bias=np.zeros(2)),
        "out": nir.Output(output_type={"output": np.array([2])}),
    }, edges=[("in", "if"), ("if", "rec"), ("rec", "if"), ("in", "li"), ("li", "out")],
        type_check=False)
    info = analyse(g)
    assert info.back_edges == [("rec", "if")]
    from spikebridge.hardware.eventsim import run
    acts = run(g, np.zeros((3, 1, 2)), profile="nir", info=info)[0]
    # v(t) = sum of b over t+1 steps (the back edge delivers b at step 0 too); no spikes
    assert np.array_equal(acts["rec"][:, 0], np.tile(b, (3, 1)))


def test_nested_subgraphs_are_flattened():
    """snnTorch writes a bare RLeaky as a nested graph {input, lif, w_rec, output}."""
    from spikebridge.hardware.eventsim.adapt import flatten_subgraphs
    graph, x, y, _ = load_case("snntorch/rleaky_bias")
    g = adapt_graph(graph, "snntorch")
    lif = next(n for n, v in g.nodes.items() if type(v).__name__ == "LIF" and
               any((n, b) in g.edges for b in g.nodes if type(g.nodes[b]).__name__ == "Affine"
                   and (b, n) in g.edges))
    rec = next(b for a, b in g.edges if a == lif and (b, lif) in g.edges)
    inner = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([8])}),
                                "lif": g.nodes[lif], "w_rec": g.nodes[rec],
                                "output": nir.Output(output_type={"output": np.array([8])})},
                         edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"),
                                ("lif", "output")], type_check=False)
    nodes = {k: v for k, v in g.nodes.items() if k not in (lif, rec)}
    nodes["sub"] = inner
    edges = [(("sub" if a == lif else a), ("sub" if b == lif else b)) for a, b in g.edges
             if rec not in (a, b)]
    nested = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    flat = flatten_subgraphs(nested)
    assert {"sub.lif", "sub.w_rec"} <= set(flat.nodes) and "sub" not in flat.nodes
    info = analyse(adapt_graph(nested, "snntorch"))
    tr = simulate(adapt_graph(nested, "snntorch"), x, profile="snntorch", info=info)
    np.testing.assert_array_equal(tr.outputs[info.outputs[0]].reshape(y.shape), y)


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
    cases = [c for c in CASES if c.startswith(lib + "/") and case_profile(c) == lib]
    abl = dataclasses.replace(PROFILES[lib], name=f"{lib}-ablated", **ABLATIONS[lib])
    for prof in ("nir", abl):
        bad = 0
        for c in cases:
            try:
                out, y, _ = run_case(c, prof) if prof != "nir" else _strict_after_adapt(c)
            except GraphError as e:  # plain NIR at dt = 1: decays far outside [0, 1]
                assert prof == "nir" and "decay outside [0, 1]" in str(e)
                bad += 1
                continue
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


# ---- profile strings, detection, warnings, refusals

def test_profile_strings_parse_and_errors_are_one_line():
    p = get_profile("snntorch:reset=zero")
    assert (p.name, p.reset, p.label) == ("snntorch", "zero", "snntorch:reset=zero")
    p = get_profile("snntorch:reset_delay=false, dt=2e-4")
    assert p.reset_timing == "same_step_guarded" and p.default_dt == 2e-4
    assert get_profile("snntorch").reset_timing == "next_step"
    p = get_profile("sinabs:spike=single,reset=zero,floor=-threshold")
    assert (p.multi_spike, p.reset, p.v_floor) == (False, "zero", "-threshold")
    assert get_profile("sinabs:floor=-1").v_floor == -1.0
    assert get_profile("norse:dt=2e-3").default_dt == pytest.approx(2e-6)
    assert get_profile("spikebridge:dt=0.5").dt_from_graph is False
    bad = {"snntorch:reset=soft": "reset takes subtract|zero",
           "snntorch:beta=1": "options: reset=subtract|zero, reset_delay=true|false",
           "sinabs:dt=-1": "dt takes <number > 0>",
           "norse:export_dt=auto,export_dt=1": "given twice",
           "lava-float:dt=1": "takes no options",
           "brian:dt=1": "unknown profile 'brian'"}
    for spec, msg in bad.items():
        with pytest.raises(UnsupportedError) as e:
            get_profile(spec)
        assert msg in str(e.value) and "\n" not in str(e.value), spec


def test_detects_the_library_of_every_peer_graph():
    from spikebridge.hardware.eventsim.detect import candidates, detect_library
    named = 0
    for case in CASES:
        lib = case.split("/")[0]
        graph = load_case(case)[0]
        cands = candidates(graph)
        assert cands in ([lib], []), (case, cands)  # never a wrong library
        named += detect_library(graph)[0] == lib
    # unnamed: sinabs/conv_iaf, IF layers only and no time axis left in its Input type
    assert named >= len(CASES) - 1
    # a hand-made plain NIR graph (IF r = 1, no leading Input axis) names no library
    plain = nir.NIRGraph(nodes={"in": nir.Input(input_type={"input": np.array([3])}),
                                "fc": nir.Affine(weight=np.eye(3), bias=np.zeros(3)),
                                "if": nir.IF(r=np.ones(3), v_threshold=np.ones(3)),
                                "out": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("in", "fc"), ("fc", "if"), ("if", "out")], type_check=False)
    assert detect_library(plain) == (None, [])
    nodes = dict(plain.nodes, fc2=nir.Affine(weight=np.eye(3), bias=np.zeros(3)),
                 if2=nir.IF(r=np.ones(3), v_threshold=np.ones(3)))
    deeper = nir.NIRGraph(nodes=nodes, edges=[("in", "fc"), ("fc", "if"), ("if", "fc2"),
                                              ("fc2", "if2"), ("if2", "out")], type_check=False)
    assert detect_library(deeper) == (None, [])  # IF r = 1 counts once, however many layers


def test_foreign_graph_without_profile_warns_with_the_profile_to_pass():
    from spikebridge.hardware.eventsim.adapt import ForeignGraphWarning
    graph, x, y, _ = load_case("snntorch/dense_leaky_zero")
    with pytest.warns(ForeignGraphWarning, match="snntorch export.*--profile snntorch"):
        adapt_graph(graph, "spikebridge")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapt_graph(graph, "snntorch:reset=zero")  # no warning with a profile
        ours = nir.NIRGraph(nodes=dict(graph.nodes), edges=list(graph.edges), type_check=False,
                            metadata={"spikebridge": {"dt": 1.0}})
        adapt_graph(ours, "spikebridge")  # nor on our own graphs


def test_decay_outside_range_is_refused_with_node_and_numbers():
    graph, x, y, _ = load_case("snntorch/dense_leaky")
    g = adapt_graph(graph, "snntorch")
    with pytest.raises(GraphError, match=r"node '1' \(LIF\) dt/tau = 1/0.0005 = 2000"):
        simulate(g, x, profile="snntorch", dt=1.0, info=analyse(g))
    g = adapt_graph(load_case("norse/dense_lif_export_default")[0], "norse:export_dt=1")
    with pytest.raises(GraphError, match="decay outside"):
        simulate(g, x[..., :10], profile="norse:export_dt=1", info=analyse(g))


def test_adapt_is_idempotent_for_a_profile():
    graph = load_case("norse/dense_lif_export_seconds")[0]
    g1 = adapt_graph(graph, "norse:export_dt=1")
    assert adapt_graph(g1, "norse:export_dt=1") is g1
    tau = [np.asarray(v.tau) for v in g1.nodes.values() if type(v).__name__ == "LIF"][0]
    tau0 = [np.asarray(v.tau) for v in graph.nodes.values() if type(v).__name__ == "LIF"][0]
    np.testing.assert_allclose(tau, tau0 * 1e-3)


def test_describe_reading_names_options_and_assumptions():
    from spikebridge.hardware.eventsim.detect import describe_reading
    text = "\n".join(describe_reading(load_case("norse/dense_lif_export_seconds")[0], "norse"))
    assert "export_dt=auto -> 1" in text and "true time constants" in text
    assert "dt=0.001: library default" in text and "assumes:" in text
    text = "\n".join(describe_reading(load_case("sinabs/dense_min_v_mem")[0], "sinabs:floor=-1"))
    assert "floor=-1.0: given" in text and "membrane floor -1.0" in text
    text = "\n".join(describe_reading(load_case("snntorch/dense_leaky")[0], "spikebridge"))
    assert "warning:" in text and "--profile snntorch" in text


def test_cli_profile_with_options(tmp_path):
    from spikebridge.toolchain.cli import main
    d = PEERS / "snntorch" / "dense_leaky_zero"
    y = np.load(d / "expected.npy")
    out = tmp_path / "o.npz"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--profile", "snntorch:reset=zero", "--out", str(out)]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["output"].reshape(y.shape), y)
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--profile", "snntorch:reset=soft", "--out", str(tmp_path / "o2.npz")]) == 3
    assert not (tmp_path / "o2.npz").exists()


# ---- graphs written by older nir releases (scripts/peer_graphs/make_old_nir.py)

OLD = Path(__file__).resolve().parents[1] / "data" / "nir_versions"


@pytest.mark.parametrize("kind", ["rnn", "conv"])
def test_older_nir_files_load_and_run_alike(kind):
    """nir 0.1.0 (no version field), 0.2.0 and 1.0.0 wrote the same graph; nir 0.1/0.2's
    Conv2d has no input_shape (taken from the predecessor). Every file loads, holds the
    same parameters and runs to the same output as the nir 1.0.0 file."""
    ref = load_graph(OLD / "1.0.0" / f"{kind}.nir")
    info = analyse(ref)
    x = (np.random.default_rng(0).random((8, 2, *info.shapes[info.inputs[0]])) < 0.5).astype(float)
    want = simulate(ref, x, profile="nir", dt=1.0).outputs["output"]
    assert np.count_nonzero(want) > 0
    for v in ("0.1.0", "0.2.0"):
        g = load_graph(OLD / v / f"{kind}.nir")
        assert sorted(g.nodes) == sorted(ref.nodes) and sorted(map(tuple, g.edges)) == sorted(map(tuple, ref.edges))
        for n, node in ref.nodes.items():
            for k in ("weight", "bias", "tau", "tau_mem", "tau_syn", "v_threshold", "r"):
                if hasattr(node, k) and getattr(node, k) is not None:
                    np.testing.assert_array_equal(np.asarray(getattr(g.nodes[n], k)),
                                                  np.asarray(getattr(node, k)), err_msg=f"{v} {n}.{k}")
        np.testing.assert_array_equal(simulate(g, x, profile="nir", dt=1.0).outputs["output"], want)


def test_unreadable_old_file_is_refused_with_its_version(tmp_path):
    import shutil

    import h5py
    p = tmp_path / "old.nir"
    shutil.copy(OLD / "0.2.0" / "rnn.nir", p)
    with h5py.File(p, "r+") as f:  # a field nir 1.0.8 does not know, as an old release might write
        f["node/nodes/lif1/alpha"] = np.ones(5)
        del f["version"]
        f["version"] = "0.0.5"
    with pytest.raises(GraphError, match=r"written by nir 0\.0\.5, this reader is nir 1\.0\.8"):
        load_graph(p)
