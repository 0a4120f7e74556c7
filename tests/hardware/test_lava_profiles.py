"""Third-party graphs on the Loihi plan (issue 16 item 4): the profile and --dt reach the
lowering through eventsim's own reading, decays are range-checked, what Lava cannot express
is refused by name or run with --allow-reset-to-zero (and says so), recurrent connections are
a Dense from a population to itself, LI readouts a LIF that never fires.

The per-case agreement with the libraries is pinned by tests/conformance (exact cases on
Lava float, loihi-fixed == lava-fixed, the fixed-point floor); the table is in docs/lava.md.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from spikebridge.base.errors import InputError
from spikebridge.hardware.backends import RunOptions, run_graph
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import load_graph
from spikebridge.hardware.loihi import fixed_trace
from spikebridge.hardware.loihi.plan import lower, read_as
from spikebridge.toolchain.cli import main
from tests.conformance.cases import PEERS, peer_profile
from tests.hardware.test_lava_fixed import assert_same_run


def _case(c):
    d = PEERS / c
    return load_graph(d / "graph.nir"), np.load(d / "input.npy"), np.load(d / "expected.npy")


def _pops(plan):
    return {p["name"]: p for p in plan.meta["populations"]}


def test_the_profile_and_dt_reach_the_lowering():
    g, _, _ = _case("norse/dense_lif_export_default")
    plain = _pops(lower(read_as(g, "norse"), 4))
    # Norse: Euler at dt = 1e-3 on true time constants: dv = dt/tau; --dt doubles it
    doubled = _pops(lower(read_as(g, "norse", dt=2e-6), 4))
    for n, p in plain.items():
        assert p["dv"] > 0 and doubled[n]["dv"] == pytest.approx(2 * p["dv"], rel=1e-12), n
    # the same graph exported with true time constants, told so by the option: the same plan
    g2, _, _ = _case("norse/dense_lif_export_seconds")
    secs = _pops(lower(read_as(g2, "norse:export_dt=1.0"), 4))
    assert sorted(secs) == sorted(plain)
    assert [secs[n][k] for n in plain for k in ("dv", "du")] == \
        pytest.approx([plain[n][k] for n in plain for k in ("dv", "du")], rel=1e-6)
    # snnTorch: tau = dt/(1-beta) at dt = 1e-4: dv = 1 - beta (not dt/tau at dt = 1)
    gs, _, _ = _case("snntorch/dense_leaky_zero")
    pops = _pops(lower(read_as(gs, "snntorch:reset=zero"), 4))
    assert all(0 < p["dv"] < 1 for p in pops.values())
    assert lower(read_as(gs, "snntorch:reset=zero"), 4).meta["profile"] == "snntorch:reset=zero"


def test_a_decay_outside_lavas_range_is_refused_with_the_node_and_numbers():
    gs, _, _ = _case("snntorch/dense_leaky_zero")
    with pytest.raises(InputError) as e:
        lower(read_as(gs, "snntorch:reset=zero", dt=1.0), 4)
    msg = str(e.value)
    assert "dv = 1 - decay" in msg and "dt = 1" in msg and "tau = " in msg and "outside [0, 1]" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("case,words", [
    ("snntorch/dense_leaky", "subtract reset (profile snntorch)"),
    ("snntorch/dense_synaptic_zero", "reset to zero one step late"),
    ("sinabs/dense_membrane_reset", "MultiSpike"),
    ("sinabs/dense_single_reset_floor", "membrane floor"),
])
def test_what_lava_cannot_express_is_refused_or_run_with_the_flag(case, words):
    g, x, y = _case(case)
    prof = peer_profile(case)
    with pytest.raises(InputError) as e:
        run_graph(g, x, "loihi-fixed", RunOptions(profile=prof))
    assert words in str(e.value) and "--allow-reset-to-zero" in str(e.value)
    tr = run_graph(g, x, "loihi-fixed", RunOptions(profile=prof, allow_reset_to_zero=True))
    assert "allow_reset_to_zero=True" in tr.meta["approximation"]
    out = next(iter(tr.outputs.values())).reshape(y.shape)
    assert 0.5 < np.mean(out == y) < 1.0  # an approximation, and not a broken one


def test_recurrent_integer_model_fast_equals_reference():
    for case in ("snntorch/rleaky_bias", "snntorch/rsynaptic", "snntorch/rsynaptic_zero"):
        g, x, _ = _case(case)
        g = read_as(g, peer_profile(case))
        plan = lower(g, x.shape[0], allow_reset_to_zero=True)
        rec = [c for c in plan.meta["connections"] if c.get("recurrent")]
        assert len(rec) == 1 and rec[0]["source"] == rec[0]["target"], case
        assert plan.meta["window"] > x.shape[0]  # idle steps: no spike into the next sample
        a = fixed_trace(g, x, allow_reset_to_zero=True, record_state=True)
        b = fixed_trace(g, x, allow_reset_to_zero=True, record_state=True, engine="reference")
        assert_same_run(a, b)


def test_recurrent_bias_is_present_from_the_first_step():
    """snnTorch RLeaky adds the recurrent Linear's bias from t = 0: in the plan it is part of
    the population's bias (applied at every step, the first included), scaled like its weights."""
    import copy
    g, x, _ = _case("snntorch/rleaky_bias")
    g = read_as(g, "snntorch")
    rec_bias = np.asarray(g.nodes["1.w_rec"].bias, dtype=np.float64)
    assert np.any(rec_bias != 0)
    g0 = copy.deepcopy(g)
    g0.nodes["1.w_rec"].bias = np.zeros_like(rec_bias)
    p1, p0 = (lower(h, 4, allow_reset_to_zero=True) for h in (g, g0))
    kp = _pops(p1)["1.lif"]
    # LIF: bias row i = c * r_i * b_i / theta_i with c = dv (snnTorch's Euler): dv * r * b / theta
    lif = g.nodes["1.lif"]
    want = kp["dv"] * np.asarray(lif.r) * rec_bias / np.asarray(lif.v_threshold)
    np.testing.assert_allclose(p1.arrays["1.lif__bias"] - p0.arrays["1.lif__bias"], want, rtol=1e-12)
    # and the integer model: with the bias, the first step already differs (no input needed)
    z = np.zeros((3, 1) + x.shape[2:], dtype=x.dtype)
    s1 = fixed_trace(g, z, allow_reset_to_zero=True, record_state=True).meta["final_state"]
    s0 = fixed_trace(g0, z, allow_reset_to_zero=True, record_state=True).meta["final_state"]
    assert not np.array_equal(s1["v__1.lif"], s0["v__1.lif"])


