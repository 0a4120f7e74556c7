"""Stages the CLI strings together: inputs, backends over whole datasets, result files."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from spikebridge.base.errors import DatasetError, InputError
from spikebridge.base.fileio import atomic_path
from spikebridge.hardware.trace import Trace

MAX_INPUT_BYTES = 8 << 30
MAX_TRACE_BYTES = 256 << 20  # a result .npz read back by `report` (outputs, counts, one raster)


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "sample"):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


def graph_input_shape(graph, info) -> tuple[int, ...]:
    if len(info.inputs) != 1:
        raise InputError(f"graph has {len(info.inputs)} Input nodes; spikebridge runs graphs with exactly one")
    return tuple(int(s) for s in info.shapes[info.inputs[0]])


def load_input_npy(path, input_shape: tuple[int, ...]) -> np.ndarray:
    """X.npy, time-major (T, batch, *input_shape), bool or numeric. Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError("input file not found", file=str(p))
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - numpy parses the header with tokenize/ast: crafted ones raise
                            # ValueError, SyntaxError, tokenize.TokenError, ...
        raise DatasetError(f"not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                           file=str(p)) from None
    if not isinstance(arr, np.ndarray):
        raise DatasetError("expected a single .npy array", file=str(p))
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"dtype {arr.dtype} is not bool, integer or float", file=str(p))
    if arr.ndim != 2 + len(input_shape) or tuple(arr.shape[2:]) != tuple(input_shape):
        raise DatasetError(f"shape {arr.shape} is not (T, batch, *{tuple(input_shape)}) as the graph's Input needs",
                           file=str(p))
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DatasetError("T and batch must be at least 1", file=str(p))
    if arr.nbytes > MAX_INPUT_BYTES:
        raise DatasetError(f"input is {arr.nbytes} bytes, above the {MAX_INPUT_BYTES}-byte limit", file=str(p))
    out = np.asarray(arr)
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise DatasetError("input has NaN or Inf values", file=str(p))
    return out


def dataset_samples(name: str, split: str, limit: int | None, input_shape) -> tuple[np.ndarray, np.ndarray]:
    from spikebridge.models.datasets import dataset_info, load_dataset

    info = dataset_info(name)
    x, y = load_dataset(name, split)
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be at least 1")
        x, y = x[:limit], y[:limit]
    if tuple(info.input_shape) != tuple(input_shape):
        raise DatasetError(f"dataset {name} has samples of shape {info.input_shape}, the graph's Input expects "
                           f"{tuple(input_shape)}")
    return x, y


def direct_encode(x: np.ndarray, T: int) -> np.ndarray:
    """Direct encoding: the analog sample at each of the T steps -> (T, batch, *shape)."""
    return np.broadcast_to(x[None], (T, *x.shape))


def merge_traces(parts: list[Trace]) -> Trace:
    first = parts[0]
    outputs = {k: np.concatenate([p.outputs[k] for p in parts], axis=1) for k in first.outputs}
    counts = {n: {k: sum(p.counts[n][k] for p in parts) for k in c} for n, c in first.counts.items()}
    meta = dict(first.meta)
    meta["spikes_recorded_for_batch"] = first.batch
    return Trace(timesteps=first.timesteps, batch=sum(p.batch for p in parts), outputs=outputs, counts=counts,
                 spikes=first.spikes, backend=first.backend, profile=first.profile, meta=meta)


