"""spikebridge.hardware.graph: safe loading (round trip, hostile files), analysis, metadata, classify."""
import os

import h5py
import nir
import numpy as np
import pytest
from nir.ir.graph import Identity

from spikebridge.base.errors import GraphError, InputError, UnsupportedError
from spikebridge.hardware.graph import (LoadLimits, analyse, classify, graph_meta, load_graph,
                            neuron_semantics)


def conv_graph():
    rng = np.random.default_rng(1)
    nodes = {
        "input": nir.Input(input_type=np.array([2, 6, 6])),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(size=(4, 1, 3, 3)),
                           stride=(2, 1), padding=(1, 0), dilation=1, groups=2,
                           bias=rng.normal(size=4)),
        "if1": nir.IF(r=np.ones((4, 3, 4)), v_threshold=rng.random((4, 3, 4)) + 0.5,
                      metadata={"spikebridge": {"reset": "subtract", "threshold_test": "ge",
                                                "v_init": np.full((4, 3, 4), 0.25),
                                                "deep": {"k": "v", "n": 3}}}),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 2]),
                              padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(size=(3, 16)), bias=np.zeros(3)),
        "lif": nir.LIF(tau=np.full(3, 2.0), r=np.ones(3), v_leak=np.zeros(3),
                       v_threshold=np.ones(3)),
        "output": nir.Output(output_type=np.array([3])),
    }
    edges = [("input", "conv"), ("conv", "if1"), ("if1", "pool"), ("pool", "flat"),
             ("flat", "fc"), ("fc", "lif"), ("lif", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                     metadata={"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": 8,
                                               "readout": "count", "arch": "tiny",
                                               "nested": {"a": 1.5, "b": {"c": "d"}}}})
    return g


def assert_same(a, b, where="root"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (np.ndarray, list, tuple)) and not isinstance(a, str):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    else:
        assert a == b, where


def test_round_trip(tmp_path):
    g = conv_graph()
    p = tmp_path / "g.nir"
    nir.write(p, g)
    h = load_graph(p)
    assert set(h.nodes) == set(g.nodes)
    assert sorted(h.edges) == sorted(g.edges)
    for n, node in g.nodes.items():
        assert type(h.nodes[n]) is type(node), n
        d0, d1 = node.to_dict(), h.nodes[n].to_dict()
        assert_same(d0, d1, n)
    assert h.metadata == g.metadata
    assert h.nodes["if1"].metadata["spikebridge"]["deep"] == {"k": "v", "n": 3}
    info = analyse(h)
    assert info.shapes["conv"] == (4, 3, 4)
    assert info.shapes["pool"] == (4, 2, 2)
    assert info.shapes["flat"] == (16,)
    assert info.order.index("conv") < info.order.index("if1") < info.order.index("output")
    assert info.back_edges == []
    assert info.inputs == ["input"] and info.outputs == ["output"]


def write_ok(tmp_path, name="g.nir"):
    p = tmp_path / name
    nir.write(p, conv_graph())
    return p


def rejects(p, match=None, **kw):
    with pytest.raises(GraphError, match=match) as e:
        load_graph(p, **kw)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    return e.value


def test_external_link(tmp_path):
    other = write_ok(tmp_path, "other.nir")
    p = tmp_path / "ext.nir"
    with h5py.File(p, "w") as f:
        f.create_dataset("version", data="1.0")
        f["node"] = h5py.ExternalLink(str(other), "/node")
    rejects(p, "external link")


