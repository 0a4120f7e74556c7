"""hardware/loihi/fixedpoint.py: Loihi formats (numpy only, no Lava)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nir
import numpy as np

from spikebridge.hardware.loihi.fixedpoint import (BIAS_EXP_MAX, BIAS_MANT_MAX, BIAS_MANT_MIN, VTH_MAX, WEIGHT_EXP_MAX,
                                 WEIGHT_EXP_MIN, chain_matrix, effective_bias, lava_effective_weights,
                                 quantize, quantize_bias, sign_mode)
from spikebridge.hardware.loihi.plan import lower

REPO = Path(__file__).resolve().parents[2]


def test_lava_weight_rules():
    w = np.array([[-300, -3, 0, 3, 255, 300]])
    assert sign_mode(w) == "mixed"
    np.testing.assert_array_equal(lava_effective_weights(w), [[-256, -4, 0, 2, 254, 254]])
    assert sign_mode(np.array([0, 3, 300])) == "excitatory"
    np.testing.assert_array_equal(lava_effective_weights(np.array([0, 3, 300])), [0, 3, 255])
    assert sign_mode(np.array([0, -3, -300])) == "inhibitory"
    np.testing.assert_array_equal(lava_effective_weights(np.array([0, -3, -300])), [0, -3, -255])


def test_bias_mantissa_exponent():
    b = np.array([0.0, 1.0, -4096.0, 4095.4, 5000.0, -1e6, 1e9, 12345.0])
    m, e = quantize_bias(b)
    assert np.all((m >= BIAS_MANT_MIN) & (m <= BIAS_MANT_MAX)) and np.all((e >= 0) & (e <= BIAS_EXP_MAX))
    back = effective_bias(m, e)
    ok = np.abs(b) <= BIAS_MANT_MAX * 2 ** BIAS_EXP_MAX
    assert np.all(np.abs(back[ok] - b[ok]) <= 2.0 ** e[ok] / 2 + 1e-9)  # nearest, smallest exponent
    assert back[6] == BIAS_MANT_MAX << BIAS_EXP_MAX  # saturates


def _graph(rng, theta):
    w1 = rng.normal(size=(20, 16))
    nodes = {"input": nir.Input(np.array([16])), "fc1": nir.Affine(w1, rng.normal(size=20) * 0.1),
             "if1": nir.IF(r=np.ones(20), v_threshold=theta), "fc2": nir.Affine(rng.normal(size=(5, 20)), np.zeros(5)),
             "output": nir.Output(np.array([5]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")])


def test_quantize_ranges_and_error():
    rng = np.random.default_rng(0)
    plan = lower(_graph(rng, rng.uniform(0.5, 1.5, size=20)), 4)
    q = quantize(plan)
    for p in q.meta["populations"]:
        assert 1 <= p["vth"] <= VTH_MAX and 0 <= p["dv"] <= 4095 and p["du"] == 4095
    for c in q.meta["connections"]:
        assert WEIGHT_EXP_MIN <= c["weight_exp"] <= WEIGHT_EXP_MAX
        w = q.arrays[c["terms"][0][0] + "_vals"]
        np.testing.assert_array_equal(lava_effective_weights(w, c["sign_mode"]), w)  # Lava changes nothing
    L = q.layers[0]
    assert L["connections"][0]["weight_rel_err"] < 0.02 and L["row_rel_err_max"] < 0.05
    assert L["bias_abs_err_max"] < 1e-3
    # the integer weights scaled back reproduce the float matrix
    c = q.meta["connections"][0]
    m = chain_matrix(plan.arrays, plan.meta["connections"][0]["terms"], c["rows"], c["cols"])
    w = np.zeros_like(m)
    np.add.at(w, (q.arrays["c0_q_rows"], q.arrays["c0_q_cols"]), q.arrays["c0_q_vals"])
    back = w * 2.0 ** (c["weight_exp"] + q.input_frac) / q.meta["populations"][0]["vth"]
    assert np.abs(back - m).max() <= 2.0 ** (c["weight_exp"] + q.input_frac) / q.meta["populations"][0]["vth"]


def test_per_neuron_thresholds_saturate_only_the_outlier_rows():
    rng = np.random.default_rng(1)
    theta = rng.uniform(0.5, 1.5, size=20)
    theta[0] = 1e-4  # one tiny threshold: its folded row is 10^4 times larger
    q = quantize(lower(_graph(rng, theta), 4))
    L = q.layers[0]
    assert L["connections"][0]["rows_saturated"] == 1
    assert L["row_rel_err_mean"] < 0.1  # the other rows keep their resolution
    q100 = quantize(lower(_graph(np.random.default_rng(1), theta), 4), clip_percentile=100)
    assert q100.layers[0]["row_rel_err_mean"] > 0.5  # fitting the largest row zeroes the others


def test_inspect_lava_cli(tmp_path):
    g = _graph(np.random.default_rng(2), np.full(20, 0.8))
    path = tmp_path / "g.nir"
    nir.write(str(path), g)
    r = subprocess.run([sys.executable, "-m", "spikebridge", "inspect", "--lava", str(path)], cwd=str(REPO),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for word in ("LIFReset", "Dense", "vth", "exp", "rel.err", "raw", "aligned", "fixed point"):
        assert word in r.stdout, word
