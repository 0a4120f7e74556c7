"""Event datasets (N-MNIST, DVS Gesture, SHD) read from a local copy in the on-disk formats
Tonic uses, binned into time-major frames and cached as .npy arrays.

Our own readers (Tonic itself is not needed): every file is size-checked before anything is
read or allocated, and a missing, truncated or corrupt file is refused with one line
(``DatasetError``, exit 3) that says where the files belong. Layout under ``--data-dir DIR``
(or ``$SPIKEBRIDGE_DATA_DIR/<name>``; ``DIR/NMNIST``, ``DIR/DvsGesture`` and ``DIR/SHD``,
Tonic's own folder names, are found too):

- ``nmnist``: ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin`` (the original Train.zip /
  Test.zip extracted). A file is 40-bit records: byte 0 x, byte 1 y, byte 2 bit 7 polarity
  and bits 6..0 timestamp bits 22..16, bytes 3-4 timestamp bits 15..0 (microseconds). A
  record with y = 240 is a timestamp-overflow marker: 2^13 is added to it and every later
  timestamp and it is dropped (Tonic's ``read_mnist_file``). Sensor 34 x 34 x 2.
- ``dvsgesture``: the original IBM release: ``user*.aedat`` (AEDAT 3.1), one
  ``<name>_labels.csv`` (``class,startTime_usec,endTime_usec``, classes 1..11) beside each,
  and ``trials_to_train.txt`` / ``trials_to_test.txt`` naming the .aedat files of each split.
  Every labelled interval [start, end) of a recording is one sample. AEDAT 3.1: ``#`` header
  lines up to ``#!END-HEADER``, then packets of a 28-byte header (eventType, eventSource,
  eventSize, eventTSOffset, eventTSOverflow, eventCapacity, eventNumber, eventValid) and
  eventCapacity x eventSize bytes; polarity packets (type 1, 8-byte events: uint32 data with
  bit 0 valid, bit 1 polarity, bits 2..16 y, bits 17..31 x; int32 timestamp, extended by
  eventTSOverflow << 31). Other packet types are skipped, invalid events dropped.
  Sensor 128 x 128 x 2.
- ``shd``: ``shd_train.h5`` / ``shd_test.h5`` with ``spikes/times`` (variable-length,
  seconds), ``spikes/units`` (variable-length, channel 0..699) and ``labels`` (0..19).
  Times become integer microseconds (x 1e6, truncated, as Tonic). Sensor 700 x 1 x 1.

Binning (``EventTransform``): Tonic's ``ToFrame(sensor_size, n_time_bins=T)`` convention:
per sample, window = (t_last - t_first) // T; bin i holds the events with
t_first + i*window <= t < t_first + (i+1)*window; the counts per (polarity, y, x) are the
frame (T, P, H, W); so, exactly as Tonic, events in the final remainder (always including the
last timestamp) fall in no bin. With ``window_us`` W instead: T windows of W microseconds from
the sample's first event (Tonic's ``ToFrame(time_window=W, start_time=t_first,
end_time=t_first + T*W)``); events after them are not counted. Events are sorted by time first (stable) where a file is not.
Spatial downsampling by an integer factor k: x // k, y // k (Tonic's Downsample with
spatial_factor 1/k): DVS Gesture ``size`` 128 (none), 64, 32, 16...; SHD ``size`` = channels,
700 or a divisor (unit // (700 // size)). Input shapes: N-MNIST (2, 34, 34), DVS Gesture
(2, S, S), SHD (C,).

Cache: the frames of a split are stored once as ``<name>-<split>-<key>-x.npy`` (uint8, or
int16 where a count exceeds 255; counts are clipped at 32767) and ``-y.npy`` (int64) in
``$SPIKEBRIDGE_DATA_DIR/event-cache`` or ``~/.cache/spikebridge/event-cache`` (or
``cache_dir``), written atomically. The key hashes the dataset, split, transform, this
module's FORMAT_VERSION and the source files' names, sizes and modification times: changing
any of them bins again.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spikebridge.base.errors import DatasetError, ResourceError
from spikebridge.base.fileio import atomic_save_npy, load_npy, read_regular_bytes, regular_file

FORMAT_VERSION = 1

# name -> (sensor (W, H, P), classes, Tonic's folder name, what to put where)
SENSORS = {"nmnist": ((34, 34, 2), 10), "dvsgesture": ((128, 128, 2), 11), "shd": ((700, 1, 1), 20)}
FOLDERS = {"nmnist": "NMNIST", "dvsgesture": "DvsGesture", "shd": "SHD"}
WHERE = {
    "nmnist": "Train/<digit>/*.bin and Test/<digit>/*.bin (N-MNIST's Train.zip and Test.zip extracted)",
    "dvsgesture": "user*.aedat, user*_labels.csv, trials_to_train.txt and trials_to_test.txt "
                  "(IBM's DvsGesture.tar.gz extracted)",
    "shd": "shd_train.h5 and shd_test.h5 (zenkelab.org/datasets, unzipped)",
}
DEFAULT_SIZE = {"nmnist": 34, "dvsgesture": 32, "shd": 700}

# bounds checked before reading or allocating
MAX_NMNIST_FILE = 4 << 20  # real files are ~20 KB
MAX_AEDAT_FILE = 1 << 30  # real recordings are < 200 MB
MAX_TEXT_FILE = 1 << 20  # labels csv, trial lists
MAX_AEDAT_PACKETS = 1 << 22  # a packet holds many events; bounds the parse loop of a crafted file
MAX_SHD_FILE = 8 << 30
MAX_SAMPLES = 200_000
MAX_EVENTS_PER_SAMPLE = 1 << 24
MAX_TIMESTEPS = 10_000
MAX_FRAME_BYTES = int(os.environ.get("SPIKEBRIDGE_EVENT_MAX_BYTES", 6 << 30))  # a split's frames in memory
ALLOWED_H5_FILTERS = {1, 2, 3, 4, 5, 6, 32000}  # built-in or h5py's own (never a plugin)


def is_event_dataset(name: str | None) -> bool:
    return name in SENSORS


def time_major(x, input_shape, timesteps: int):
    """A batch of event frames (B, T, *input_shape) (any numeric torch dtype) as float32
    (T, B, *input_shape), the time-varying input of the first layer; None for a static batch
    (B, *input_shape), which the networks direct-encode (the same input at every step).
    Frames of another T than the network's are refused."""
    if x.dim() != len(input_shape) + 2:
        return None
    if x.shape[1] != timesteps or tuple(x.shape[2:]) != tuple(input_shape):
        raise DatasetError(f"event frames of shape {tuple(x.shape[1:])} do not match the network's "
                           f"(T={timesteps}, {tuple(input_shape)})")
    return x.transpose(0, 1).float()


