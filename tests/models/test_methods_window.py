"""Parallel conversion's count-then-emit lowering (``--deploy window``): an IF node with
reset 'window' integrates the whole window, then emits its spike count as one graded spike.
Its outputs summed over the window equal the windowed (parallel) neuron's, so the network
equals the parallel network; eventsim runs the exported NIR graph like torch; every other
consumer refuses the graph instead of running it as a plain IF."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikebridge.exporters.nir_export import to_nir
from spikebridge.models.deployed import from_layers
from spikebridge.models.methods import common as C
from spikebridge.models.methods import parallel as P
from test_methods import CNN, SHAPE, _randomise_bn


def _net(T, seed=11):
    torch.manual_seed(seed)  # the conv/linear initialisation
    gen = torch.Generator().manual_seed(seed)
    net = _randomise_bn(P.ParallelNet(CNN, SHAPE, T), gen).double()
    with torch.no_grad():
        for blk in net.neuron_blocks():
            c = blk.out_shape[0]
            net.cal(blk, "theta").copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.3)
            net.cal(blk, "phi").copy_(torch.rand(c, generator=gen, dtype=torch.float64))
            net.cal(blk, "psi").copy_(torch.randn(c, generator=gen, dtype=torch.float64) * 0.1)
    return net, torch.rand(24, *SHAPE, generator=gen, dtype=torch.float64) * 2


@pytest.mark.parametrize("T", [1, 3, 4])
def test_count_then_emit_network_equals_the_parallel_network(T):
    net, x = _net(T)
    par, par_spikes = C.run_deployed(P.deployed(net, "PAR"), x, T)
    win, win_events = C.run_deployed(P.deployed(net, "WINDOW"), x, T)
    np.testing.assert_allclose(win.numpy(), par.numpy(), rtol=0, atol=1e-9)
    assert 0 < win_events <= par_spikes  # one graded event per active neuron instead of a block


@pytest.mark.parametrize("T", [1, 2, 5])
def test_count_then_emit_neuron_emits_the_block_count_once_at_the_end_of_the_window(T):
    gen = torch.Generator().manual_seed(T)
    cur = torch.randn(T, 64, generator=gen, dtype=torch.float64)
    theta = torch.rand(64, generator=gen, dtype=torch.float64) + 0.2
    phi = torch.rand(64, generator=gen, dtype=torch.float64)
    block = P.window_neuron(cur, theta, phi)
    once = C.count_then_emit(cur, {"threshold": theta, "v_init": phi * theta, "amplitude": theta})
    np.testing.assert_allclose(once.sum(0).numpy(), block.sum(0).numpy(), rtol=0, atol=1e-12)
    assert not once[:-1].any()  # nothing before the window's last step
    assert (block.sum(0) > 0).any() and (block.sum(0) < T * theta).any()  # counts in the middle occur


def test_count_then_emit_graph_runs_in_eventsim_like_torch_and_other_consumers_refuse_it():
    from spikebridge.exporters.onnx_step import graph_to_onnx_step
    from spikebridge.base.errors import InputError
    from spikebridge.hardware.eventsim import simulate
    from spikebridge.hardware.graph import analyse

    T = 4
    net, x = _net(T, seed=12)
    layers = P.deployed(net, "WINDOW")
    meta = {"timesteps": T, "layers": CNN, "input_shape": list(SHAPE), "num_classes": 3, "method": "parallel",
            "arch": "test"}
    graph = to_nir(from_layers(layers, meta))
    ref, events = C.run_deployed(layers, x, T)
    tr = simulate(graph, np.broadcast_to(x.numpy()[None], (T, *x.shape)), info=analyse(graph))
    out = tr.outputs["output"]
    np.testing.assert_allclose(out.sum(0), ref.numpy(), rtol=1e-6, atol=1e-6)  # NIR weights are float32
    # the readout before the last step is the bias alone: nothing is emitted inside the window
    np.testing.assert_allclose(out[0], np.broadcast_to(out[0][:1], out[0].shape))
    assert tr.per_sample("spikes") == pytest.approx(events)
    from spikebridge.exporters.nir_import import graph_to_torch
    from spikebridge.base.errors import UnsupportedError
    from spikebridge.hardware.loihi.plan import lower
    with pytest.raises(InputError, match="window"):
        graph_to_onnx_step(graph)
    with pytest.raises(InputError, match="window"):
        graph_to_torch(graph)
    with pytest.raises(UnsupportedError, match="unknown reset 'window'"):  # Lava and its fixed-point model
        lower(graph, T)
