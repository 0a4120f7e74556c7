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


def _read_npy(p: Path) -> np.ndarray:
    """A memory-mapped .npy (never unpickled); one-line DatasetError for anything else."""
    if not p.is_file():
        raise DatasetError("file not found", file=str(p))
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - numpy parses the header with tokenize/ast: crafted ones raise
                            # ValueError, SyntaxError, tokenize.TokenError, ...
        raise DatasetError(f"not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                           file=str(p)) from None
    if not isinstance(arr, np.ndarray):
        raise DatasetError("expected a single .npy array", file=str(p))
    return arr


def load_input_npy(path, input_shape: tuple[int, ...], allow_static: bool = False) -> np.ndarray:
    """X.npy, bool or numeric, never unpickled: time-major (T, batch, *input_shape), or with
    ``allow_static`` also static samples (batch, *input_shape). The number of dimensions
    decides which (a static array has one fewer than a time-major one), so no shape is ever
    read both ways."""
    p = Path(path)
    arr = _read_npy(p)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"dtype {arr.dtype} is not bool, integer or float", file=str(p))
    k = len(input_shape)
    static = allow_static and arr.ndim == 1 + k and tuple(arr.shape[1:]) == tuple(input_shape)
    if not static and (arr.ndim != 2 + k or tuple(arr.shape[2:]) != tuple(input_shape)):
        want = f"(T, batch, *{tuple(input_shape)})" + (f" or (batch, *{tuple(input_shape)})" if allow_static else "")
        raise DatasetError(f"shape {arr.shape} is not {want} as the graph's Input needs", file=str(p))
    if min(arr.shape[:1 if static else 2]) < 1:
        raise DatasetError("batch must be at least 1" if static else "T and batch must be at least 1", file=str(p))
    if arr.nbytes > MAX_INPUT_BYTES:
        raise DatasetError(f"input is {arr.nbytes} bytes, above the {MAX_INPUT_BYTES}-byte limit", file=str(p))
    out = np.asarray(arr)
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise DatasetError("input has NaN or Inf values", file=str(p))
    return out


def load_labels(path, batch: int, num_classes: int | None) -> np.ndarray:
    """y.npy: integer class labels, shape (batch,), each in [0, num_classes); int64.
    Never unpickled; anything else is refused in one line (DatasetError, exit 3)."""
    p = Path(path)
    arr = _read_npy(p)
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"labels must be integers, got dtype {arr.dtype}", file=str(p))
    if arr.ndim != 1 or arr.shape[0] != int(batch):
        raise DatasetError(f"labels have shape {arr.shape}; the input has {batch} samples, so ({batch},) "
                           "is needed", file=str(p))
    y = np.asarray(arr).astype(np.int64)
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
            raise DatasetError(f"labels range over [{lo}, {hi}]; the graph's output has "
                               f"{num_classes} classes, so they must be {bound}", file=str(p))
    return y


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
    from spikebridge.base.encoding import encode

    return encode(x, "direct", T)


def num_classes(prep) -> int | None:
    """Classes of the graph's (single) Output: its last axis; None when it cannot be told."""
    outs = list(getattr(prep.info, "outputs", []) or [])
    if len(outs) != 1:
        return None
    shape = tuple(prep.info.shapes.get(outs[0]) or ())
    return int(shape[-1]) if shape else None


def choose_encoding(graph_encoding, given: str | None, file: str | None = None) -> tuple[str, str]:
    """(encoding, where it came from) for static samples: ``given`` (--encoding), else the
    graph's recorded one, else direct. A given encoding that differs from the recorded one is
    allowed and warned about in one line (EncodingWarning); an unknown recorded one is refused
    (GraphError) unless --encoding overrides it."""
    import warnings

    from spikebridge.base.dialect import META_KEY
    from spikebridge.base.encoding import ENCODINGS, EncodingWarning, check_encoding
    from spikebridge.base.errors import GraphError

    if graph_encoding == "events" and given is None:
        raise InputError("the graph was trained on binned event frames: give them time-major (T, batch, ...) "
                         "with --input, or the event dataset with --dataset (docs/datasets.md); --encoding "
                         "encodes static samples instead", file)
    if graph_encoding is not None and str(graph_encoding) not in ENCODINGS and given is None:
        raise GraphError(f"encoding {graph_encoding!r} is not one of {', '.join(ENCODINGS)}; pass --encoding",
                         file, f"graph metadata {META_KEY}")
    if given is not None:
        check_encoding(given)
        if graph_encoding and graph_encoding != given:
            warnings.warn(f"--encoding {given}: the graph was trained with {graph_encoding} encoding",
                          EncodingWarning, stacklevel=2)
        return given, "command line"
    if graph_encoding:
        return str(graph_encoding), "graph metadata"
    return "direct", "default"


