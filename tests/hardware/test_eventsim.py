"""spikebridge.hardware.eventsim against hand-computed sequences, plain numpy loops and brute-force counts."""
import itertools

import nir
import numpy as np
import pytest

from spikebridge.base.errors import DatasetError, GraphError, UnsupportedError
from spikebridge.hardware.eventsim import PROFILES, count_ops, fanout, run, simulate
from spikebridge.hardware.graph import analyse


def chain(*named, in_shape, edges=None, metadata=None):
    nodes = {"input": nir.Input(np.array(in_shape))}
    nodes.update(dict(named))
    names = list(nodes)
    nodes["output"] = nir.Output(None)  # shape inferred by analyse
    if edges is None:
        edges = [(a, b) for a, b in zip(names + [], names[1:] + ["output"])]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata=metadata or {})


def if_graph(meta=None, n=1, thr=1.0):
    node = nir.IF(r=np.ones(n), v_threshold=np.full(n, thr),
                  metadata={"spikebridge": meta} if meta else {})
    return chain(("if", node), in_shape=[n])


def run_if(meta=None, T=10, x=0.25, profile="spikebridge"):
    g = if_graph(meta)
    tr = simulate(g, np.full((T, 1, 1), x), profile=profile)
    return tr.outputs["output"][:, 0, 0], tr


def where(s):
    return list(np.flatnonzero(s))


def test_if_hand_sequences():
    # v: .25 .5 .75 1.0 1.25 ... (all exact in binary)
    s, tr = run_if()
    assert where(s) == [4, 9]  # gt, reset to zero
    assert tr.spikes["if"].dtype == bool and where(tr.spikes["if"][:, 0, 0]) == [4, 9]
    assert where(run_if({"reset": "subtract"})[0]) == [4, 8]  # 1.25 -> .25 -> 1.0 no, 1.25
    assert where(run_if({"threshold_test": "ge"})[0]) == [3, 7]
    assert where(run_if({"threshold_test": "ge", "reset": "subtract"})[0]) == [3, 7]
    assert where(run_if({"v_init": 0.5})[0]) == [2, 7]
    s, _ = run_if({"spike_amplitude": 2.0})
    assert set(np.unique(s)) == {0.0, 2.0} and where(s) == [4, 9]
    # the nir profile ignores our metadata
    s, tr = run_if({"reset": "subtract", "threshold_test": "ge", "v_init": 0.5,
                    "spike_amplitude": 3.0}, profile="nir")
    assert where(s) == [4, 9] and s.max() == 1.0 and tr.profile == "nir"


def test_if_v_reset_and_dt():
    g = chain(("if", nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.full(1, 0.5))),
              in_shape=[1])
    s = simulate(g, np.full((6, 1, 1), 0.25)).outputs["output"][:, 0, 0]
    assert where(s) == [4]  # after reset to .5: .75 1.0 (no) ...
    # dt scales the input: dt=0.5 halves each step
    s = simulate(if_graph(), np.full((10, 1, 1), 0.5), dt=0.5).outputs["output"][:, 0, 0]
    assert where(s) == [4, 9]
    g = if_graph()
    g.metadata = {"spikebridge": {"dt": 0.5}}
    assert where(simulate(g, np.full((10, 1, 1), 0.5)).outputs["output"][:, 0, 0]) == [4, 9]
    # nir profile ignores graph dt
    assert where(simulate(g, np.full((10, 1, 1), 0.5), profile="nir")
                 .outputs["output"][:, 0, 0]) == [2, 5, 8]  # .5 1.0 1.5(spike)