@dataclass(frozen=True)
class EventTransform:
    """How events become frames: ``timesteps`` bins per sample (Tonic ToFrame n_time_bins), or,
    with ``window_us``, ``timesteps`` windows of that many microseconds from the first event
    (Tonic ToFrame(time_window=w, start_time=t_first, end_time=t_first + T*w)); the spatial
    ``size`` (DVS Gesture side, SHD channels; N-MNIST 34 only; None = default)."""

    timesteps: int
    size: int | None = None
    window_us: int | None = None

    def resolved(self, name: str) -> "EventTransform":
        size = DEFAULT_SIZE[name] if self.size is None else int(self.size)
        full = SENSORS[name][0][0]
        if not 1 <= int(self.timesteps) <= MAX_TIMESTEPS:
            raise DatasetError(f"{name}: the number of time bins (--timesteps) must be 1..{MAX_TIMESTEPS}")
        if name == "nmnist" and size != 34:
            raise DatasetError("nmnist: --event-size must be 34 (N-MNIST is binned at full resolution)")
        if size < 1 or full % size:
            raise DatasetError(f"{name}: --event-size {size} must divide the sensor's {full} "
                               f"({'pixels per side' if name != 'shd' else 'channels'})")
        if self.window_us is not None and int(self.window_us) < 1:
            raise DatasetError(f"{name}: --event-window-us must be a positive number of microseconds")
        return EventTransform(int(self.timesteps), size, None if self.window_us is None else int(self.window_us))


def input_shape(name: str, size: int | None = None) -> tuple[int, ...]:
    size = DEFAULT_SIZE[name] if size is None else int(size)
    if name == "shd":
        return (size,)
    return (SENSORS[name][0][2], size, size)


def size_from_shape(name: str, shape) -> int | None:
    """The ``size`` whose input shape is ``shape`` (what a graph's Input asks for), or None."""
    shape = tuple(int(s) for s in shape)
    size = shape[0] if name == "shd" and len(shape) == 1 else (shape[-1] if len(shape) == 3 else None)
    try:
        return size if size and input_shape(name, EventTransform(1, size).resolved(name).size) == shape else None
    except DatasetError:
        return None


