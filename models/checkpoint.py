"""Checkpoints: ``weights.safetensors`` + ``model.json`` in one directory.

model.json carries everything the exporters need (format, architecture spec, method,
T, input shape, classes, neuron semantics) and the provenance (seed, dataset, metrics).
Weights are read with safetensors only; nothing is ever unpickled. Optimizer state for
``--resume`` lives in ``train_state.pt`` and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import os
import pickletools
import re
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np

from spikebridge.base.errors import CheckpointError
from spikebridge.base.fileio import atomic_path, atomic_write_json

FORMAT = "spikebridge-checkpoint"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_STATE_BYTES = 4 << 30  # train_state.pt (all zip members, uncompressed)
MAX_PICKLE_BYTES = 64 << 20  # the pickle program itself (tensors live in other members)
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
            # the weights again, so that optimizer state and weights always come from the same
            # epoch (a kill between the two renames must not pair epoch k's state with k+1's weights)
            torch.save({**train_state, "model": tensors}, str(tmp))
    atomic_write_json(out / "model.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})


CHECKPOINT_FILES = ("model.json", "weights.safetensors", "train_state.pt")


def check_checkpoint_files(ckpt_dir, names=CHECKPOINT_FILES) -> None:
    """Each of ``names`` that exists in ``ckpt_dir`` must be a regular file on a file system
    that stores files: a directory, FIFO, device, dangling symlink or a symlink into
    /proc or /sys (a size that lies; reading can block or never end) is refused with a
    CheckpointError naming it. Run before reading a checkpoint and before training into a
    folder (so a bad train_state.pt is never silently skipped and a bad model.json is
    reported before the computation, not when it is replaced at the end)."""
    d = Path(ckpt_dir)
    for name in names:
        p = d / name
        if not os.path.lexists(p):
            continue
        try:
            st = os.stat(p)
        except OSError as e:
            raise CheckpointError(f"cannot open: {e.strerror}", file=str(p), place="file") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
            raise CheckpointError(f"{name} is {kind}", file=str(p), place="file")
        real = os.path.realpath(p)
        if real.startswith(("/proc/", "/sys/", "/dev/")):
            raise CheckpointError(f"{name} leads to {real}, a kernel pseudo-file, not a checkpoint file",
                                  file=str(p), place="file")


def read_meta(ckpt_dir) -> dict:
    d = Path(ckpt_dir)
    path = d / "model.json"
    if not d.is_dir():
        raise CheckpointError("not a checkpoint directory (expected weights.safetensors + model.json)", file=str(d), place="directory")
    if not os.path.lexists(path):
        raise CheckpointError("model.json is missing", file=str(d), place="model.json")
    check_checkpoint_files(d, ("model.json",))
    from spikebridge.base.fileio import read_json
    meta = read_json(path, MAX_JSON_BYTES, CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError("top level must be an object", file=str(path), place="top level")
    for key, typ in REQUIRED.items():
        if key not in meta:
            raise CheckpointError(f"missing field {key!r}", file=str(path), place=key)
        if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            raise CheckpointError(f"field {key!r} must be {typ.__name__}", file=str(path), place=key)
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"unsupported format {meta['format']!r} v{meta['format_version']}", file=str(path), place="format")
    if not 1 <= meta["timesteps"] <= 100000:
        raise CheckpointError("timesteps must be in 1..100000", file=str(path), place="timesteps")
    shape = meta["input_shape"]
    if not (1 <= len(shape) <= 3 and all(isinstance(s, int) and 1 <= s <= 65536 for s in shape)):
        raise CheckpointError("input_shape must be 1-3 positive integers <= 65536", file=str(path), place="input_shape")
    if not 1 <= meta["num_classes"] <= 100000:
        raise CheckpointError("num_classes must be in 1..100000", file=str(path), place="num_classes")
    from spikebridge.models.architectures import infer_shapes
    from spikebridge.base.errors import InputError
    try:
        for layer in meta["layers"]:
            if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
                raise CheckpointError("every layer must be an object with a name", file=str(path), place="layers")
        _check_layers(meta["layers"], str(path))
        shapes = infer_shapes(meta["layers"], shape)
        _check_size(meta["layers"], shapes, str(path))
    except CheckpointError:
        raise
    except (InputError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"invalid layer list ({e})", file=str(path), place="layers") from None
    return meta


_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INT_FIELDS = ("out_channels", "out_features", "kernel_size", "stride", "padding")
MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights: far beyond what the CPU backends run


def _check_layers(layers: list, file: str) -> None:
    """Layer names become torch module names and NIR node names: identifiers only; sizes are
    bounded integers (a declared size is checked before anything is allocated)."""
    for i, layer in enumerate(layers):
        name = layer["name"]
        if not _NAME_OK.match(name):
            raise CheckpointError(f"layer name {name!r} is not an identifier (letters, digits, _; at most 64)",
                                  file=file, place=f"layers[{i}].name")
        typ = layer.get("type")
        if typ in ("conv", "linear") and not layer.get("neuron") and (i != len(layers) - 1 or typ != "linear"):
            raise CheckpointError(f"layer {name!r} ({typ}) has no neuron but is not the final linear classifier: a "
                                  "layer without a neuron is exported as the analog readout, which must be the "
                                  "last layer and linear", file=file, place=f"layers[{i}]")
        for k in _INT_FIELDS:
            if k in layer:
                v = layer[k]
                lo = 0 if k == "padding" else 1
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1 << 20:
                    raise CheckpointError(f"{k} must be an integer in {lo}..{1 << 20}, got {v!r}", file=file,
                                          place=f"layers[{i}].{k}")


def _check_size(layers: list, shapes, file: str) -> None:
    total = 0
    for i, (layer, (ins, outs)) in enumerate(zip(layers, shapes)):
        if any(int(d) < 1 for d in outs):
            raise CheckpointError(f"output shape {tuple(outs)} is empty", file=file, place=f"layers[{i}]")
        if layer.get("type") == "conv":
            total += int(layer["out_channels"]) * int(ins[0]) * int(layer["kernel_size"]) ** 2
        elif layer.get("type") == "resblock":
            total += int(layer["out_channels"]) * (int(ins[0]) + int(layer["out_channels"])) * 9
        elif layer.get("type") == "linear":
            total += int(layer["out_features"]) * int(ins[0])
        if total > MAX_PARAMETERS:
            raise CheckpointError(f"the layers declare more than {MAX_PARAMETERS} parameters", file=file,
                                  place=f"layers[{i}]")


def load_tensors(ckpt_dir) -> dict[str, np.ndarray]:
    """Read weights.safetensors as numpy arrays (safe: no code runs)."""
    from safetensors.numpy import load_file

    path = Path(ckpt_dir) / "weights.safetensors"
    if not path.is_file():
        raise CheckpointError("weights.safetensors is missing", file=str(Path(ckpt_dir)), place="weights.safetensors")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"not a valid safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                              file=str(path), place="file") from None
    for k, v in tensors.items():
        if v.dtype.kind != "f":
            raise CheckpointError(f"tensor dtype {v.dtype} is not floating point", file=str(path), place=k)
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise CheckpointError("tensor has NaN or Inf values", file=str(path), place=k)
    check_batchnorm(tensors, str(path))
    return tensors


BN_EPS = 1e-5  # torch's BatchNorm default, which every model here uses
F32_MAX = float(np.finfo(np.float32).max)


def check_batchnorm(tensors: dict, file: str | None = None) -> None:
    """BatchNorm statistics a deployed network can fold: every ``*.running_var`` is >= 0, and
    the folded scale gamma / sqrt(var + eps), shift beta - mean * scale, and the folded weight
    and bias of the layer's ``op`` (W * scale, b * scale + shift) are finite in float32.
    Otherwise the exporters would write NaN/Inf graphs: CheckpointError naming the tensor."""
    for key in sorted(k for k in tensors if k.endswith(".running_var")):
        bn = key[: -len(".running_var")]
        var = np.asarray(tensors[key], np.float64)
        if np.any(var < 0):
            raise CheckpointError(f"BatchNorm running variance has negative values (min {var.min():.3g}); a "
                                  "variance is >= 0", file=file, place=key)
        gamma = np.asarray(tensors.get(f"{bn}.weight", 1.0), np.float64)
        beta = np.asarray(tensors.get(f"{bn}.bias", 0.0), np.float64)
        mean = np.asarray(tensors.get(f"{bn}.running_mean", 0.0), np.float64)
        parent = bn.rsplit(".", 1)[0] if "." in bn else ""
        w = tensors.get(f"{parent}.op.weight")
        b = tensors.get(f"{parent}.op.bias")
        with np.errstate(all="ignore"):
            scale = gamma / np.sqrt(var + BN_EPS)
            shift = beta - mean * scale
            folded = {f"{bn}.weight": scale, f"{bn}.bias": shift}
            if w is not None and np.ndim(w) >= 1 and np.shape(w)[0] == np.size(scale):
                sc = scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
                folded[f"{parent}.op.weight"] = np.max(np.abs(np.asarray(w, np.float64)), initial=0.0) * np.abs(sc)
                if b is not None and np.shape(b) == np.shape(scale):
                    folded[f"{parent}.op.bias"] = np.asarray(b, np.float64) * scale + shift
        for name, v in folded.items():
            if not np.all(np.isfinite(v)) or np.any(np.abs(v) > F32_MAX):
                raise CheckpointError("folding BatchNorm into the layer overflows float32 (running_var too small "
                                      "for its weight, or values too large)", file=file, place=name)


def load_checkpoint(ckpt_dir) -> tuple[dict, dict[str, np.ndarray]]:
    return read_meta(ckpt_dir), load_tensors(ckpt_dir)


def build_model(meta: dict, tensors: dict[str, np.ndarray], file: str | None = None):
    """Rebuild the torch model of a checkpoint with its weights, through the method registry
    (an unknown ``method`` is refused naming the known ones)."""
    from spikebridge.models import methods as method_registry

    spec = method_registry.require(meta.get("method"), file=file)
    return spec.build_model(meta, tensors, file)


def load_weights(model, tensors: dict, file=None, ignore=()) -> None:
    """Load numpy tensors into a torch module by name, checking names and shapes first
    (every tensor the module needs is present, none is unexpected, every shape matches)."""
    import torch

    own = model.state_dict()
    missing = [k for k, v in own.items() if v.dtype != torch.long and k not in tensors]
    if missing:
        raise CheckpointError(f"weights missing for {', '.join(missing[:5])}", file=file, place="weights.safetensors")
    for k, v in tensors.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"shape {tuple(v.shape)} does not match the architecture's {tuple(own[k].shape)}",
                                  file=file, place=k)
        if k not in own and not any(k.startswith(p) for p in ignore):
            raise CheckpointError("unexpected tensor", file=file, place=k)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k in own}, strict=False)


# ---- train_state.pt: torch.load(weights_only=True) only, after naming every unsafe global ----

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}


def scan_pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle program imports (GLOBAL, INST, STACK_GLOBAL), in order,
    without executing it. Raises ValueError on a malformed program."""
    found: list[str] = []
    strings: list = []  # values pushed recently (None for non-strings)
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL":
                mod, qual = (strings[-2:] + [None, None])[:2] if len(strings) >= 2 else (None, None)
                found.append(f"{mod}.{qual}" if isinstance(mod, str) and isinstance(qual, str) else "<dynamic>")
            if name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else str(arg))
            elif name in ("MEMOIZE",):
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = strings[-1] if strings else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(arg))
            elif name not in ("STACK_GLOBAL", "GLOBAL", "INST", "PROTO", "FRAME"):
                strings.append(None)
    except Exception as e:  # noqa: BLE001 - pickletools raises ValueError and others
        raise ValueError(f"malformed pickle ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    return found


def _allowed_globals() -> set[str]:
    try:
        import torch._weights_only_unpickler as wo  # what torch.load(weights_only=True) accepts
        allowed = {str(k) for k in wo._get_allowed_globals()}
    except Exception:  # noqa: BLE001 - private API moved: fall back to a prefix rule below
        allowed = set()
    return allowed | {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                      "_codecs.encode"}


def _is_allowed(g: str, allowed: set[str]) -> bool:
    if g in allowed:
        return True
    mod = g.rsplit(".", 1)[0]
    # torch's storage/tensor types and rebuild helpers, as torch itself allows them
    return g.startswith("torch.") and (mod in ("torch", "torch._utils", "torch.serialization")
                                       or g.endswith("Storage"))


def load_train_state(path, map_location="cpu", required: tuple = ()) -> dict:
    """Read a torch file (``train_state.pt``) safely: bounded sizes, no path-traversal zip
    members, every imported global checked (the error names all unsafe ones) and then
    ``torch.load(weights_only=True)``. Returns a dict; raises CheckpointError."""
    file = str(path)
    from spikebridge.base.fileio import regular_file
    check_checkpoint_files(Path(file).parent, (Path(file).name,))
    st = regular_file(file, MAX_STATE_BYTES, CheckpointError)
    place = "pickle"
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as z:
                infos = z.infolist()
                for i in infos:
                    n = i.filename
                    if n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/"):
                        raise CheckpointError(f"zip member name {n!r} escapes the archive", file, n)
                total = sum(i.file_size for i in infos)
                if total > MAX_STATE_BYTES:
                    raise CheckpointError(f"zip members declare {total} bytes, above {MAX_STATE_BYTES}", file, "zip")
                pkl = [i for i in infos if i.filename.endswith("data.pkl")]
                if len(pkl) != 1:
                    raise CheckpointError(f"expected one data.pkl member, found {len(pkl)}", file, "zip")
                place = pkl[0].filename
                if pkl[0].file_size > MAX_PICKLE_BYTES:
                    raise CheckpointError(f"pickle of {pkl[0].file_size} bytes exceeds {MAX_PICKLE_BYTES}", file,
                                          place)
                data = z.read(pkl[0])
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - BadZipFile, CRC errors, truncation
            raise CheckpointError(f"not a readable torch zip ({type(e).__name__})", file, "zip") from None
    else:
        if st.st_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"pickle of {st.st_size} bytes exceeds {MAX_PICKLE_BYTES}", file, place)
        from spikebridge.base.fileio import read_regular_bytes
        data = read_regular_bytes(file, MAX_PICKLE_BYTES, CheckpointError, place)
        if not data:
            raise CheckpointError("empty file", file, place)
    try:
        globs = scan_pickle_globals(data)
    except ValueError as e:
        raise CheckpointError(f"not a torch file: {e}", file, place) from None
    allowed = _allowed_globals()
    unsafe = sorted({g for g in globs if not _is_allowed(g, allowed)})
    if unsafe:
        raise CheckpointError(f"refusing to load: unsafe pickle globals {', '.join(unsafe)} (only "
                              "torch.load(weights_only=True) data is accepted)", file, place)
    import torch
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(file, weights_only=True, map_location=map_location)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError on corrupt archives
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"torch.load(weights_only=True) refused the file ({msg})", file, place) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"expected a dict, got {type(state).__name__}", file, place)
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"missing keys {', '.join(map(repr, missing))}", file, place)
    return state
