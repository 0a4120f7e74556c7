"""``bptt``: the spike-based back-propagation baseline (models/bptt.py), trained by the loop it
shares with SNN2ANN (methods/snn2ann.py: same optimiser, schedule, checkpoints and --resume).

Deployed SNN: BN folded, the bias injected at every step, IF or LIF (tau in steps, r = 1,
v_leak = 0; dt = 1) with the network's scalar threshold written per neuron, hard reset to 0,
strict ``>``; the classifier is an analog readout (W/T, b/T). There is no ANN: ``export
--format onnx`` is refused (``--format nir`` or ``onnx-step`` export the SNN).
"""
from __future__ import annotations

import numpy as np

from spikebridge.base.errors import UnsupportedError
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods.snn2ann import train


def build_model(meta: dict, tensors: dict, file: str | None = None):
    from spikebridge.models.bptt import build_bptt_model

    return build_bptt_model(meta, tensors, file)


def deployed(meta: dict, tensors: dict, file: str | None = None):
    return deployed_from_model(build_model(meta, tensors, file), meta)


def deployed_from_model(model, meta: dict):
    """A BPTTNet as a DeployedNet (the module docstring)."""
    from spikebridge.models.deployed import from_spec_model

    neuron = model.neuron
    if neuron.reset != "zero":
        raise UnsupportedError("only hard reset is exported", place="neuron")
    return from_spec_model(model, meta, neuron.kind, folded=lambda layer: layer.folded(),
                           threshold=lambda module, shape: np.full(shape, neuron.v_threshold, np.float32),
                           lif={"tau": neuron.tau})


register(MethodSpec("bptt", train=train, build_model=build_model, deployed=deployed, onnx=None,
                    no_onnx="a BPTT model has no ANN branch to export as ONNX; export it as NIR (--format nir) "
                            "or as one SNN step (--format onnx-step where available)",
                    description="spike-based back-propagation (surrogate gradients) of an IF or LIF SNN",
                    encodings=("direct", "rate", "latency", "delta")))