def event_samples(name: str, split: str, limit: int | None, input_shape, T: int, data_dir=None,
                  window_us: int | None = None):
    """An event dataset's split binned into T frames of the graph's input shape (``window_us``:
    fixed windows, as the graph's training recorded) -> (x_tb float32 (T, batch, *input_shape),
    labels, description); data from ``data_dir`` or $SPIKEBRIDGE_DATA_DIR/<name> (models/event_data.py)."""
    from spikebridge.models.event_data import EventTransform, load_event_dataset, size_from_shape

    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1")
    size = size_from_shape(name, input_shape)
    if size is None:
        raise DatasetError(f"dataset {name} cannot be binned into the graph's input shape {tuple(input_shape)}")
    x, y = load_event_dataset(name, split, EventTransform(int(T), size, window_us), data_dir, limit=limit)
    x_tb = np.ascontiguousarray(np.moveaxis(x, 1, 0), dtype=np.float32)
    how = f"n_time_bins={int(T)}" if window_us is None else f"time_window={int(window_us)} us x {int(T)}"
    return x_tb, y, {"dataset": name, "split": split, "encoding": "events",
                     "binning": f"tonic ToFrame {how}, size {size}"}


def load_samples(prep, *, input_npy=None, dataset: str | None = None, split: str = "test",
                 limit: int | None = None, timesteps: int | None = None, file: str | None = None,
                 labels_npy=None, encoding: str | None = None, seed: int | None = None, data_dir=None):
    """(x_tb, labels or None, description) for a prepared graph.

    Samples: ``input_npy`` X.npy, time-major (T, batch, *input_shape) run as given, or static
    (batch, *input_shape) encoded over T; or a dataset split: static samples encoded over T,
    or frame sequences (batch, T, *input_shape), run as given; an event dataset (models/event_data.py)
    is binned into T frames (``event_samples``, from ``data_dir`` or $SPIKEBRIDGE_DATA_DIR/<name>). The
    number of dimensions decides between static and time-major. T = ``timesteps`` or the
    graph's metadata. Encoding of static samples (spikebridge.base.encoding): ``encoding``,
    else the one the graph records (metadata ``encoding``), else direct; ``seed`` seeds rate
    encoding (default 0). A time-major X.npy is never encoded (an explicit ``encoding`` is
    refused with it). Labels: the dataset's, or ``labels_npy`` (y.npy, integer (batch,)
    within the graph's output classes; only with X.npy). ``limit`` keeps the first samples
    (of X.npy and y.npy alike). The description says what was done (input, layout, encoding
    and where it came from, labels)."""
    from spikebridge.base.encoding import encode
    from spikebridge.hardware.graph import graph_meta

    if (input_npy is None) == (dataset is None):
        raise InputError("give exactly one of --input X.npy or --dataset NAME")
    if labels_npy is not None and dataset is not None:
        raise InputError("--labels is for --input X.npy; a dataset has its own labels", place="--labels")
    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1")
    shape = prep.input_shape
    seed = 0 if seed is None else int(seed)

    def steps() -> int:
        T = timesteps or graph_meta(prep.graph, file=file).get("timesteps")
        if not T:
            raise InputError("the graph states no timesteps; pass --timesteps", file=file)
        return int(T)

    if input_npy is not None:
        x = load_input_npy(input_npy, shape, allow_static=True)
        static = x.ndim == 1 + len(shape)
        n_full = int(x.shape[0] if static else x.shape[1])
        if static:
            x = x[:limit] if limit is not None else x
        else:
            if encoding is not None:
                raise InputError(f"--encoding {encoding}: X.npy is time-major (T, batch, ...), already a "
                                 "sequence; give static samples (batch, ...) to encode them", file=str(input_npy))
            if timesteps is not None and int(timesteps) != x.shape[0]:
                raise InputError(f"--timesteps {timesteps} but X.npy is time-major with T = {x.shape[0]}",
                                 file=str(input_npy))
            x = x[:, :limit] if limit is not None else x
        desc = {"input": str(input_npy),
                "input_layout": "static (batch, ...)" if static else "time-major (T, batch, ...)"}
        labels = None
        if labels_npy is not None:  # one label per sample of X.npy; --limit keeps the first of both
            labels = load_labels(labels_npy, n_full, num_classes(prep))
            labels = labels[:limit] if limit is not None else labels
            desc["labels"] = str(labels_npy)
        if not static:
            desc["encoding"] = "none (time-major input run as given)"
            return x, labels, desc
    else:
        from spikebridge.models.event_data import is_event_dataset

        if is_event_dataset(dataset):
            if encoding is not None:
                raise InputError(f"--encoding {encoding}: dataset {dataset} is event data, binned into frames "
                                 "and run as given")
            rec = graph_meta(prep.graph, file=file).get("events")
            window = rec.get("window_us") if isinstance(rec, dict) else None
            return event_samples(dataset, split, limit, shape, steps(), data_dir, window)
        x, labels = dataset_samples(dataset, split, limit, shape)
        desc = {"dataset": dataset, "split": split}
        if x.ndim == len(shape) + 2:  # a dataset of frame sequences (batch, T, ...), e.g. event data
            if encoding is not None:
                raise InputError(f"--encoding {encoding}: dataset {dataset} is already a sequence of frames; "
                                 "it is run as given")
            if timesteps is not None and int(timesteps) != x.shape[1]:
                raise InputError(f"--timesteps {timesteps} but dataset {dataset} has T = {x.shape[1]} frames")
            desc.update(input_layout="frames (batch, T, ...)", encoding="none (frames run as given)")
            return np.moveaxis(x, 1, 0), labels, desc
    enc, source = choose_encoding(graph_meta(prep.graph, file=file).get("encoding"), encoding, file)
    desc.update(encoding=enc, encoding_source=source)
    if enc == "rate":
        desc["seed"] = seed
    return encode(x, enc, steps(), seed=seed), labels, desc