def test_lif_li_integrator_hand():
    lif = nir.LIF(tau=np.full(1, 2.0), r=np.ones(1), v_leak=np.zeros(1),
                  v_threshold=np.full(1, 0.9))
    g = chain(("lif", lif), in_shape=[1])
    s = simulate(g, np.ones((6, 1, 1))).outputs["output"][:, 0, 0]
    # v: .5 .75 .875 .9375(spike, ->0) .5 .75
    assert where(s) == [3]
    li = nir.LI(tau=np.full(1, 2.0), r=np.ones(1), v_leak=np.zeros(1))
    v = simulate(chain(("li", li), in_shape=[1]), np.ones((4, 1, 1))).outputs["output"][:, 0, 0]
    np.testing.assert_array_equal(v, [0.5, 0.75, 0.875, 0.9375])
    integ = nir.I(r=np.full(1, 2.0))
    v = simulate(chain(("i", integ), in_shape=[1]), np.ones((3, 1, 1))).outputs["output"][:, 0, 0]
    np.testing.assert_array_equal(v, [2.0, 4.0, 6.0])
    cuba = nir.CubaLIF(tau_syn=np.full(1, 2.0), tau_mem=np.full(1, 2.0), r=np.ones(1),
                       v_leak=np.zeros(1), v_threshold=np.full(1, 0.5), w_in=np.ones(1))
    tr = simulate(chain(("cuba", cuba), in_shape=[1]), np.ones((4, 1, 1)))
    # i: .5 .75 .875 .9375 ; v: .25 .5 .6875(spike->0) .46875
    assert where(tr.outputs["output"][:, 0, 0]) == [2]


def test_affine_if_against_numpy_loop():
    rng = np.random.default_rng(3)
    T, B, n_in, n_out = 12, 5, 7, 6
    W, b = rng.normal(size=(n_out, n_in)), rng.normal(size=n_out) * 0.1
    thr = rng.random(n_out) + 0.5
    meta = {"reset": "subtract", "v_init": thr / 2}
    g = chain(("fc", nir.Affine(W, b)),
              ("if", nir.IF(r=np.ones(n_out), v_threshold=thr, metadata={"spikebridge": meta})),
              in_shape=[n_in])
    x = rng.random((T, B, n_in))
    tr = simulate(g, x)
    v = np.broadcast_to(thr / 2, (B, n_out)).copy()
    ref = np.zeros((T, B, n_out))
    for t in range(T):
        v += x[t] @ W.T + b
        s = v > thr
        v -= s * thr
        ref[t] = s
    np.testing.assert_allclose(tr.outputs["output"], ref)
    assert tr.timesteps == T and tr.batch == B
    assert tr.total("neuron_updates") == T * B * n_out
    assert tr.total("spikes") == int(ref.sum())
    # samples never interact: running one sample alone gives the same rows
    tr1 = simulate(g, x[:, 2:3])
    np.testing.assert_array_equal(tr1.outputs["output"][:, 0], tr.outputs["output"][:, 2])


def direct_conv(x, w, b, stride, pad, dil, groups):
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    og = co // groups
    y = np.zeros((n, co, ho, wo))
    for s, o, i, j in itertools.product(range(n), range(co), range(ho), range(wo)):
        g = o // og
        acc = b[o]
        for ci, a, bb in itertools.product(range(cg), range(kh), range(kw)):
            acc += w[o, ci, a, bb] * xp[s, g * cg + ci, i * stride[0] + a * dil[0],
                                         j * stride[1] + bb * dil[1]]
        y[s, o, i, j] = acc
    return y


CONV_CASES = [((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 2), 2), ((2, 3), (1, 0), (2, 1), 4)]


