"""Stages the CLI strings together: inputs, backends over whole datasets, result files."""
from __future__ import annotations

import platform
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


def load_samples(prep, *, input_npy=None, dataset: str | None = None, split: str = "test",
                 limit: int | None = None, timesteps: int | None = None, file: str | None = None):
    """(x_tb, labels or None, description) for a prepared graph: X.npy (T, batch, *input_shape)
    as given, or a dataset split direct-encoded over T = ``timesteps`` or the graph's metadata."""
    from spikebridge.hardware.graph import graph_meta

    if (input_npy is None) == (dataset is None):
        raise InputError("give exactly one of --input X.npy or --dataset NAME")
    shape = prep.input_shape
    if input_npy is not None:
        x_tb = load_input_npy(input_npy, shape)
        if limit is not None:
            x_tb = x_tb[:, :limit]
        return x_tb, None, {"input": str(input_npy)}
    T = timesteps or graph_meta(prep.graph, file=file).get("timesteps")
    if not T:
        raise InputError("the graph states no timesteps; pass --timesteps", file=file)
    x, labels = dataset_samples(dataset, split, limit, shape)
    return direct_encode(x, int(T)), labels, {"dataset": dataset, "split": split, "encoding": "direct"}


def add_run_options(p, *, running: bool = True, profile_help: str | None = None) -> None:
    """The graph/run flags, spelled and meaning the same in every command that takes them
    (simulate, report; inspect with ``running=False``: the flags that decide whether and how a
    backend reads the graph, not those of an actual run); ``run_options`` makes the RunOptions."""
    from spikebridge.hardware.backends import BACKENDS
    from spikebridge.hardware.eventsim.profiles import PROFILES

    p.add_argument("--backend", default="eventsim" if running else None,
                   choices=["eventsim", "lava", *sorted(b for b in BACKENDS if b != "eventsim")],
                   help=("" if running else "the backend to check (default: every registered backend); ")
                   + ("eventsim (default)" if running else "eventsim") + " | lava (floating_pt; with --precision fixed: fixed_pt) | lava-float | "
                        "lava-fixed | loihi-fixed (the numpy integer model of the Loihi plan, bit-exact with "
                        "lava-fixed; also --backend eventsim --profile loihi-fixed). A flag the backend does not "
                        "honour is refused (exit 3)")
    p.add_argument("--profile", help=(profile_help or "how to read the graph (default spikebridge)") + ": "
                   + ", ".join(PROFILES) + " (docs/nir-conventions.md: Profiles); the Loihi backends (lava, "
                   "loihi-fixed) lower the library profiles' reading (docs/lava.md: Third-party graphs)")
    p.add_argument("--dt", type=float, help="time step; overrides the profile's dt (and the graph's); the Loihi "
                   "backends (lava, loihi-fixed) lower with it")
    p.add_argument("--precision", choices=["float", "float32", "fixed"],
                   help="Lava precision: float (floating_pt) or fixed (Loihi fixed point, fixed_pt); eventsim: "
                        "float (float64, default) or float32 (faster; spikebridge and nir profiles only, within "
                        "the tolerance in docs/cli.md; fixed point: --backend loihi-fixed)")
    p.add_argument("--allow-reset-to-zero", action="store_true",
                   help="lava, loihi-fixed: run neurons Lava's LIF cannot express (subtract reset, sinabs "
                        "MultiSpike and membrane floors, snnTorch's late reset to zero) as Lava's neuron: one "
                        "spike, reset to 0 (an approximation; simulate reports its agreement with eventsim)")
    p.add_argument("--threshold-groups", action="store_true",
                   help="lava (and --profile loihi-fixed): split populations whose per-neuron thresholds spread "
                   "the folded weights over more than 4x into LIF processes with their own vth (fixed point "
                   "resolution; `inspect --lava` shows the split)")
    if not running:
        return
    p.add_argument("--max-memory", help="refuse a run whose estimated memory exceeds this (e.g. 8GiB; "
                   "default: 4 GiB or half the RAM, whichever is smaller)")
    p.add_argument("--batch-size", type=int,
                   help="eventsim, loihi-fixed: samples per simulator call (default 256); shards are whole batches")
    p.add_argument("--workers", type=int, metavar="N",
                   help="eventsim, loihi-fixed: shard the samples across N worker processes on this machine "
                        "(results identical to one process); with --cluster: the number of shards")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="eventsim, loihi-fixed: run the shards on an existing Dask cluster, e.g. "
                        "tcp://10.0.0.5:8786 (needs the 'cluster' extra: pip install 'spikebridge[cluster]')")
    p.add_argument("--retries", type=int,
                   help="--workers: restart a shard whose worker process died up to this many times "
                        "(default 2), then fail with exit code 4; --cluster: retries of a failed task")


def run_options(args):
    """RunOptions from the flags of ``add_run_options`` (and --limit) in ``args``."""
    from spikebridge.hardware.backends import RunOptions

    return RunOptions(profile=getattr(args, "profile", None), dt=getattr(args, "dt", None),
                      precision=getattr(args, "precision", None),
                      allow_reset_to_zero=bool(getattr(args, "allow_reset_to_zero", False)),
                      threshold_groups=bool(getattr(args, "threshold_groups", False)),
                      batch_size=getattr(args, "batch_size", None), workers=getattr(args, "workers", None),
                      cluster=getattr(args, "cluster", None), retries=getattr(args, "retries", None),
                      limit=getattr(args, "limit", None), max_memory=getattr(args, "max_memory", None))


def run(graph, x_tb: np.ndarray, backend: str = "eventsim", options=None, progress: bool = True,
        desc: str | None = None) -> Trace:
    """``hardware.backends.run_graph`` with a progress bar (``graph``: a Prepared or a graph)."""
    from spikebridge.hardware.backends import Prepared, run_graph

    name = graph.backend.name if isinstance(graph, Prepared) else backend
    bar = progress_bar(int(x_tb.shape[1]), desc or name, progress)
    try:
        if isinstance(graph, Prepared):
            return run_graph(graph, x_tb, progress=lambda done, total: bar.update(done - bar.n))
        return run_graph(graph, x_tb, backend, options, progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()


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
