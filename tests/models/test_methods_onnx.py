"""ONNX of bridge and lasnn: the deployed SNN unrolled over T steps (exporters/onnx_export.snn_to_onnx),
run in onnxruntime, gives the logits of the torch deployed network (run_deployed) and of the
BPTT model itself; the same builder handles the IF / >= / subtract / amplitude / v(0) path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikebridge.models.architectures import build_spec
from spikebridge.models.methods import common as C

SHAPE = (1, 8, 8)


def _random_stack(width=1.0, seed=0):
    from spikebridge.models.methods.bridge import DECAY, THRESHOLD
    torch.manual_seed(seed)
    spec = C.shrink_spec(build_spec("cnn", SHAPE, 10), width)
    net = C.SpikingStack(spec, SHAPE, DECAY, THRESHOLD)
    with torch.no_grad():
        for blk in net.layers.values():
            if blk.bn is not None:
                blk.bn.running_mean.uniform_(-0.2, 0.2)
                blk.bn.running_var.uniform_(0.5, 2.0)
                blk.bn.weight.uniform_(0.5, 1.5)
                blk.bn.bias.uniform_(0.0, 0.5)
    return net.eval(), spec


def _session(model):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("method,width,T", [("bridge", 1.0, 4), ("lasnn", 0.5, 3)])
def test_onnx_of_the_lif_snn_equals_the_deployed_network(method, width, T, tmp_path):
    from spikebridge.exporters.onnx_export import checkpoint_to_onnx
    from spikebridge.models.checkpoint import save_checkpoint
    from spikebridge.models.methods.bridge import DECAY, THRESHOLD, neuron_meta

    net, spec = _random_stack(width)
    meta = {"arch": "cnn", "method": method, "timesteps": T, "input_shape": list(SHAPE), "num_classes": 10,
            "dataset": "digits", "layers": spec, "neuron": neuron_meta()}
    save_checkpoint(tmp_path / method, net.state_dict(), meta)
    model = checkpoint_to_onnx(tmp_path / method)
    x = torch.rand(16, *SHAPE) * 2
    y = _session(model).run(None, {"input": x.numpy()})[0]
    ref, spikes = C.run_deployed(C.lif_deployed(net, DECAY, THRESHOLD), x, T)
    assert 0 < spikes  # the network is not silent, so the comparison checks the neuron path
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and the BPTT model in eval mode (BN not folded) agrees too
        np.testing.assert_allclose(y, net.run(x, T).numpy(), rtol=1e-4, atol=1e-4)
    # a different T is a different network: the check can fail
    assert not np.allclose(y, C.run_deployed(C.lif_deployed(net, DECAY, THRESHOLD), x, T + 1)[0].numpy(), atol=1e-3)


def test_onnx_builder_handles_if_ge_subtract_amplitude_and_v_init():
    from spikebridge.models.methods import qcfs as Q
    from spikebridge.exporters.onnx_export import snn_to_onnx
    from spikebridge.models.deployed import from_layers

    torch.manual_seed(1)
    spec = build_spec("cnn", SHAPE, 10)
    net = Q.QCFSNet(spec, SHAPE, L=4)
    with torch.no_grad():
        for i, k in enumerate(net.lam):
            net.lam[k].fill_(0.7 + 0.3 * i)
    net.eval()
    T = 4
    layers = Q.deployed(net)
    model = snn_to_onnx(from_layers(layers, {"timesteps": T, "input_shape": list(SHAPE), "num_classes": 10,
                                             "method": "qcfs", "arch": "cnn", "layers": spec}))
    x = torch.rand(16, *SHAPE)
    y = _session(model).run(None, {"input": x.numpy()})[0]
    ref, spikes = C.run_deployed(layers, x, T)
    assert spikes > 0
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)