@pytest.mark.parametrize("stride,pad,dil,groups", CONV_CASES)
def test_conv2d_against_direct(stride, pad, dil, groups):
    rng = np.random.default_rng(4)
    cin, cout, h, w = 4, 8, 7, 9
    W = rng.normal(size=(cout, cin // groups, 3, 2))
    b = rng.normal(size=cout)
    conv = nir.Conv2d(input_shape=(h, w), weight=W, stride=stride, padding=pad, dilation=dil,
                      groups=groups, bias=b)
    g = chain(("conv", conv), in_shape=[cin, h, w])
    x = rng.normal(size=(2, 3, cin, h, w))
    y = simulate(g, x).outputs["output"]
    ref = direct_conv(x.reshape(6, cin, h, w), W, b, stride, pad, dil, groups)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_conv1d_and_pools_against_loops():
    rng = np.random.default_rng(5)
    W = rng.normal(size=(3, 2, 3))
    conv = nir.Conv1d(input_shape=8, weight=W, stride=2, padding=1, dilation=1, groups=1,
                      bias=np.zeros(3))
    x = rng.normal(size=(2, 1, 2, 8))
    y = simulate(chain(("c", conv), in_shape=[2, 8]), x).outputs["output"]
    ref = direct_conv(x.reshape(2, 2, 8, 1), W[..., None], np.zeros(3), (2, 1), (1, 0), (1, 1), 1)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, atol=1e-12)
    for cls, div in ((nir.SumPool2d, 1.0), (nir.AvgPool2d, 4.0)):
        pool = cls(kernel_size=np.array([2, 2]), stride=np.array([2, 1]), padding=np.array([1, 0]))
        x = rng.normal(size=(2, 2, 3, 5, 4))
        y = simulate(chain(("p", pool), in_shape=[3, 5, 4]), x).outputs["output"]
        ones = np.zeros((3, 1, 2, 2))
        for c in range(3):
            ones[c] = 1.0 / div
        ref = direct_conv(x.reshape(4, 3, 5, 4), ones, np.zeros(3), (2, 1), (1, 0), (1, 1), 3)
        np.testing.assert_allclose(y.reshape(ref.shape), ref, atol=1e-12)


def test_dense_counts_closed_form():
    rng = np.random.default_rng(6)
    T, B = 9, 4
    W1 = rng.normal(size=(6, 5)) * (rng.random((6, 5)) > 0.4)
    W2 = rng.normal(size=(3, 6)) * (rng.random((3, 6)) > 0.5)
    g = chain(("fc1", nir.Affine(W1, np.zeros(6))),
              ("if1", nir.IF(np.ones(6), np.full(6, 0.5))),
              ("fc2", nir.Linear(W2)),
              ("if2", nir.IF(np.ones(3), np.ones(3))), in_shape=[5])
    x = rng.random((T, B, 5)) * (rng.random((T, B, 5)) > 0.3)
    tr = simulate(g, x)
    c = tr.counts
    np.testing.assert_array_equal(c["fc1"]["macs"], (x != 0).sum(1) @ (W1 != 0).sum(0))
    assert c["fc1"]["synaptic_ops"].sum() == 0
    s1 = tr.spikes["if1"]
    np.testing.assert_array_equal(c["fc2"]["synaptic_ops"], s1.sum(1) @ (W2 != 0).sum(0))
    assert c["fc2"]["macs"].sum() == 0
    np.testing.assert_array_equal(c["if1"]["spikes"], s1.reshape(T, -1).sum(1))
    np.testing.assert_array_equal(c["if1"]["neuron_updates"], np.full(T, 6 * B))
    for n in c:
        assert set(c[n]) == {"synaptic_ops", "macs", "neuron_updates", "spikes"}
        assert all(v.dtype == np.int64 and v.shape == (T,) for v in c[n].values())
    # count_ops works from the activations alone
    acts, info, _, _ = run(g, x)
    given = {k: (v != 0) if k in ("if1", "if2") else v for k, v in acts.items() if k != "output"}
    again = count_ops(g, info, given)  # bool spikes, Output node absent
    for n in c:
        for k in c[n]:
            np.testing.assert_array_equal(again[n][k], c[n][k])


def brute_conv_events(ev, w, stride, pad, dil, groups):
    """Count (input event, nonzero weight) pairs by looping over outputs and taps."""
    ev = np.asarray(ev) != 0
    T, B, c, h, wd = ev.shape
    co, cg, kh, kw = w.shape
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    og = co // groups
    out = np.zeros(T, dtype=np.int64)
    for o, i, j, ci, a, bb in itertools.product(range(co), range(ho), range(wo), range(cg),
                                               range(kh), range(kw)):
        if w[o, ci, a, bb] == 0:
            continue
        r, q = i * stride[0] - pad[0] + a * dil[0], j * stride[1] - pad[1] + bb * dil[1]
        if 0 <= r < h and 0 <= q < wd:
            out += ev[:, :, (o // og) * cg + ci, r, q].sum(1)
    return out


@pytest.mark.parametrize("stride,pad,dil,groups", CONV_CASES)
def test_conv_counts_brute_force(stride, pad, dil, groups):
    rng = np.random.default_rng(7)
    cin, cout, h, w = 4, 4, 6, 7
    W = rng.normal(size=(cout, cin // groups, 3, 3)) * (rng.random((cout, cin // groups, 3, 3)) > 0.3)
    conv = nir.Conv2d(input_shape=(h, w), weight=W, stride=stride, padding=pad, dilation=dil,
                      groups=groups, bias=np.zeros(cout))
    # Threshold makes the conv's input spikes; Input -> conv directly gives macs
    g = chain(("th", nir.Threshold(np.full((cin, h, w), 0.5))), ("conv", conv),
              in_shape=[cin, h, w])
    x = rng.random((3, 2, cin, h, w))
    tr = simulate(g, x)
    ev = x > 0.5
    np.testing.assert_array_equal(tr.counts["conv"]["synaptic_ops"],
                                  brute_conv_events(ev, W, stride, pad, dil, groups))
    assert tr.counts["conv"]["macs"].sum() == 0
    np.testing.assert_array_equal(tr.counts["th"]["spikes"], ev.reshape(3, -1).sum(1))
    # analog input with zeros
    x2 = x * (rng.random(x.shape) > 0.5)
    g2 = chain(("conv", conv), in_shape=[cin, h, w])
    tr2 = simulate(g2, x2)
    np.testing.assert_array_equal(tr2.counts["conv"]["macs"],
                                  brute_conv_events(x2 != 0, W, stride, pad, dil, groups))
    # the fan-out of a full input equals the brute force on all-ones
    f = fanout(conv, (cin, h, w))
    assert f.sum() == brute_conv_events(np.ones((1, 1, cin, h, w)), W, stride, pad, dil, groups)[0]


def test_pool_and_flatten_counts():
    rng = np.random.default_rng(8)
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                         padding=np.array([1, 1]))
    g = chain(("if", nir.IF(np.ones((2, 5, 5)), np.full((2, 5, 5), 0.7))), ("pool", pool),
              ("flat", nir.Flatten({"input": np.array([2, 3, 3])}, start_dim=0)),
              ("fc", nir.Affine(np.ones((2, 18)), np.zeros(2))), in_shape=[2, 5, 5])
    x = rng.random((4, 3, 2, 5, 5))
    tr = simulate(g, x)
    ones = np.ones((2, 1, 2, 2))
    np.testing.assert_array_equal(tr.counts["pool"]["synaptic_ops"],
                                  brute_conv_events(tr.spikes["if"], ones, (2, 2), (1, 1), (1, 1), 2))
    assert all(v.sum() == 0 for v in tr.counts["flat"].values())
    pooled = tr.outputs["output"]  # just to touch outputs
    assert pooled.shape == (4, 3, 2)
    # the pool's output is analog: fc counts macs
    assert tr.counts["fc"]["synaptic_ops"].sum() == 0 and tr.counts["fc"]["macs"].sum() > 0


def test_flatten_of_spikes_counts_synaptic_ops():
    rng = np.random.default_rng(9)
    g = chain(("if", nir.IF(np.ones((2, 2)), np.full((2, 2), 0.5))),
              ("flat", nir.Flatten({"input": np.array([2, 2])}, start_dim=0)),
              ("fc", nir.Linear(np.array([[1.0, 0, 2, 0], [0, 0, 3, 4]]))), in_shape=[2, 2])
    tr = simulate(g, rng.random((5, 2, 2, 2)))
    s = tr.spikes["if"].reshape(5, 2, 4)
    np.testing.assert_array_equal(tr.counts["fc"]["synaptic_ops"], s.sum(1) @ [1, 0, 2, 1])


def test_summed_edges():
    rng = np.random.default_rng(10)
    W1, W2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    nodes = {"input": nir.Input(np.array([4])), "a": nir.Linear(W1), "b": nir.Linear(W2),
             "li": nir.I(np.ones(3)), "output": nir.Output(np.array([3]))}
    edges = [("input", "a"), ("input", "b"), ("a", "li"), ("b", "li"), ("li", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    x = rng.normal(size=(5, 2, 4))
    y = simulate(g, x).outputs["output"]
    np.testing.assert_allclose(y, np.cumsum(x @ (W1 + W2).T, axis=0), rtol=1e-12)


def test_recurrent_back_edge():
    rng = np.random.default_rng(11)
    n = 4
    Win, Wr = rng.normal(size=(n, 3)), rng.normal(size=(n, n)) * 0.5
    nodes = {"input": nir.Input(np.array([3])), "fc": nir.Linear(Win),
             "if": nir.IF(np.ones(n), np.full(n, 0.8)), "rec": nir.Linear(Wr),
             "output": nir.Output(np.array([n]))}
    edges = [("input", "fc"), ("fc", "if"), ("if", "rec"), ("rec", "if"), ("if", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    x = rng.random((15, 3, 3))
    tr = simulate(g, x)
    v = np.zeros((3, n))
    s = np.zeros((3, n))
    ref = []
    for t in range(15):
        v = v + x[t] @ Win.T + s @ Wr.T
        s = (v > 0.8).astype(float)
        v = np.where(s > 0, 0.0, v)
        ref.append(s)
    np.testing.assert_allclose(tr.outputs["output"], np.array(ref))
    # rec is fed by spikes of the same step, counted once
    np.testing.assert_array_equal(tr.counts["rec"]["synaptic_ops"],
                                  tr.spikes["if"].sum(1) @ (Wr != 0).sum(0))


def test_delay_shifts():
    g = chain(("d", nir.Delay(np.array([0.0, 2.0]))), in_shape=[2])
    x = np.arange(1, 6, dtype=float)[:, None, None] * np.ones((5, 1, 2))
    y = simulate(g, x).outputs["output"][:, 0]
    np.testing.assert_array_equal(y[:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(y[:, 1], [0, 0, 1, 2, 3])
    with pytest.raises(UnsupportedError, match="whole number"):
        simulate(g, x, dt=0.3)


def test_bad_inputs_and_profiles():
    g = if_graph()
    with pytest.raises(DatasetError, match="input shape"):
        simulate(g, np.zeros((3, 1, 2)))
    with pytest.raises(DatasetError, match="non-finite"):
        simulate(g, np.full((3, 1, 1), np.nan))
    with pytest.raises(UnsupportedError, match="unknown profile"):
        simulate(g, np.zeros((3, 1, 1)), profile="brian")
    assert {"spikebridge", "nir"} <= set(PROFILES)
    tr = simulate(g, np.ones((3, 2, 1), dtype=bool), record_spikes=False)
    assert tr.spikes == {} and tr.outputs["output"].shape == (3, 2, 1)
    info = analyse(g)
    assert simulate(g, np.ones((3, 2, 1)), info=info).batch == 2


def test_max_batch_slices_match_one_run():
    rng = np.random.default_rng(12)
    g = chain(("fc", nir.Affine(rng.normal(size=(4, 3)), np.zeros(4))),
              ("if", nir.IF(np.ones(4), np.full(4, 0.5))), in_shape=[3])
    x = rng.random((6, 7, 3))
    a, b = simulate(g, x), simulate(g, x, max_batch=3)
    assert b.batch == 7
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    np.testing.assert_array_equal(a.spikes["if"], b.spikes["if"])
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k])


def test_scale_broadcast_and_counts():
    rng = np.random.default_rng(13)
    scale = np.array([2.0, 0.0, -1.0]).reshape(3, 1, 1)
    g = chain(("th", nir.Threshold(np.full((3, 2, 2), 0.5))), ("sc", nir.Scale(scale)),
              in_shape=[3, 2, 2])
    x = rng.random((4, 2, 3, 2, 2))
    tr = simulate(g, x)
    s = x > 0.5
    np.testing.assert_array_equal(tr.outputs["output"], s * scale)
    np.testing.assert_array_equal(tr.counts["sc"]["synaptic_ops"],
                                  (s * (scale != 0)).reshape(4, -1).sum(1))


def test_conv_input_shape_must_match():
    conv = nir.Conv2d(input_shape=(5, 5), weight=np.ones((1, 1, 3, 3)), stride=1, padding=0,
                      dilation=1, groups=1, bias=np.zeros(1))
    with pytest.raises(GraphError, match="differs"):
        analyse(chain(("c", conv), in_shape=[1, 6, 6]))