def test_soft_link(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/bias"]
        f["node/nodes/fc/bias"] = h5py.SoftLink("/node/nodes/conv/bias")
    rejects(p, "soft link")


def test_external_storage(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(48, dtype=np.float64).tobytes())
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/weight"]
        f.create_dataset("node/nodes/fc/weight", shape=(3, 16), dtype="f8",
                         external=[(str(secret), 0, 3 * 16 * 8)])
    rejects(p, "external raw storage")


def test_huge_compressed_dataset(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/weight"]
        f.create_dataset("node/nodes/fc/weight", shape=(1 << 20, 1 << 12), dtype="f8",
                         compression="gzip", chunks=(256, 1024), fillvalue=1.0)
    assert os.path.getsize(p) < 1 << 20
    rejects(p, "declared size")


def test_total_size_limit(tmp_path):
    p = write_ok(tmp_path)
    rejects(p, "in total", limits=LoadLimits(max_total_bytes=1000))


def test_depth_and_hard_link_cycle(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        f["node/metadata/loop"] = f["node"]  # hard link cycle
    rejects(p, "linked more than once")
    p2 = write_ok(tmp_path, "deep.nir")
    with h5py.File(p2, "a") as f:
        g = f["node/metadata"]
        for i in range(40):
            g = g.create_group(f"d{i}")
    rejects(p2, "deeper")


def test_random_and_truncated(tmp_path):
    p = tmp_path / "rand.nir"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    rejects(p, "HDF5")
    good = write_ok(tmp_path)
    data = good.read_bytes()
    t = tmp_path / "trunc.nir"
    t.write_bytes(data[: len(data) // 2])
    rejects(t)
    with pytest.raises(GraphError):
        load_graph(tmp_path / "missing.nir")
    with pytest.raises(GraphError):
        load_graph(tmp_path)  # a directory


def test_edge_to_missing_node(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        e = f["node/edges"][()]
        e[0, 1] = b"ghost"
        del f["node/edges"]
        f.create_dataset("node/edges", data=e.astype("S"))
    rejects(p, "ghost")


def test_unknown_node_type(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/type"]
        f.create_dataset("node/nodes/fc/type", data="Transformer", dtype=h5py.string_dtype())
    rejects(p, "Transformer")


def test_missing_field_and_not_nir(tmp_path):
    p = write_ok(tmp_path)
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/bias"]
    rejects(p, "nir could not build")
    q = tmp_path / "plain.h5"
    with h5py.File(q, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    rejects(q, "not a NIR file")


def test_analyse_reports_all_problems():
    nodes = {
        "a": nir.Affine(weight=np.array([[1.0, np.nan]]), bias=np.zeros(1)),
        "b": nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
        "c": Identity(input_type={"input": np.array([2])}),
        "out": nir.Output(output_type=np.array([2])),
    }
    nodes["if"] = nir.IF(np.ones(2), np.ones(2), metadata={"spikebridge": {"reset": "hard"}})
    g = nir.NIRGraph(nodes=nodes, edges=[("a", "b"), ("b", "c"), ("c", "out"), ("b", "zz"),
                                         ("b", "if")],
                     type_check=False, metadata={"spikebridge": {"dt": 0}})
    with pytest.raises(GraphError) as e:
        analyse(g, file="f.nir")
    msg = str(e.value)
    for part in ("not finite", "expects input shape (3,)", "no Input", "'zz'", "Identity",
                 "f.nir", "reset 'hard'", "dt 0"):
        assert part in msg, part


def test_analyse_unsupported_only():
    g = nir.NIRGraph(nodes={"in": nir.Input(np.array([2])),
                            "id": Identity(input_type={"input": np.array([2])}),
                            "out": nir.Output(np.array([2]))},
                     edges=[("in", "id"), ("id", "out")], type_check=False)
    with pytest.raises(UnsupportedError, match="Identity"):
        analyse(g)


def test_back_edges_and_summed_edges():
    nodes = {
        "in": nir.Input(np.array([3])),
        "fc": nir.Affine(np.eye(3), np.zeros(3)),
        "if": nir.IF(np.ones(3), np.ones(3)),
        "rec": nir.Linear(np.eye(3)),
        "out": nir.Output(np.array([3])),
    }
    edges = [("in", "fc"), ("fc", "if"), ("if", "rec"), ("rec", "if"), ("if", "out")]
    info = analyse(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    assert info.back_edges == [("rec", "if")]
    assert sorted(info.preds["if"]) == ["fc", "rec"]
    assert info.order.index("if") < info.order.index("rec")


def test_shape_mismatch_on_summed_edges():
    nodes = {"in": nir.Input(np.array([3])), "a": nir.Affine(np.ones((2, 3)), np.zeros(2)),
             "b": nir.Affine(np.ones((4, 3)), np.zeros(4)), "out": nir.Output(np.array([2]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("in", "a"), ("in", "b"), ("a", "out"), ("b", "out")],
                     type_check=False)
    with pytest.raises(GraphError, match="different shapes"):
        analyse(g)


def test_neuron_semantics_and_meta():
    n = nir.IF(np.ones(2), np.ones(2))
    assert neuron_semantics(n) == {"reset": "zero", "threshold_test": "gt", "v_init": 0.0,
                                   "spike_amplitude": 1.0}
    n.metadata = {"spikebridge": {"reset": "subtract", "threshold_test": "ge", "v_init": 0.5,
                                  "spike_amplitude": np.array([1.0, 2.0])}}
    s = neuron_semantics(n, shape=(2,))
    assert s["reset"] == "subtract" and s["threshold_test"] == "ge" and s["v_init"] == 0.5
    np.testing.assert_array_equal(s["spike_amplitude"], [1.0, 2.0])
    for bad in ({"reset": "hard"}, {"threshold_test": "gte"}, {"v_init": float("nan")},
                {"v_init": "x"}):
        n.metadata = {"spikebridge": bad}
        with pytest.raises(GraphError):
            neuron_semantics(n, "if1", "f.nir", shape=(2,))
    n.metadata = {"spikebridge": {"v_init": np.zeros(3)}}
    with pytest.raises(GraphError, match="does not fit"):
        neuron_semantics(n, shape=(2,))

    g = conv_graph()
    m = graph_meta(g)
    assert m["dt"] == 1.0 and m["timesteps"] == 8 and m["readout"] == "count"
    g.metadata = {}
    assert graph_meta(g)["readout"] == "count"  # Output fed by LIF
    assert graph_meta(g)["dt"] == 1.0 and graph_meta(g)["timesteps"] is None
    g2 = nir.NIRGraph.from_list(nir.Affine(np.ones((2, 2)), np.zeros(2)))
    assert graph_meta(g2)["readout"] == "sum"
    g2.metadata = {"spikebridge": {"dt": -1}}
    with pytest.raises(GraphError):
        graph_meta(g2)
    g2.metadata = {"spikebridge": {"readout": "max"}}
    with pytest.raises(InputError):
        graph_meta(g2)


def test_classify():
    y = np.zeros((3, 2, 3))
    y[:, 0] = [[1, 2, 2], [0, 0, 0], [0, 1, 1]]  # sums 1,3,3: tie -> lower index 1
    y[:, 1] = [[-1, -2, -3], [0, 0, 0], [0, 0, 0]]
    np.testing.assert_array_equal(classify(y, "sum"), [1, 0])
    s = np.zeros((4, 2, 3))
    s[:, 0] = [[1, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]]  # counts 2,1,2: tie 0 vs 2
    s[:, 1] = [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]  # all zero -> index 0
    np.testing.assert_array_equal(classify(s, "count"), [0, 0])
    mem = np.zeros((4, 2, 3))
    mem[0, 0, 2] = 5.0  # breaks the tie towards class 2
    np.testing.assert_array_equal(classify(s, "count", mem), [2, 0])
    with pytest.raises(GraphError):
        classify(s, "max")
