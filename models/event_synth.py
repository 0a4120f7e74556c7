"""Small synthetic event datasets written in each dataset's own on-disk format (N-MNIST .bin,
DVS Gesture AEDAT 3.1 + labels csv, SHD HDF5), so the real readers of models/event_data.py can
be tested and benchmarked where no data can be downloaded.

The writers are the inverse of the readers' documented formats. The ``make_*`` functions write
a whole folder laid out as ``--data-dir`` expects, with class-dependent events (class c fires
around a position or channel band that depends on c, so a small network learns it in one
epoch): ``make_nmnist(root, per_class=3)`` -> root/Train/<digit>/*.bin, root/Test/<digit>/*.bin.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from spikebridge.base.fileio import atomic_path, atomic_write_bytes, atomic_write_text


def encode_nmnist(t, x, y, p) -> bytes:
    """N-MNIST 40-bit records; timestamps past 2^23 - 1 get y = 240 overflow markers
    (each adds 2^13, as the reader undoes)."""
    t, x, y, p = (np.asarray(a, np.int64) for a in (t, x, y, p))
    recs = []
    added = 0
    for ti, xi, yi, pi in zip(t, x, y, p):
        while ti - added >= (1 << 23):
            added += 1 << 13
            recs.append(bytes([0, 240, 0, 0, 0]))  # overflow marker (its own timestamp is discarded)
        r = int(ti - added)
        recs.append(bytes([int(xi), int(yi), (int(pi) << 7) | (r >> 16), (r >> 8) & 255, r & 255]))
    return b"".join(recs)


def encode_aedat31(t, x, y, p, packet_events: int = 64, special_packet: bool = True) -> bytes:
    """An AEDAT 3.1 file: header, an optional special-event packet (type 0, skipped by the
    reader), then polarity packets of at most ``packet_events`` events (valid bit set)."""
    head = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    out = [head]
    if special_packet:
        out.append(struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 1, 1, 1) + struct.pack("<Ii", 0, 0))
    t, x, y, p = (np.asarray(a, np.int64) for a in (t, x, y, p))
    for i in range(0, len(t), packet_events):
        sl = slice(i, i + packet_events)
        over = int(t[sl][0] >> 31) if len(t[sl]) else 0
        n = len(t[sl])
        ev = np.empty(n, np.dtype([("d", "<u4"), ("t", "<i4")]))
        ev["d"] = (x[sl] << 17) | (y[sl] << 2) | (p[sl] << 1) | 1
        ev["t"] = t[sl] - (over << 31)
        out.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, over, n, n, n) + ev.tobytes())
    return b"".join(out)


def write_shd(path, samples, classes: int = 20) -> None:
    """An SHD-format .h5: ``samples`` = [(times_s, units, label), ...]."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("spikes")
            tds = g.create_dataset("times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
            uds = g.create_dataset("units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
            for i, (tt, uu, _) in enumerate(samples):
                tds[i] = np.asarray(tt, np.float32)
                uds[i] = np.asarray(uu, np.uint16)
            f.create_dataset("labels", data=np.asarray([s[2] for s in samples], np.uint16))


def _blob(rng, n, cx, cy, spread, hw):
    x = np.clip(np.round(rng.normal(cx, spread, n)), 0, hw - 1).astype(np.int64)
    y = np.clip(np.round(rng.normal(cy, spread, n)), 0, hw - 1).astype(np.int64)
    return x, y


def make_nmnist(root, per_class: int = 3, test_per_class: int = 2, events: int = 300, seed: int = 0) -> Path:
    """root/Train/<d>/*.bin and root/Test/<d>/*.bin; digit d fires around a point on a circle
    (angle 36 d degrees) over ~300 ms."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("Train", per_class), ("Test", test_per_class)):
        for d in range(10):
            cx, cy = 17 + 10 * np.cos(d * np.pi / 5), 17 + 10 * np.sin(d * np.pi / 5)
            for k in range(n):
                t = np.sort(rng.integers(0, 300_000, events))
                x, y = _blob(rng, events, cx, cy, 2.5, 34)
                p = rng.integers(0, 2, events)
                atomic_write_bytes(root / split / str(d) / f"{k:05d}.bin", encode_nmnist(t, x, y, p))
    return root


def make_dvsgesture(root, recordings: tuple[int, int] = (2, 1), per_class: int = 1, classes: int = 11,
                    events: int = 400, seed: int = 0) -> Path:
    """user*.aedat + _labels.csv + trials lists; each recording holds ``per_class`` 1-second
    intervals of every class, class c firing around a point that depends on c."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    lists = {"train": [], "test": []}
    for split, nrec in zip(("train", "test"), recordings):
        for r in range(nrec):
            name = f"user{len(lists['train']) + len(lists['test']) + 1:02d}_synthetic"
            ts, xs, ys, ps, rows = [], [], [], [], []
            start = 1_000_000
            for c in list(range(classes)) * per_class:
                cx, cy = 64 + 40 * np.cos(c * 2 * np.pi / classes), 64 + 40 * np.sin(c * 2 * np.pi / classes)
                t = np.sort(rng.integers(start, start + 1_000_000, events))
                x, y = _blob(rng, events, cx, cy, 8, 128)
                ts.append(t); xs.append(x); ys.append(y); ps.append(rng.integers(0, 2, events))
                rows.append(f"{c + 1},{start},{start + 1_000_000}")
                start += 1_200_000
            atomic_write_bytes(root / f"{name}.aedat",
                               encode_aedat31(*(np.concatenate(a) for a in (ts, xs, ys, ps))))
            atomic_write_text(root / f"{name}_labels.csv",
                              "class,startTime_usec,endTime_usec\n" + "\n".join(rows) + "\n")
            lists[split].append(f"{name}.aedat")
    atomic_write_text(root / "trials_to_train.txt", "\n".join(lists["train"]) + "\n")
    atomic_write_text(root / "trials_to_test.txt", "\n".join(lists["test"]) + "\n")
    return root


def make_shd(root, per_class: int = 2, test_per_class: int = 1, classes: int = 20, events: int = 300,
             seed: int = 0) -> Path:
    """shd_train.h5 / shd_test.h5; class c fires in the channel band 35 c .. 35 c + 34 over ~0.8 s."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", per_class), ("test", test_per_class)):
        samples = []
        for c in range(classes):
            for _ in range(n):
                tt = np.sort(rng.uniform(0, 0.8, events))
                uu = rng.integers(35 * c, 35 * c + 35, events)
                samples.append((tt, uu, c))
        write_shd(root / f"shd_{split}.h5", samples)
    return root


MAKERS = {"nmnist": make_nmnist, "dvsgesture": make_dvsgesture, "shd": make_shd}
