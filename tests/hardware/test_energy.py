"""Energy, ANN MACs and latency against hand computations (tiny hand-made graphs and Traces)."""
import itertools
import math

import nir
import numpy as np
import pytest

from spikebridge.hardware.energy import (BUILTIN_MODELS, ann_macs, conv2d_macs, estimate,
                             load_energy_model_toml)
from spikebridge.base.errors import InputError
from spikebridge.hardware.trace import Trace


def tiny_graph(bias2=0.0):
    w1 = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])  # 5 nonzero weights
    w2 = np.array([[1.0, 2.0], [3.0, 4.0]])
    nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "fc1": nir.Affine(weight=w1, bias=np.zeros(2)),
        "if1": nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
        "fc2": nir.Affine(weight=w2, bias=np.full(2, bias2)),
        "if2": nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
        "output": nir.Output(output_type=np.array([2])),
    }
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def tiny_trace():
    a = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    return Trace(
        timesteps=2, batch=2, outputs={},
        counts={
            "fc1": {"macs": a(10, 8)},
            "if1": {"neuron_updates": a(4, 4), "spikes": a(2, 0)},
            "fc2": {"synaptic_ops": a(4, 0)},
            "if2": {"neuron_updates": a(4, 4), "spikes": a(1, 0)},
        },
    )


def test_ann_macs_tiny():
    assert ann_macs(tiny_graph()) == {"fc1": 5, "fc2": 4}


def test_horowitz_per_step_and_once():
    g, tr = tiny_graph(), tiny_trace()
    r = estimate(tr, g, "horowitz-45nm")
    assert r["kind"] == "gpu-style" and r["first_layer"] == "per_step"
    # 18 MACs x 4.6 / 2 samples + 4 SOPs x 0.9 / 2 samples
    assert r["total_pj_per_sample"] == pytest.approx(18 * 4.6 / 2 + 4 * 0.9 / 2)
    assert r["per_node_pj_per_sample"] == pytest.approx({"fc1": 41.4, "fc2": 1.8})
    assert r["ann_pj_per_sample"] == pytest.approx(9 * 4.6)
    assert r["snn_over_ann_ratio"] == pytest.approx(43.2 / 41.4)
    assert "Horowitz" in r["source"] and "ISSCC 2014" in r["source"]
    once = estimate(tr, g, "horowitz-45nm", first_layer="once")
    assert once["first_layer"] == "once"
    assert once["total_pj_per_sample"] == pytest.approx(18 / 2 * 4.6 / 2 + 1.8)
    with pytest.raises(InputError):
        estimate(tr, g, "horowitz-45nm", first_layer="twice")


def test_loihi_hand_computation():
    r = estimate(tiny_trace(), tiny_graph(), "loihi")
    assert r["kind"] == "chip-style"
    per = r["per_node_pj_per_sample"]
    assert per["fc1"] == pytest.approx(18 * 23.6 / 2)  # analog MACs as graded-spike synaptic ops
    assert per["fc2"] == pytest.approx(4 * 23.6 / 2)
    # if1: input events at both steps -> 8 active updates; 2 spikes
    assert per["if1"] == pytest.approx(8 * 81 / 2 + 2 * 1.7 / 2)
    # if2: step 1 has input (active), step 2 has neither input nor spike (inactive)
    assert per["if2"] == pytest.approx(4 * 81 / 2 + 4 * 52 / 2 + 1 * 1.7 / 2)
    assert r["total_pj_per_sample"] == pytest.approx(852.15)
    ops = r["per_operation_pj_per_sample"]
    assert ops["neuron_update_inactive_pj_per_sample"] == pytest.approx(104.0)
    assert sum(ops.values()) == pytest.approx(r["total_pj_per_sample"])
    assert "ann_pj_per_sample" not in r
    assert "Davies" in r["source"]
    # a nonzero bias injects input every step: if2's step 2 becomes active
    rb = estimate(tiny_trace(), tiny_graph(bias2=0.1), "loihi")
    assert rb["per_node_pj_per_sample"]["if2"] == pytest.approx(8 * 81 / 2 + 0.85)


def test_truenorth_all_in():
    r = estimate(tiny_trace(), tiny_graph(), "truenorth")
    assert r["total_pj_per_sample"] == pytest.approx((18 + 4) * 26 / 2)
    assert "Merolla" in r["source"]


def test_builtin_constants_have_sources():
    for m in BUILTIN_MODELS.values():
        assert m.constants and all(c.source for c in m.constants.values())
    assert BUILTIN_MODELS["horowitz-45nm"].constants["mac"].value_pj == 4.6
    assert BUILTIN_MODELS["loihi"].constants["neuron_update_inactive"].value_pj == 52.0


