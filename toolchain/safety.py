"""Safe loaders for files from strangers: ONNX models and torch ``.pt`` files, in one place
for the toolchain.

``load_onnx`` (bounded protobuf, every tensor of every graph, subgraph and model-local
function checked, external data only inside the model's directory, ``onnx.checker``) lives
in exporters/onnx_load.py, where the converter uses it too; ``load_train_state`` (torch
files through ``torch.load(weights_only=True)`` only, after a scan that names every unsafe
global) lives in models/checkpoint.py, where training can use it. Both are re-exported here.
"""
from __future__ import annotations

from spikebridge.exporters.onnx_load import ModelFileError, OnnxLimits, load_onnx, scan_protobuf  # noqa: F401
from spikebridge.models.checkpoint import load_train_state, scan_pickle_globals  # noqa: F401 (re-export)

__all__ = ["ModelFileError", "OnnxLimits", "load_onnx", "load_train_state", "scan_pickle_globals", "scan_protobuf"]