def test_inspect_lava_says_how_a_third_party_graph_runs(capsys):
    d = PEERS / "snntorch" / "rleaky_bias"
    assert main(["inspect", "--lava", str(d / "graph.nir"), "--profile", "snntorch"]) == 0
    out = capsys.readouterr().out
    assert "does NOT run as is" in out and "subtract reset" in out and "recurrent connections" in out
    d = PEERS / "norse" / "dense_lif_li_readout"
    assert main(["inspect", "--lava", str(d / "graph.nir"), "--profile", "norse"]) == 0
    out = capsys.readouterr().out
    assert "does NOT run" not in out and "read with profile norse" in out and "membrane readout" in out
    assert "fixed point: v in units of twice a bound" in out and "fixed point: not lowerable" not in out


@pytest.mark.lava
def test_cli_simulate_on_lava_reproduces_norse(tmp_path, capsys):
    d = PEERS / "norse" / "dense_lif_cuba"
    out = tmp_path / "o.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a profile given: no foreign-graph warning
        code = main(["--no-progress", "simulate", str(d / "graph.nir"), "--profile", "norse", "--backend", "lava",
                     "--input", str(d / "input.npy"), "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "lava" and "reset_to_zero" not in summary
    z = np.load(out)
    y = np.load(d / "expected.npy")
    key = next(k for k in z.files if k.startswith("output"))
    np.testing.assert_array_equal(z[key].reshape(y.shape), y)


@pytest.mark.lava
def test_recurrent_and_approximated_graphs_bit_exact_on_lava_fixed(capsys):
    """lava-fixed == loihi-fixed on the recurrent snnTorch graphs (a Dense from the population
    to itself, the gated idle step) and the sinabs approximations, one CLI run reporting the
    cost of the approximation against eventsim."""
    for case in ("snntorch/rleaky_bias", "snntorch/rsynaptic_zero", "sinabs/dense_single_spike"):
        g, x, _ = _case(case)
        o = RunOptions(profile=peer_profile(case), allow_reset_to_zero=True)
        a = run_graph(g, x, "lava-fixed", o)
        b = run_graph(g, x, "loihi-fixed", o)
        for k in b.outputs:
            np.testing.assert_array_equal(a.outputs[k], b.outputs[k], err_msg=case)
        for k in b.spikes:
            np.testing.assert_array_equal(np.asarray(a.spikes[k]), np.asarray(b.spikes[k]), err_msg=case)

@pytest.mark.lava
def test_cli_reports_the_cost_of_the_approximation(tmp_path, capsys):
    d = PEERS / "snntorch" / "rleaky_bias"
    out = tmp_path / "o.npz"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--profile", "snntorch", "--backend", "lava",
                 "--allow-reset-to-zero", "--input", str(d / "input.npy"), "--out", str(out)]) == 0
    rz = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reset_to_zero"]
    assert "subtract reset run as reset to zero" in rz["approximation"]
    assert 0.5 < rz["output_agreement_with_eventsim"] < 1.0 and out.exists()


def test_threshold_groups_keep_a_recurrent_population_whole():
    from spikebridge.hardware.loihi.groups import split_threshold_groups
    g, x, _ = _case("snntorch/rleaky_bias")
    g = read_as(g, "snntorch")
    plan = lower(g, x.shape[0], allow_reset_to_zero=True)
    split = split_threshold_groups(plan, max_span=1.0001)
    names = {p["name"] for p in split.meta["populations"]}
    assert "1.lif" in names and any(n.startswith("3~g") for n in names)  # 3 is split, 1.lif not
    a = fixed_trace(g, x, allow_reset_to_zero=True, threshold_groups=1.0001)
    b = fixed_trace(g, x, allow_reset_to_zero=True, threshold_groups=1.0001, engine="reference")
    for k in a.outputs:
        np.testing.assert_array_equal(a.outputs[k], b.outputs[k])


def test_our_own_lif_decay_is_range_checked_too():
    import nir
    n = 3
    nodes = {"input": nir.Input(np.array([2])), "fc": nir.Affine(np.ones((n, 2)), np.zeros(n)),
             "lif": nir.LIF(tau=np.full(n, 0.5), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n)),
             "output": nir.Output(np.array([n]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False,
                     metadata={"spikebridge": {"dt": 1.0}})
    with pytest.raises(InputError) as e:
        lower(g, 4)
    assert "lif: dv = dt/tau = 1/0.5 = 2 is outside [0, 1]" in str(e.value)
    assert lower(read_as(g, None, dt=0.25), 4).meta["populations"][0]["dv"] == 0.5
