"""Loihi-style mapping under the synaptic-memory limit, and refusals (hand computations)."""
import math

import nir
import numpy as np
import pytest

from spikebridge.base.errors import InputError, UnsupportedError
from spikebridge.hardware.latency import LOIHI, estimate_latency, map_cores
from spikebridge.hardware.trace import Trace

MEM_BITS = 128 * 1024 * 8


def dense_graph(n_out, n_in, weight=None, meta=None):
    w = np.ones((n_out, n_in), dtype=np.float32) if weight is None else weight
    lif = nir.LIF(tau=np.ones(n_out), r=np.ones(n_out), v_leak=np.zeros(n_out),
                  v_threshold=np.ones(n_out))
    nodes = {"input": nir.Input(input_type=np.array([n_in])), "fc": nir.Linear(weight=w),
             "lif": lif, "output": nir.Output(output_type=np.array([n_out]))}
    return nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                        type_check=False, metadata=meta or {})


def test_memory_binds_at_8_bits():
    # 1,000 neurons x 1,000 inputs: one core by neurons and fan-in, but 1e6 synapses x 8 bit
    # = 1,000,000 bytes > 128 KB: ceil(8e6 / 1,048,576) = 8 cores.
    m = map_cores(dense_graph(1000, 1000))["lif"]
    assert m["cores_by_neurons_and_fan_in"] == 1
    assert m["synapses"] == 1_000_000 and m["synapses_exact"] and m["weight_bits"] == 8
    assert m["cores"] == m["cores_by_synaptic_memory"] == math.ceil(8_000_000 / MEM_BITS) == 8
    assert m["limited_by"] == "synaptic memory" and m["synaptic_memory_bytes"] == 1_000_000


def test_weight_bits_from_argument_and_metadata():
    g = dense_graph(1000, 1000)
    assert map_cores(g, weight_bits=2)["lif"]["cores"] == math.ceil(2_000_000 / MEM_BITS) == 2
    g2 = dense_graph(1000, 1000, meta={"spikebridge": {"weight_bits": 4}})
    assert map_cores(g2)["lif"]["weight_bits"] == 4
    g3 = dense_graph(1000, 1000)
    g3.nodes["fc"].metadata = {"spikebridge": {"weight_bits": 1}}
    assert map_cores(g3)["lif"]["cores"] == 1


def test_zero_weights_are_not_stored():
    w = np.zeros((1000, 1000), dtype=np.float32)
    w[:, :10] = 1.0
    m = map_cores(dense_graph(1000, 1000, weight=w))["lif"]
    assert m["synapses"] == 10_000 and m["cores"] == 1


@pytest.mark.parametrize("bits", [0, 9, 16, 2.5, True])
def test_weight_bits_refused(bits):
    with pytest.raises(UnsupportedError, match="weight bit width .* 1 to 8 bits"):
        map_cores(dense_graph(4, 4), weight_bits=bits)
    assert issubclass(UnsupportedError, InputError)


def test_max_chips_refused_with_reason():
    g = dense_graph(4096 * 40, 8, weight=np.ones((4096 * 40, 8), dtype=np.int8))
    m = map_cores(g)  # 163,840 neurons -> 160 cores -> 2 chips
    assert m["lif"]["cores"] == 160
    with pytest.raises(UnsupportedError, match=r"160 cores = 2 loihi chips .* limit of 1 chip"):
        map_cores(g, max_chips=1)
    map_cores(g, max_chips=2)


def test_latency_reports_cores_chips_memory():
    g = dense_graph(1000, 1000)
    T, B = 2, 1
    tr = Trace(timesteps=T, batch=B, outputs={"output": np.zeros((T, B, 1000))},
               counts={"fc": {"synaptic_ops": np.array([100, 0])},
                       "lif": {"neuron_updates": np.array([1000, 1000]), "spikes": np.array([0, 0])}})
    r = estimate_latency(tr, g)
    assert r["cores"] == 8 and r["chips"] == 1 and r["synaptic_memory_bytes"] == 1_000_000
    # work spreads over the 8 cores: step 1: (1000 x 8.4 + 100 x 3.5) / 8 ns
    assert r["slowest_core_work_ns"][0] == pytest.approx((1000 * 8.4 + 100 * 3.5) / 8)
    assert "128 KB" in r["constants"]["synaptic_memory_bytes_per_core"]["source"]
    assert "Davies" in r["constants"]["synaptic_memory_bytes_per_core"]["source"]
    assert LOIHI.synaptic_memory_bytes_per_core == 131072
