"""Property tests over random NIR graphs (hypothesis; bounded example count in CI).

Valid graphs (random DAGs of Affine / IF / LIF / LI with parallel branches summed into
one node and optional recurrent back edges, odd node names) run on the event-driven
simulator and give identical outputs and counts when the node and edge order is shuffled.
Weights are small multiples of 1/4, so sums are exact whatever the summation order.
Invalid graphs (one mutation of a valid one) raise only InputError, from ``analyse`` and
from ``simulate``; files with flipped bytes raise only InputError from ``load_graph``.

More examples: SPIKEBRIDGE_FUZZ_EXAMPLES=2000 pytest tests/hardware/test_fuzz_graphs.py
(fuzz/README.md has the long-running harness for the file loaders).
"""
from __future__ import annotations

import os

import nir
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spikebridge.base.errors import InputError
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import analyse, load_graph

EXAMPLES = int(os.environ.get("SPIKEBRIDGE_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _w(rng, shape):
    return (rng.integers(-4, 5, shape) / 4).astype(np.float32)


def _neuron(kind, n, rng):
    th = (rng.integers(1, 5, n) / 4).astype(np.float32)
    if kind == "IF":
        return nir.IF(r=np.ones(n, np.float32), v_threshold=th, v_reset=np.zeros(n, np.float32))
    if kind == "LIF":
        return nir.LIF(tau=np.full(n, 2.0, np.float32), r=np.full(n, 2.0, np.float32), v_leak=np.zeros(n, np.float32),
                       v_threshold=th, v_reset=np.zeros(n, np.float32))
    return nir.LI(tau=np.full(n, 2.0, np.float32), r=np.full(n, 2.0, np.float32), v_leak=np.zeros(n, np.float32))


@st.composite
def graphs(draw):
    """(nodes dict, edges list, x) for a random valid graph."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    n_in = draw(st.integers(1, 5))
    depth = draw(st.integers(1, 4))
    names = draw(st.lists(st.text(NAME_CHARS, min_size=1, max_size=8), min_size=4 * depth + 2,
                          max_size=4 * depth + 2, unique=True).filter(lambda ns: "input" not in ns and "output" not in ns))
    it = iter(names)
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])})}
    edges = []
    prev, n_prev = "input", n_in
    for _ in range(depth):
        n = draw(st.integers(1, 5))
        kind = draw(st.sampled_from(["IF", "LIF", "LI"]))
        neuron = next(it)
        nodes[neuron] = _neuron(kind, n, rng)
        branches = draw(st.integers(1, 2))  # two synapse nodes from the same source summed into the neuron
        for _ in range(branches):
            a = next(it)
            nodes[a] = nir.Affine(weight=_w(rng, (n, n_prev)), bias=_w(rng, (n,)))
            edges += [(prev, a), (a, neuron)]
        if draw(st.booleans()):  # a recurrent connection: neuron -> Linear -> neuron (a back edge)
            r = next(it)
            nodes[r] = nir.Linear(weight=_w(rng, (n, n)))
            edges += [(neuron, r), (r, neuron)]
        prev, n_prev = neuron, n
    nodes["output"] = nir.Output(output_type={"output": np.array([n_prev])})
    edges.append((prev, "output"))
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    x = (rng.integers(0, 3, (T, B, n_in)) / 2).astype(np.float32)
    return nodes, edges, x


def _graph(nodes, edges, order=None, edge_order=None):
    keys = list(nodes) if order is None else order
    es = list(edges) if edge_order is None else edge_order
    return nir.NIRGraph(nodes={k: nodes[k] for k in keys}, edges=es, type_check=False,
                        metadata={"spikebridge": {"dt": 1.0}})


def _run(g, x):
    tr = simulate(g, x, record_spikes=True)
    return tr.outputs, tr.counts


@SETTINGS
@given(graphs(), st.randoms(use_true_random=False))
def test_valid_graphs_run_and_do_not_depend_on_node_or_edge_order(case, rnd):
    nodes, edges, x = case
    out1, counts1 = _run(_graph(nodes, edges), x)
    order = list(nodes)
    rnd.shuffle(order)
    es = list(edges)
    rnd.shuffle(es)
    out2, counts2 = _run(_graph(nodes, edges, order, es), x)
    assert out1.keys() == out2.keys()
    for k in out1:
        assert np.array_equal(out1[k], out2[k]), k
    assert counts1.keys() == counts2.keys()
    for n in counts1:
        for kind in counts1[n]:
            assert np.array_equal(np.asarray(counts1[n][kind]), np.asarray(counts2[n][kind])), (n, kind)


MUTATIONS = ["drop_node", "edge_to_missing", "nan_weight", "inf_threshold", "bad_weight_shape", "no_output",
             "input_incoming", "negative_tau", "bad_reset", "duplicate_edge", "bad_dt", "wrong_x_shape"]


class Mystery(nir.NIRNode):  # a node type no backend knows
    def __init__(self):
        self.input_type, self.output_type, self.metadata = {}, {}, {}


@SETTINGS
@given(graphs(), st.sampled_from(MUTATIONS + ["unknown_type"]), st.randoms(use_true_random=False))
def test_invalid_graphs_raise_only_input_errors(case, mutation, rnd):
    nodes, edges, x = case
    nodes = dict(nodes)
    edges = list(edges)
    meta = {"spikebridge": {"dt": 1.0}}
    inner = [k for k in nodes if k not in ("input", "output")]
    syn = [k for k in inner if isinstance(nodes[k], (nir.Affine, nir.Linear))]
    neurons = [k for k in inner if k not in syn]
    victim = rnd.choice(inner)
    if mutation == "drop_node":
        del nodes[victim]
    elif mutation == "edge_to_missing":
        edges.append((victim, "ghost"))
    elif mutation == "nan_weight":
        k = rnd.choice(syn)
        w = np.array(nodes[k].weight, copy=True)
        w.flat[0] = np.nan
        nodes[k] = nir.Affine(weight=w, bias=np.zeros(w.shape[0], np.float32))
    elif mutation == "inf_threshold":
        k = rnd.choice(neurons)
        n = np.asarray(nodes[k].v_leak if hasattr(nodes[k], "v_leak") else nodes[k].r).size
        nodes[k] = nir.IF(r=np.ones(n), v_threshold=np.full(n, np.inf), v_reset=np.zeros(n))
    elif mutation == "bad_weight_shape":
        k = rnd.choice(syn)
        w = nodes[k].weight
        nodes[k] = nir.Linear(weight=np.ones((w.shape[0], w.shape[1] + 1), np.float32))
    elif mutation == "no_output":
        del nodes["output"]
        edges = [e for e in edges if e[1] != "output"]
    elif mutation == "input_incoming":
        edges.append((victim, "input"))
    elif mutation == "negative_tau":
        k = rnd.choice(neurons)
        n = np.asarray(nodes[k].r).size
        nodes[k] = nir.LIF(tau=-np.ones(n), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
                           v_reset=np.zeros(n))
    elif mutation == "bad_reset":
        k = rnd.choice(neurons)
        nodes[k].metadata = {"spikebridge": {"reset": rnd.choice(["explode", 3, None, "<b>"])}}
    elif mutation == "duplicate_edge":
        edges.append(rnd.choice(edges))
    elif mutation == "bad_dt":
        meta = {"spikebridge": {"dt": rnd.choice([0.0, -1.0, float("nan"), "fast", float("inf")])}}
    elif mutation == "wrong_x_shape":
        x = np.ones((x.shape[0], x.shape[1], x.shape[2] + 1), np.float32)
    elif mutation == "unknown_type":
        nodes[victim] = Mystery()
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata=meta)
    with pytest.raises(InputError):
        simulate(g, x)
    try:
        analyse(g)
    except InputError:
        pass


@SETTINGS
@given(st.data())
def test_nir_files_with_flipped_bytes_raise_only_input_errors(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("flip")
    base = d / "base.nir"
    nodes, edges, _ = data.draw(graphs())
    # names HDF5 cannot hold as groups are not this test's subject: "/" nests groups, "." is
    # the group itself (nir.write fails on them before any byte is flipped)
    assume(all("/" not in n and n != "." for n in nodes))
    nir.write(str(base), _graph(nodes, edges))
    raw = bytearray(base.read_bytes())
    n = data.draw(st.integers(1, 16))
    for _ in range(n):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    p = d / "mut.nir"
    p.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    try:
        g = load_graph(p)
        analyse(g, file=str(p))
    except InputError:
        pass