INPUT_HELP = ("X.npy, bool or numeric: static samples (batch, *input_shape), encoded over T (--encoding, "
              "--timesteps), or time-major (T, batch, *input_shape), run as given; the number of dimensions "
              "decides (docs/inputs.md)")


def add_sample_options(p, prefix: str = "") -> None:
    """--labels, --encoding, --seed and --data-dir: how samples become a run's input (simulate, report);
    ``load_samples`` reads them. ``prefix`` starts each help (e.g. "GRAPH.nir only: ")."""
    from spikebridge.base.encoding import ENCODINGS

    p.add_argument("--labels", metavar="Y.npy",
                   help=prefix + "with --input: integer class labels, one per sample (shape (batch,), each in "
                        "[0, classes)); gives accuracy as --dataset does")
    p.add_argument("--encoding", choices=ENCODINGS,
                   help=prefix + "how static samples become spikes over T: direct (the analog sample every step) | "
                        "rate (Bernoulli, p = intensity clipped to [0, 1]) | latency (one spike, brighter earlier) "
                        "| delta (onset events where the sample rises by >= 0.1). Default: the encoding the graph "
                        "records (a different one is run, with a warning), else direct. Time-major X.npy is never "
                        "encoded (docs/inputs.md)")
    p.add_argument("--seed", type=int, default=0, help=prefix + "seed of rate encoding (default 0)")
    p.add_argument("--data-dir", metavar="DIR", help=prefix + "event datasets (--dataset nmnist | dvsgesture | "
                   "shd): the folder with your local copy (default $SPIKEBRIDGE_DATA_DIR/<dataset>; docs/datasets.md)")


def sample_options(args) -> dict:
    """``load_samples`` keywords from the flags of ``add_sample_options`` in ``args``."""
    return {"labels_npy": getattr(args, "labels", None), "encoding": getattr(args, "encoding", None),
            "seed": getattr(args, "seed", None), "data_dir": getattr(args, "data_dir", None)}


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