# ----------------------------------------------------------------------------------------
# binning
# ----------------------------------------------------------------------------------------

def to_frames(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, sensor, timesteps: int,
              window: int | None = None) -> np.ndarray:
    """Counts (T, P, H, W) of events (t, x, y, p) on ``sensor`` (W, H, P) in ``timesteps`` bins,
    Tonic's ``ToFrame(n_time_bins=T)`` slicing (module docstring), or with ``window`` fixed
    windows [t_first + i*window, t_first + (i+1)*window), i < T. int64 counts."""
    W, H, P = (int(s) for s in sensor)
    T = int(timesteps)
    out = np.zeros(T * P * H * W, np.int64)
    if len(t):
        order = np.argsort(t, kind="stable") if np.any(np.diff(t) < 0) else None
        if order is not None:
            t, x, y, p = t[order], x[order], y[order], p[order]
        if window is None:
            window = (t[-1] - t[0]) // T
        starts = np.arange(T) * window + t[0]
        lo = np.searchsorted(t, starts)
        hi = np.searchsorted(t, starts + window)
        bins = np.full(len(t), -1, np.int64)
        for i in range(T):
            bins[lo[i]:hi[i]] = i
        keep = bins >= 0
        idx = ((bins[keep] * P + p[keep].astype(np.int64)) * H + y[keep].astype(np.int64)) * W + x[keep].astype(np.int64)
        out += np.bincount(idx, minlength=out.size)
    return out.reshape(T, P, H, W)