def brute_conv_macs(w, in_shape, stride, pad, dil):
    C_out, C_in, kh, kw = w.shape
    H, W = in_shape[1:]
    Ho = (H + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    n = 0
    for o, c, oy, ox, ky, kx in itertools.product(range(C_out), range(C_in), range(Ho), range(Wo),
                                                  range(kh), range(kw)):
        iy, ix = oy * stride[0] - pad[0] + ky * dil[0], ox * stride[1] - pad[1] + kx * dil[1]
        if 0 <= iy < H and 0 <= ix < W and w[o, c, ky, kx] != 0:
            n += 1
    return n, (C_out, Ho, Wo)


@pytest.mark.parametrize("stride,pad,dil", [((1, 1), (1, 1), (1, 1)), ((2, 1), (2, 0), (1, 2)),
                                            ((1, 1), (0, 0), (1, 1)), ((3, 2), (3, 3), (2, 1))])
def test_conv_macs_against_brute_force(stride, pad, dil):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3))
    w[rng.random(w.shape) < 0.3] = 0.0
    in_shape = (2, 7, 6)
    conv = nir.Conv2d(input_shape=in_shape[1:], weight=w, stride=stride, padding=pad,
                      dilation=dil, groups=1, bias=np.zeros(3))
    expected, out_shape = brute_conv_macs(w, in_shape, stride, pad, dil)
    assert conv2d_macs(conv, in_shape) == expected
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array(in_shape)), "conv": conv,
                            "output": nir.Output(output_type=np.array(out_shape))},
                     edges=[("input", "conv"), ("conv", "output")], type_check=False)
    assert ann_macs(g) == {"conv": expected}
    # padding makes it strictly fewer than the naive out_positions x nonzero weights
    if pad != (0, 0):
        assert expected < out_shape[1] * out_shape[2] * np.count_nonzero(w)


def test_pool_macs():
    nodes = {"input": nir.Input(input_type=np.array([2, 4, 4])),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                   padding=np.array([0, 0])),
             "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=0),
             "fc": nir.Affine(weight=np.ones((3, 8)), bias=np.zeros(3)),
             "output": nir.Output(output_type=np.array([3]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "pool"), ("pool", "flat"), ("flat", "fc"),
                                         ("fc", "output")], type_check=False)
    assert ann_macs(g) == {"pool": 2 * 2 * 2 * 4, "fc": 24}


GOOD = """
name = "mychip"
kind = "chip-style"
[constants.synaptic_op]
value_pj = 10.0
source = "Doe 2030, Table 1"
[constants.spike]
value_pj = 2
source = "Doe 2030, Table 2"
"""