def run_backend(graph, info, x_tb: np.ndarray, backend: str, profile: str | None = None, dt: float | None = None,
                precision: str = "float", batch_size: int = 256, progress: bool = True, desc: str | None = None,
                allow_reset_to_zero: bool = False, threshold_groups: bool = False) -> Trace:
    """Run (T, batch, *shape) inputs through a backend, batching for the simulator.
    threshold_groups: lava, and eventsim's loihi-fixed profile: split populations with
    spread per-neuron thresholds into LIF processes with their own vth."""
    total = x_tb.shape[1]
    bar = progress_bar(total, desc or backend, progress)
    t0 = time.perf_counter()
    try:
        if backend == "eventsim":
            from spikebridge.hardware.eventsim import simulate
            if threshold_groups and profile == "loihi-fixed":
                profile = "loihi-fixed-groups"
            parts = []
            for i in range(0, total, batch_size):
                xb = np.ascontiguousarray(x_tb[:, i:i + batch_size])
                parts.append(simulate(graph, xb, profile=profile or "spikebridge", dt=dt,
                                      record_spikes=(i == 0), info=info))
                bar.update(xb.shape[1])
            trace = merge_traces(parts)
        elif backend == "lava":
            from spikebridge.hardware.lava import run_lava
            if profile not in (None, "spikebridge", "lava-float", "loihi-fixed", "loihi-fixed-groups"):
                raise InputError(f"--profile {profile} is not used by the lava backend (it reads the graph as "
                                 "spikebridge exports it)")
            trace = run_lava(graph, np.ascontiguousarray(x_tb), precision=precision,
                             allow_reset_to_zero=allow_reset_to_zero,
                             threshold_groups=threshold_groups or profile == "loihi-fixed-groups" or None,
                             progress=lambda done, total: bar.update(done - bar.n))
        else:
            raise InputError(f"unknown backend {backend!r}; use eventsim or lava")
    finally:
        bar.close()
    trace.meta["wall_seconds"] = time.perf_counter() - t0
    trace.meta["samples_per_second"] = total / max(trace.meta["wall_seconds"], 1e-9)
    return trace


def accuracy_of(graph, trace: Trace, labels: np.ndarray) -> tuple[float, np.ndarray]:
    from spikebridge.hardware.graph import classify, graph_meta

    out_name = next(iter(trace.outputs))
    preds = classify(trace.outputs[out_name], graph_meta(graph)["readout"])
    return float(np.mean(preds == labels)), preds


def save_trace_npz(path, trace: Trace, extra: dict | None = None) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, arr in trace.outputs.items():
        arrays[name] = arr
    if len(trace.outputs) == 1:
        arrays["output"] = next(iter(trace.outputs.values()))
    for node, kinds in trace.counts.items():
        for kind, series in kinds.items():
            arrays[f"counts/{node}/{kind}"] = np.asarray(series)
    for node, sp in trace.spikes.items():  # the first sample's spikes, for rasters
        arrays[f"spikes/{node}"] = np.asarray(sp[:, :1]).astype(bool)
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_trace_npz(path, backend: str) -> Trace:
    """Rebuild a Trace from an OUT.npz written by save_trace_npz (no pickles)."""
    p = Path(path)
    try:
        import zipfile
        with zipfile.ZipFile(p) as zf:  # declared sizes first: a deflated bomb is refused unread
            declared = sum(i.file_size for i in zf.infolist())
        if declared > MAX_TRACE_BYTES:
            raise InputError(f"arrays declare {declared} bytes, above the {MAX_TRACE_BYTES}-byte limit",
                             file=str(p), place="archive")
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, MemoryError, crafted .npy headers (TokenError, ...)
        raise InputError(f"not a readable .npz ({' '.join(str(e).split())[:200] or type(e).__name__})",
                         file=str(p), place="archive") from None
    outputs, counts, spikes = {}, {}, {}
    for k, v in data.items():
        if v.dtype.kind not in "biuf":
            raise InputError(f"array dtype {v.dtype} is not numeric", file=str(p), place=k)
        if k.startswith("counts/"):
            if k.count("/") != 2:
                raise InputError("count arrays are named counts/NODE/KIND", file=str(p), place=k)
            _, node, kind = k.split("/", 2)
            counts.setdefault(node, {})[kind] = v
        elif k.startswith("spikes/"):
            spikes[k.split("/", 1)[1]] = v
        elif k not in ("accuracy", "labels", "predictions") and v.ndim >= 2:
            outputs[k] = v
    if len(outputs) > 1:
        outputs.pop("output", None)  # the alias written when there is exactly one Output node
    if not outputs:
        raise InputError("no output arrays in the file", file=str(p), place="arrays")
    first = next(iter(outputs.values()))
    return Trace(timesteps=first.shape[0], batch=first.shape[1], outputs=outputs, counts=counts,
                 spikes=spikes, backend=backend)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("spikebridge", "torch", "numpy", "nir", "onnx", "onnxruntime", "safetensors", "scikit-learn", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
