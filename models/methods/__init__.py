"""The method registry: every training method, SNN2ANN and BPTT included, registers here.

A method registers a ``MethodSpec``: how to train it (writing the common checkpoint format:
weights.safetensors + model.json with ``method`` set), how to rebuild its torch model from a
checkpoint, and what it deploys: ``deployed(meta, tensors, file) -> DeployedNet`` (the SNN,
models/deployed.py; what the NIR export and the one-step ONNX export write) and
``onnx(meta, tensors, file) -> AnnNet | DeployedNet`` (what ``export --format onnx`` writes:
the method's ANN, or its SNN unrolled over T). A hook left ``None`` means the method has no
such form; the exporters then refuse with the spec's ``no_snn`` / ``no_onnx`` sentence.
``resume_keys`` are the TrainConfig fields a ``--resume`` must share with the run it continues
(models/methods/resume.py checks them for every method).

``spikebridge.models.train.train``, ``spikebridge.models.checkpoint.build_model`` and the
exporters dispatch on ``model.json``'s ``method`` through ``require``: an unknown name is
refused with one line naming the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str
    train: Callable  # (cfg: TrainConfig, out_dir, progress: bool, resume: bool) -> dict (last metrics row)
    build_model: Callable  # (meta, tensors, file) -> torch module
    deployed: Callable | None = None  # (meta, tensors, file) -> DeployedNet
    onnx: Callable | None = None  # (meta, tensors, file) -> AnnNet | DeployedNet
    no_snn: str = ""  # why ``deployed`` is None
    no_onnx: str = ""  # why ``onnx`` is None
    description: str = ""
    # input encodings the method trains with (spikebridge.base.encoding); others are refused
    # with ``no_encoding``, the reason
    encodings: tuple = ("direct",)
    no_encoding: str = ("trains on static images (its first layer's current is computed once and reused at "
                        "every step: direct encoding only)")


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


def get(name: str) -> MethodSpec | None:
    _load_builtin()
    return METHODS.get(name)


def names() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


def require(name, file: str | None = None, error=None) -> MethodSpec:
    """The registered spec of ``name``; otherwise ``error`` (default CheckpointError, place
    ``method``) naming the known methods."""
    spec = get(name) if isinstance(name, str) else None
    if spec is not None:
        return spec
    from spikebridge.base.errors import CheckpointError

    msg = f"unknown method {name!r}; known: {', '.join(names())}"
    if error is not None:
        raise error(msg)
    raise CheckpointError(msg, file=file, place="method")


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
