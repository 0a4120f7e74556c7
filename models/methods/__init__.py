"""Training methods beyond SNN2ANN, each in its own module, registered here.

A method registers a ``MethodSpec``: how to train it (writing the common checkpoint
format: weights.safetensors + model.json with ``method`` set), how to rebuild its torch
model from a checkpoint, and how to export it to NIR and ONNX. ``spikebridge.models.train.train``,
``spikebridge.models.checkpoint.build_model`` and the exporters dispatch on ``model.json``'s
``method`` through this registry; SNN2ANN (and BPTT) are handled in models/train.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str
    train: Callable  # (cfg: TrainConfig, out_dir, progress: bool, resume: bool) -> dict (last metrics row)
    build_model: Callable | None = None  # (meta, tensors, file) -> torch module
    to_nir: Callable | None = None  # (meta, tensors, file) -> nir.NIRGraph
    to_onnx: Callable | None = None  # (meta, tensors, file) -> onnx.ModelProto
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


def get(name: str) -> MethodSpec | None:
    _load_builtin()
    return METHODS.get(name)


def names() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


_LOADED = False


def _load_builtin() -> None:
    """Import the method modules that exist (each calls ``register`` at import)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