def test_toml_model(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(GOOD)
    m = load_energy_model_toml(p)
    assert m.name == "mychip" and m.kind == "chip-style" and m.pj("spike") == 2.0
    r = estimate(tiny_trace(), tiny_graph(), m)
    assert r["total_pj_per_sample"] == pytest.approx((22 * 10 + 3 * 2) / 2)


def test_toml_missing_source_rejected(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(GOOD.replace('source = "Doe 2030, Table 2"\n', ""))
    with pytest.raises(InputError) as e:
        load_energy_model_toml(p)
    assert "spike" in str(e.value) and "source" in str(e.value) and "m.toml" in str(e.value)
    p.write_text(GOOD.replace('"Doe 2030, Table 1"', '"  "'))
    with pytest.raises(InputError, match="synaptic_op"):
        load_energy_model_toml(p)
    p.write_text(GOOD.replace("value_pj = 10.0", "value_pj = nan"))
    with pytest.raises(InputError, match="synaptic_op"):
        load_energy_model_toml(p)
    p.write_text(GOOD.replace("[constants.spike]", "[constants.teleport]"))
    with pytest.raises(InputError, match="teleport"):
        load_energy_model_toml(p)


# ----------------------------------------------------------------------------- latency

from spikebridge.hardware.latency import LOIHI, estimate_latency, map_cores, synaptic_depth  # noqa: E402


def test_latency_hand_computation():
    tr = tiny_trace()
    out = np.zeros((2, 2, 2))
    out[1, 0, 0] = 1.0  # sample 0: first output at step 2
    out[0, 1, 1] = 0.5  # sample 1: first output at step 1
    tr.outputs["output"] = out
    r = estimate_latency(tr, tiny_graph())
    assert r["cores"] == 2 and r["chips"] == 1 and r["synaptic_depth"] == 2
    assert r["per_layer"]["if1"]["fan_in"] == 3
    # per sample: if1 step1 = 2 active x 8.4 + 5 ops x 3.5; step2 = 2 x 8.4 + 4 x 3.5
    # if2 step1 = 2 x 8.4 + 2 x 3.5; step2 = 2 inactive x 5.3 (no input, no spike)
    assert r["slowest_core_work_ns"] == pytest.approx([34.3, 30.8])
    assert r["bottleneck_layer_per_step"] == ["if1", "if1"]
    assert r["step_time_ns"] == pytest.approx([465 + 34.3, 465 + 30.8])
    mean_step = (499.3 + 495.8) / 2 * 1e-9
    assert r["mean_step_time_s"] == pytest.approx(mean_step)
    assert r["seconds_per_sample"] == pytest.approx((2 + 2) * mean_step)
    assert r["samples_per_second"] == pytest.approx(1 / ((2 + 2) * mean_step))
    assert r["time_to_first_output_s"] == pytest.approx(((2 + 2) + (1 + 2)) / 2 * mean_step)
    assert "Davies" in r["constants"]["barrier_ns"]["source"]
    assert "113-465" in r["constants"]["barrier_ns"]["source"]


def test_core_mapping_limits():
    w = np.ones((2049, 4097), dtype=np.int8)
    nodes = {"input": nir.Input(input_type=np.array([4097])),
             "fc": nir.Linear(weight=w),
             "lif": nir.LIF(tau=np.ones(2049), r=np.ones(2049), v_leak=np.zeros(2049),
                            v_threshold=np.ones(2049)),
             "output": nir.Output(output_type=np.array([2049]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                     type_check=False)
    m = map_cores(g, weight_bits=1)
    assert {k: m["lif"][k] for k in ("neurons", "fan_in", "cores_by_neurons_and_fan_in", "role")} == {
        "neurons": 2049, "fan_in": 4097, "cores_by_neurons_and_fan_in": 3 * 2, "role": "neurons"}
    # even at 1 bit, 2049 x 4097 synapses exceed 8 cores of 128 KB: ceil(8,394,753 / 1,048,576)
    assert m["lif"]["cores"] == m["lif"]["cores_by_synaptic_memory"] == 9
    assert synaptic_depth(g) == 1
    assert LOIHI.cores_per_chip == 128


def conv_net():
    rng = np.random.default_rng(1)
    nodes = {
        "input": nir.Input(input_type=np.array([1, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.uniform(0.1, 1, size=(4, 1, 3, 3)),
                           stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(4)),
        "if1": nir.IF(r=np.ones((4, 8, 8)), v_threshold=np.ones((4, 8, 8))),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0])),
        "if2": nir.IF(r=np.ones((4, 4, 4)), v_threshold=np.ones((4, 4, 4))),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0),
        "fc": nir.Affine(weight=rng.uniform(0.1, 1, size=(10, 64)), bias=np.zeros(10)),
        "output": nir.Output(output_type=np.array([10])),
    }
    edges = [("input", "conv"), ("conv", "if1"), ("if1", "pool"), ("pool", "if2"),
             ("if2", "flat"), ("flat", "fc"), ("fc", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_chains_fan_in_and_depth():
    g = conv_net()
    m = map_cores(g)
    assert {k: (v["neurons"], v["fan_in"], v["role"]) for k, v in m.items()} == {
        "if1": (256, 9, "neurons"), "if2": (64, 4, "neurons"), "output": (10, 64, "readout")}
    assert synaptic_depth(g) == 3  # input->conv->if1, if1->pool->if2, if2->flat->fc->output
    assert ann_macs(g) == {"conv": conv2d_macs(g.nodes["conv"], (1, 8, 8)), "pool": 64 * 4,
                           "fc": 640}
    # a chain of two Affines is one connection; its fan-in is capped by the source size
    nodes = {"input": nir.Input(input_type=np.array([5])),
             "a": nir.Linear(weight=np.ones((10, 5))), "b": nir.Linear(weight=np.ones((3, 10))),
             "n": nir.IF(r=np.ones(3), v_threshold=np.ones(3)),
             "output": nir.Output(output_type=np.array([3]))}
    g2 = nir.NIRGraph(nodes=nodes, edges=[("input", "a"), ("a", "b"), ("b", "n"), ("n", "output")],
                      type_check=False)
    assert map_cores(g2)["n"]["fan_in"] == 5 and synaptic_depth(g2) == 1


def test_pool_events_count_as_layer_work():
    g = conv_net()
    a = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    tr = Trace(timesteps=2, batch=1, outputs={}, counts={
        "conv": {"macs": a(100, 100)}, "if1": {"neuron_updates": a(256, 256), "spikes": a(10, 0)},
        "pool": {"synaptic_ops": a(10, 0)}, "if2": {"neuron_updates": a(64, 64), "spikes": a(0, 0)},
        "fc": {"synaptic_ops": a(0, 0)}})
    r = estimate_latency(tr, g)
    assert r["per_layer"]["if2"]["synaptic_ops_per_sample"] == 10
    # step 1: if1 = 256 x 8.4 + 100 x 3.5; step 2 the same (MACs every step, active)
    assert r["slowest_core_work_ns"] == pytest.approx([256 * 8.4 + 350] * 2)
    e = estimate(tr, g, "loihi")["per_node_pj_per_sample"]
    # if2 active at step 1 (pool events), inactive at step 2
    assert e["if2"] == pytest.approx(64 * 81 + 64 * 52)


def test_conv1d_macs_against_brute_force():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(2, 3, 4))
    w[0, 1, :2] = 0.0
    conv = nir.Conv1d(input_shape=9, weight=w, stride=2, padding=2, dilation=1, groups=1,
                      bias=np.zeros(2))
    n_out = (9 + 4 - 3 - 1) // 2 + 1
    brute = sum(1 for o in range(2) for c in range(3) for x in range(n_out) for k in range(4)
                if 0 <= x * 2 - 2 + k < 9 and w[o, c, k] != 0)
    from spikebridge.hardware.energy import conv_macs
    assert conv_macs(conv, (3, 9)) == brute
