"""Checkpoints: ``weights.safetensors`` + ``model.json`` in one directory.

model.json carries everything the exporters need (format, architecture spec, method,
T, input shape, classes, neuron semantics) and the provenance (seed, dataset, metrics).
Weights are read with safetensors only; nothing is ever unpickled. Optimizer state for
``--resume`` lives in ``train_state.pt`` and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hardware.errors import CheckpointError
from hardware.fileio import atomic_path, atomic_write_json

FORMAT = "spikebridge-checkpoint"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 4 * 1024 * 1024
REQUIRED = {"format": str, "format_version": int, "arch": str, "method": str, "timesteps": int,
            "input_shape": list, "num_classes": int, "layers": list, "neuron": dict}


def save_checkpoint(out_dir, state_dict: dict, meta: dict, train_state: dict | None = None) -> None:
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and v.dtype != torch.long}  # BN num_batches_tracked dropped
    with atomic_path(out / "weights.safetensors") as tmp:
        save_file(tensors, str(tmp))
    if train_state is not None:
        with atomic_path(out / "train_state.pt") as tmp:
            torch.save(train_state, str(tmp))
    atomic_write_json(out / "model.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})


def read_meta(ckpt_dir) -> dict:
    d = Path(ckpt_dir)
    path = d / "model.json"
    if not d.is_dir():
        raise CheckpointError("not a checkpoint directory (expected weights.safetensors + model.json)", file=str(d))
    if not path.is_file():
        raise CheckpointError("model.json is missing", file=str(d))
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"model.json is larger than {MAX_JSON_BYTES} bytes", file=str(path))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"not valid JSON ({str(e).splitlines()[0]})", file=str(path)) from None
    if not isinstance(meta, dict):
        raise CheckpointError("top level must be an object", file=str(path))
    for key, typ in REQUIRED.items():
        if key not in meta:
            raise CheckpointError(f"missing field {key!r}", file=str(path))
        if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            raise CheckpointError(f"field {key!r} must be {typ.__name__}", file=str(path))
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"unsupported format {meta['format']!r} v{meta['format_version']}", file=str(path))
    if not 1 <= meta["timesteps"] <= 100000:
        raise CheckpointError("timesteps must be in 1..100000", file=str(path), place="timesteps")
    shape = meta["input_shape"]
    if not (1 <= len(shape) <= 3 and all(isinstance(s, int) and 1 <= s <= 65536 for s in shape)):
        raise CheckpointError("input_shape must be 1-3 positive integers <= 65536", file=str(path), place="input_shape")
    if not 1 <= meta["num_classes"] <= 100000:
        raise CheckpointError("num_classes must be in 1..100000", file=str(path), place="num_classes")
    from models.architectures import infer_shapes
    from hardware.errors import InputError
    try:
        for layer in meta["layers"]:
            if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
                raise CheckpointError("every layer must be an object with a name", file=str(path), place="layers")
        infer_shapes(meta["layers"], shape)
    except CheckpointError:
        raise
    except (InputError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"invalid layer list ({e})", file=str(path), place="layers") from None
    return meta


def _reject_constant(name):
    raise ValueError(f"non-finite number {name} is not allowed")


def load_tensors(ckpt_dir) -> dict[str, np.ndarray]:
    """Read weights.safetensors as numpy arrays (safe: no code runs)."""
    from safetensors.numpy import load_file

    path = Path(ckpt_dir) / "weights.safetensors"
    if not path.is_file():
        raise CheckpointError("weights.safetensors is missing", file=str(Path(ckpt_dir)))
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"not a valid safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                              file=str(path)) from None
    for k, v in tensors.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise CheckpointError("tensor has NaN or Inf values", file=str(path), place=k)
    return tensors


def load_checkpoint(ckpt_dir) -> tuple[dict, dict[str, np.ndarray]]:
    return read_meta(ckpt_dir), load_tensors(ckpt_dir)


def build_model(meta: dict, tensors: dict[str, np.ndarray], file: str | None = None):
    """Rebuild the torch model of a checkpoint (SNN2ANN family) with its weights."""
    import torch
    from models import methods as method_registry
    from models.snn2ann import SNN2ANNNet

    other = method_registry.get(meta["method"])
    if other is not None and other.build_model is not None:
        return other.build_model(meta, tensors, file)
    model = SNN2ANNNet(meta["layers"], meta["input_shape"], meta["timesteps"],
                       smu=meta.get("smu", "stsu"))
    own = model.state_dict()
    missing = [k for k, v in own.items() if v.dtype != torch.long and k not in tensors]
    if missing:
        raise CheckpointError(f"weights missing for {', '.join(missing[:5])}", file=file, place="weights.safetensors")
    for k, v in tensors.items():
        if k not in own:
            raise CheckpointError("unexpected tensor", file=file, place=k)
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"shape {tuple(v.shape)} does not match the architecture's {tuple(own[k].shape)}",
                                  file=file, place=k)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
    model.eval()
    return model