def _bin_sample(name: str, tf: EventTransform, t, x, y, p) -> np.ndarray:
    """One sample's frames in the dataset's input shape: (T, *input_shape(name, size))."""
    (W, H, P), _ = SENSORS[name]
    k = W // tf.size
    if name == "shd":
        fr = to_frames(t, np.asarray(x) // k, np.zeros_like(x), np.zeros_like(x), (tf.size, 1, 1), tf.timesteps,
                       tf.window_us)
        return fr.reshape(tf.timesteps, tf.size)
    return to_frames(t, np.asarray(x) // k, np.asarray(y) // k, p, (tf.size, tf.size, P), tf.timesteps, tf.window_us)


# ----------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------

def read_nmnist_file(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t, x, y, p) of one N-MNIST .bin file (module docstring), validated."""
    data = read_regular_bytes(path, MAX_NMNIST_FILE, DatasetError)
    if len(data) == 0 or len(data) % 5:
        raise DatasetError(f"{len(data)} bytes is not a whole number of 5-byte N-MNIST events (truncated?)",
                           file=str(path))
    raw = np.frombuffer(data, np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = raw[:, 0], raw[:, 1]
    p = (raw[:, 2] & 128) >> 7
    t = ((raw[:, 2] & 127) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    overflow = y == 240
    t = t + np.cumsum(overflow) * (1 << 13)
    td = ~overflow
    x, y, p, t = x[td], y[td], p[td], t[td]
    if len(t) == 0:
        raise DatasetError("no events", file=str(path))
    if x.max() >= 34 or y.max() >= 34:
        raise DatasetError(f"event address ({int(x.max())}, {int(y.max())}) outside the 34x34 sensor (corrupt file?)",
                           file=str(path))
    return t, x, y, p


AEDAT_PACKET = struct.Struct("<hhiiiiii")


def read_aedat31(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t, x, y, p) of the polarity events of an AEDAT 3.1 file (module docstring), validated."""
    data = read_regular_bytes(path, MAX_AEDAT_FILE, DatasetError)
    where = str(path)
    if not data.startswith(b"#!AER-DAT3"):
        raise DatasetError("not an AEDAT 3.x file (no #!AER-DAT3 first line)", file=where)
    end = data.find(b"#!END-HEADER", 0, MAX_TEXT_FILE)
    if end < 0:
        raise DatasetError("no #!END-HEADER line in the first MiB", file=where)
    off = data.find(b"\n", end)
    if off < 0:
        raise DatasetError("truncated header", file=where)
    off += 1
    chunks = []
    packets = 0
    while off < len(data):
        packets += 1
        if packets > MAX_AEDAT_PACKETS:
            raise DatasetError(f"more than {MAX_AEDAT_PACKETS} packets", file=where)
        if off + 28 > len(data):
            raise DatasetError(f"truncated packet header at byte {off}", file=where)
        etype, _src, esize, _tsoff, tsover, cap, num, _valid = AEDAT_PACKET.unpack_from(data, off)
        off += 28
        if esize < 1 or cap < 0 or num < 0 or num > cap:
            raise DatasetError(f"bad packet header (eventSize {esize}, capacity {cap}, number {num}) at byte {off - 28}",
                               file=where)
        n = cap * esize
        if off + n > len(data):
            raise DatasetError(f"packet at byte {off - 28} declares {n} bytes, {len(data) - off} left (truncated?)",
                               file=where)
        if etype == 1:
            if esize != 8:
                raise DatasetError(f"polarity packet with {esize}-byte events (expected 8)", file=where)
            ev = np.frombuffer(data, np.dtype([("d", "<u4"), ("t", "<i4")]), count=num, offset=off)
            chunks.append((ev["d"].astype(np.int64), ev["t"].astype(np.int64) + (int(tsover) << 31)))
        off += n
    if not chunks:
        raise DatasetError("no polarity events", file=where)
    d = np.concatenate([c[0] for c in chunks])
    t = np.concatenate([c[1] for c in chunks])
    valid = (d & 1) == 1
    d, t = d[valid], t[valid]
    x, y, p = (d >> 17) & 0x7FFF, (d >> 2) & 0x7FFF, (d >> 1) & 1
    if len(d) and (x.max() >= 128 or y.max() >= 128):
        raise DatasetError(f"event address ({int(x.max())}, {int(y.max())}) outside the 128x128 sensor", file=where)
    order = np.argsort(t, kind="stable")
    return t[order], x[order], y[order], p[order]


def _text_lines(path) -> list[str]:
    data = read_regular_bytes(path, MAX_TEXT_FILE, DatasetError)
    try:
        return [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise DatasetError("not a UTF-8 text file", file=str(path)) from None


def read_gesture_labels(path) -> list[tuple[int, int, int]]:
    """Rows (class 0..10, start_us, end_us) of a DVS Gesture ``*_labels.csv``."""
    rows = []
    for i, ln in enumerate(_text_lines(path)):
        f = [s.strip() for s in ln.split(",")]
        if i == 0 and not f[0].lstrip("-").isdigit():
            continue  # the header line
        try:
            c, a, b = (int(v) for v in f)
        except ValueError:
            raise DatasetError(f"line {i + 1}: expected class,startTime_usec,endTime_usec, got {ln[:60]!r}",
                               file=str(path)) from None
        if not 1 <= c <= 11 or a < 0 or b <= a:
            raise DatasetError(f"line {i + 1}: class must be 1..11 and start < end, got {ln[:60]!r}", file=str(path))
        rows.append((c - 1, a, b))
    if not rows:
        raise DatasetError("no labelled intervals", file=str(path))
    return rows


def _h5_dataset(f, path: str, where: str):
    import h5py

    obj = f
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part not in obj:
            raise DatasetError(f"missing {path!r}", file=where)
        link = obj.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise DatasetError("links other than hard links are not allowed", file=where, place="/".join(parts[:i + 1]))
        obj = obj[part]
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError("expected a dataset", file=where, place=path)
    if obj.external or obj.is_virtual:
        raise DatasetError("external or virtual storage is not allowed", file=where, place=path)
    plist = obj.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        if int(plist.get_filter(i)[0]) not in ALLOWED_H5_FILTERS:
            raise DatasetError(f"HDF5 filter {int(plist.get_filter(i)[0])} is not allowed", file=where, place=path)
    if obj.ndim != 1 or not 0 < obj.shape[0] <= MAX_SAMPLES:
        raise DatasetError(f"expected 1..{MAX_SAMPLES} samples along one axis, shape {obj.shape}", file=where, place=path)
    return obj


def iter_shd(path, classes: int = 20):
    """Yield (times_us int64, units int64, label) per sample of an SHD .h5 file, validated
    one sample at a time (a variable-length row is read only when it is binned)."""
    import h5py

    where = str(path)
    regular_file(where, MAX_SHD_FILE, DatasetError)
    try:
        with h5py.File(where, "r") as f:
            times = _h5_dataset(f, "spikes/times", where)
            units = _h5_dataset(f, "spikes/units", where)
            labels = _h5_dataset(f, "labels", where)
            if not (len(times) == len(units) == len(labels)):
                raise DatasetError(f"spikes/times, spikes/units and labels have {len(times)}, {len(units)} and "
                                   f"{len(labels)} rows", file=where)
            for name, ds, kinds in (("spikes/times", times, "f"), ("spikes/units", units, "iu")):
                base = h5py.check_vlen_dtype(ds.dtype)
                if base is None or base.kind not in kinds:
                    raise DatasetError(f"expected variable-length {'float' if kinds == 'f' else 'integer'} rows, "
                                       f"got {ds.dtype}", file=where, place=name)
            if labels.dtype.kind not in "iu":
                raise DatasetError(f"labels must be integers, got {labels.dtype}", file=where, place="labels")
            lab = labels[()].astype(np.int64)
            if lab.min() < 0 or lab.max() >= classes:
                raise DatasetError(f"label out of range 0..{classes - 1}", file=where, place="labels")
            for i in range(len(lab)):
                tt = np.asarray(times[i], dtype=np.float64)
                uu = np.asarray(units[i]).astype(np.int64)
                if len(tt) != len(uu) or len(tt) > MAX_EVENTS_PER_SAMPLE:
                    raise DatasetError(f"sample {i}: {len(tt)} times and {len(uu)} units (equal, at most "
                                       f"{MAX_EVENTS_PER_SAMPLE})", file=where)
                if len(uu) and (uu.min() < 0 or uu.max() >= 700):
                    raise DatasetError(f"sample {i}: unit outside 0..699", file=where)
                if not np.all(np.isfinite(tt)) or (len(tt) and tt.min() < 0):
                    raise DatasetError(f"sample {i}: times must be finite and >= 0", file=where)
                # integer microseconds, truncated, as Tonic's SHD reader stores them (an int field)
                yield (tt * 1e6).astype(np.int64), uu, int(lab[i])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise DatasetError(f"not a readable SHD HDF5 file ({msg})", file=where) from None


# ----------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------

def locate(name: str, data_dir=None) -> Path:
    """The folder holding ``name``'s files: ``data_dir`` (or its Tonic-named subfolder), else
    ``$SPIKEBRIDGE_DATA_DIR/<name>``; refused with where to put the files when absent."""
    if data_dir is None:
        base = os.environ.get("SPIKEBRIDGE_DATA_DIR")
        if not base:
            raise DatasetError(f"{name}: no --data-dir given and $SPIKEBRIDGE_DATA_DIR is not set; put "
                               f"{WHERE[name]} in a folder and pass --data-dir FOLDER (train, simulate), or "
                               f"put them in PARENT/{name} and set SPIKEBRIDGE_DATA_DIR=PARENT (every command)")
        data_dir = Path(base) / name
    root = Path(data_dir)
    for cand in (root, root / FOLDERS[name]):
        if _looks_complete(name, cand):
            return cand
    raise DatasetError(f"{name} not found in {root}: put {WHERE[name]} there (or in {root / FOLDERS[name]})")


def _looks_complete(name: str, d: Path) -> bool:
    if name == "nmnist":
        return (d / "Train").is_dir() and (d / "Test").is_dir()
    if name == "dvsgesture":
        return (d / "trials_to_train.txt").is_file() and (d / "trials_to_test.txt").is_file()
    return (d / "shd_train.h5").is_file() and (d / "shd_test.h5").is_file()


def _split_files(name: str, root: Path, split: str) -> list[tuple[Path, int | None]]:
    """Source files of a split (with the label for N-MNIST)."""
    if name == "nmnist":
        folder = root / ("Train" if split == "train" else "Test")
        files = []
        for digit in range(10):
            d = folder / str(digit)
            if d.is_dir():
                files += [(f, digit) for f in sorted(d.glob("*.bin"))]
        if not files:
            raise DatasetError(f"nmnist: no <digit>/*.bin files in {folder}; put {WHERE[name]} in {root}")
        if len(files) > MAX_SAMPLES:
            raise DatasetError(f"nmnist: more than {MAX_SAMPLES} files in {folder}")
        return files
    if name == "dvsgesture":
        lst = root / ("trials_to_train.txt" if split == "train" else "trials_to_test.txt")
        files = []
        for ln in _text_lines(lst):
            if "/" in ln or "\\" in ln or ln.startswith(".") or not ln.endswith(".aedat"):
                raise DatasetError(f"not a plain .aedat file name: {ln[:60]!r}", file=str(lst))
            aedat = root / ln
            csv = root / (ln[:-len(".aedat")] + "_labels.csv")
            for f in (aedat, csv):
                if not f.is_file():
                    raise DatasetError(f"dvsgesture: {f.name} (listed in {lst.name}) is missing; put {WHERE[name]} "
                                       f"in {root}")
            files += [(aedat, None), (csv, None)]
        if not files:
            raise DatasetError("no recordings listed", file=str(lst))
        return files
    return [(root / f"shd_{split}.h5", None)]


def _fingerprint(files) -> list:
    out = []
    for f, _ in files:
        st = os.stat(f)
        out.append([f.name if f.parent.name not in "0123456789" else f"{f.parent.name}/{f.name}",
                    st.st_size, st.st_mtime_ns])
    return out


def cache_folder(cache_dir=None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("SPIKEBRIDGE_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "spikebridge") / "event-cache"


def _samples(name: str, root: Path, split: str, files):
    """Yield (t, x, y, p, label) per sample of a split."""
    if name == "nmnist":
        for f, digit in files:
            t, x, y, p = read_nmnist_file(f)
            yield t, x, y, p, digit
    elif name == "dvsgesture":
        for (aedat, _), (csv, _) in zip(files[0::2], files[1::2]):
            rows = read_gesture_labels(csv)
            t, x, y, p = read_aedat31(aedat)
            for c, a, b in rows:
                lo, hi = np.searchsorted(t, a), np.searchsorted(t, b)
                if hi - lo > MAX_EVENTS_PER_SAMPLE:
                    raise DatasetError(f"interval {a}..{b} holds {hi - lo} events, above {MAX_EVENTS_PER_SAMPLE}",
                                       file=str(aedat))
                yield t[lo:hi], x[lo:hi], y[lo:hi], p[lo:hi], c
    else:
        for tt, uu, label in iter_shd(files[0][0]):
            yield tt, uu, None, None, label


def load_event_dataset(name: str, split: str, transform: EventTransform, data_dir=None, cache_dir=None,
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, T, *input_shape) as uint8 or int16 event counts, labels int64 (N,).

    Read from ``data_dir`` (module docstring) and binned with ``transform``; the whole split
    is cached (``cache_dir``) and later calls load the cache. ``limit``: the first N samples
    (the cache still holds the whole split)."""
    if name not in SENSORS:
        raise DatasetError(f"{name!r} is not an event dataset; known: {', '.join(SENSORS)}")
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use train or test", place=name)
    tf = transform.resolved(name)
    root = locate(name, data_dir)
    files = _split_files(name, root, split)
    key = hashlib.sha256(json.dumps({"name": name, "split": split, "transform": asdict(tf),
                                     "version": FORMAT_VERSION, "files": _fingerprint(files)},
                                    sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_folder(cache_dir)
    cx, cy = folder / f"{name}-{split}-{key}-x.npy", folder / f"{name}-{split}-{key}-y.npy"
    if cx.is_file() and cy.is_file():
        x = load_npy(cx, MAX_FRAME_BYTES, DatasetError, kinds="iu")
        y = load_npy(cy, 8 * MAX_SAMPLES, DatasetError, kinds="i")
        shape = (tf.timesteps, *input_shape(name, tf.size))
        if x.ndim == 1 + len(shape) and tuple(x.shape[1:]) == shape and y.shape == (len(x),):
            return (x[:limit], y[:limit]) if limit else (x, y)
    x, y = _bin_split(name, root, split, files, tf)
    atomic_save_npy(cx, x)
    atomic_save_npy(cy, y)
    return (x[:limit], y[:limit]) if limit else (x, y)


def _bin_split(name, root, split, files, tf: EventTransform):
    shape = (tf.timesteps, *input_shape(name, tf.size))
    per = math.prod(shape)
    frames: list[np.ndarray] = []
    labels: list[int] = []
    dtype = np.uint8
    for t, x, y, p, label in _samples(name, root, split, files):
        if (len(frames) + 1) * per * 2 > MAX_FRAME_BYTES:  # held as int16 until the split is stacked
            raise ResourceError(f"{name} {split}: the frames would exceed {MAX_FRAME_BYTES} bytes "
                                "(SPIKEBRIDGE_EVENT_MAX_BYTES); use fewer --timesteps or a smaller --event-size")
        fr = _bin_sample(name, tf, t, x, y, p)
        if dtype is np.uint8 and fr.max(initial=0) > 255:
            dtype = np.int16
        frames.append(np.minimum(fr, 32767).astype(np.int16))
        labels.append(label)
    if not frames:
        raise DatasetError(f"{name} {split}: no samples in {root}")
    return np.stack(frames).astype(dtype), np.asarray(labels, np.int64)
