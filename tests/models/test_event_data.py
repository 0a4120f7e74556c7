"""Event datasets (models/event_data.py): the real readers on files written in each dataset's
own format (models/event_synth.py), hand-counted frames, labels, cache, and refusals."""
from __future__ import annotations

import json
import struct

import h5py
import numpy as np
import pytest

from spikebridge.base.errors import DatasetError
from spikebridge.models import event_data as E
from spikebridge.models import event_synth as S


def nmnist_folder(root, files):
    """files: {(split, digit, name): (t, x, y, p)}"""
    for (split, d, name), ev in files.items():
        p = root / split / str(d) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(S.encode_nmnist(*ev))
    for split in ("Train", "Test"):
        (root / split).mkdir(exist_ok=True)
    return root


def test_tonic_binning_by_hand():
    # events at t = 0, 10, 20, 30, 40, 50: duration 50, T = 2 -> window 25: bins [0,25), [25,50);
    # the event at t = 50 (the last timestamp) is in no bin, as in Tonic's ToFrame(n_time_bins)
    t = np.array([0, 10, 20, 30, 40, 50])
    x = np.array([1, 1, 2, 3, 3, 0])
    y = np.array([0, 0, 0, 1, 1, 0])
    p = np.array([0, 0, 1, 1, 0, 1])
    fr = E.to_frames(t, x, y, p, (4, 2, 2), 2)
    want = np.zeros((2, 2, 2, 4), np.int64)
    want[0, 0, 0, 1] = 2
    want[0, 1, 0, 2] = 1
    want[1, 1, 1, 3] = 1
    want[1, 0, 1, 3] = 1
    np.testing.assert_array_equal(fr, want)
    # unsorted input is sorted first: same frames
    perm = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_array_equal(E.to_frames(t[perm], x[perm], y[perm], p[perm], (4, 2, 2), 2), want)


def test_nmnist_reader_frames_and_labels(tmp_path):
    # digit 3: three events in bin 0 at (5, 6) on, one in bin 1 at (33, 0) off, last event dropped;
    # timestamps past 2^23 exercise the overflow records
    big = (1 << 23) + 100
    files = {("Train", 3, "00001.bin"): ([0, 1, 2, big - 10, big], [5, 5, 5, 33, 0], [6, 6, 6, 0, 0], [1, 1, 1, 0, 0]),
             ("Train", 7, "00002.bin"): ([0, 100, 200], [0, 1, 2], [0, 0, 0], [0, 0, 0]),
             ("Test", 0, "00003.bin"): ([0, 4, 8], [1, 2, 3], [1, 2, 3], [1, 1, 1])}
    root = nmnist_folder(tmp_path / "nm", files)
    t, x, y, p = E.read_nmnist_file(root / "Train" / "3" / "00001.bin")
    assert t.tolist() == [0, 1, 2, big - 10, big]
    xs, ys = E.load_event_dataset("nmnist", "train", E.EventTransform(2), data_dir=root, cache_dir=tmp_path / "c")
    assert xs.shape == (2, 2, 2, 34, 34) and ys.tolist() == [3, 7]
    assert xs[0, 0, 1, 6, 5] == 3 and xs[0, 1, 0, 0, 33] == 1 and xs[0].sum() == 4
    # digit 7, window 100: t=0 in bin 0, t=100 in bin 1, t=200 dropped
    assert xs[1, 0, 0, 0, 0] == 1 and xs[1, 1, 0, 0, 1] == 1 and xs[1].sum() == 2
    xt, yt = E.load_event_dataset("nmnist", "test", E.EventTransform(4), data_dir=root, cache_dir=tmp_path / "c")
    assert yt.tolist() == [0] and xt.shape == (1, 4, 2, 34, 34) and xt.sum() == 2


def test_dvsgesture_reader(tmp_path):
    root = tmp_path / "DvsGesture"
    root.mkdir()
    # one recording, two labelled intervals; the second event (x=127, y=127) downsampled to 31 at size 32
    t = np.array([100, 150, 199, 200, 1000, 1500, 2000, 3000])
    x = np.array([0, 127, 4, 9, 64, 64, 65, 0])
    y = np.array([0, 127, 4, 9, 1, 1, 2, 0])
    p = np.array([1, 0, 1, 1, 0, 0, 1, 1])
    blob = bytearray(S.encode_aedat31(t, x, y, p, packet_events=3))
    (root / "user01_x.aedat").write_bytes(bytes(blob))
    (root / "user01_x_labels.csv").write_text("class,startTime_usec,endTime_usec\n5,100,300\n11,1000,2001\n")
    (root / "trials_to_train.txt").write_text("user01_x.aedat\n")
    (root / "trials_to_test.txt").write_text("user01_x.aedat\n")
    xs, ys = E.load_event_dataset("dvsgesture", "train", E.EventTransform(2, 32), data_dir=tmp_path,
                                  cache_dir=tmp_path / "c")
    assert ys.tolist() == [4, 10] and xs.shape == (2, 2, 2, 32, 32)
    # sample 0: events t=100,150,199,200; window (200-100)//2 = 50: [100,150) -> t=100; [150,200) -> 150, 199
    assert xs[0, 0, 1, 0, 0] == 1 and xs[0, 1, 0, 31, 31] == 1 and xs[0, 1, 1, 1, 1] == 1 and xs[0].sum() == 3
    # sample 1: t=1000, 1500, 2000 -> window 500: bins hold 1000 and 1500 (both at (16, 0) off)
    assert xs[1, 0, 0, 0, 16] == 1 and xs[1, 1, 0, 0, 16] == 1 and xs[1].sum() == 2
    # full resolution, and invalid events are dropped
    data = bytearray(blob)
    hdr = data.index(b"#!END-HEADER") + len(b"#!END-HEADER\r\n")
    tt, *_ = E.read_aedat31(root / "user01_x.aedat")
    assert len(tt) == 8
    first_event = hdr + 28 + 8 + 28  # past the special packet (header + one 8-byte event) and a packet header
    data[first_event] &= 0xFE  # clear the valid bit of the first polarity event
    (root / "user01_x.aedat").write_bytes(bytes(data))
    tt, xx, *_ = E.read_aedat31(root / "user01_x.aedat")
    assert tt.tolist() == t[1:].tolist()


def test_shd_reader_channels(tmp_path):
    S.write_shd(tmp_path / "shd_train.h5", [([0.0, 0.1, 0.2, 0.3], [0, 4, 5, 699], 3), ([0.0, 1.0], [10, 10], 19)])
    S.write_shd(tmp_path / "shd_test.h5", [([0.5, 0.6, 0.7], [1, 2, 3], 0)])
    xs, ys = E.load_event_dataset("shd", "train", E.EventTransform(3, 140), data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert ys.tolist() == [3, 19] and xs.shape == (2, 3, 140)
    # times in us (float32 seconds x 1e6), window = 0.3 s // 3 = 0.1 s (to float32 rounding): units // 5
    assert xs[0, :, 0].sum() == 2 and xs[0, :, 1].sum() == 1 and xs[0].sum() == 3
    assert xs[1].sum() == 1 and xs[1, 0, 2] == 1
    full, _ = E.load_event_dataset("shd", "test", E.EventTransform(1), data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert full.shape == (1, 1, 700)


def test_generated_datasets_are_balanced(tmp_path):
    for name, mk in S.MAKERS.items():
        root = mk(tmp_path / name)
        x, y = E.load_event_dataset(name, "train", E.EventTransform(4), data_dir=root, cache_dir=tmp_path / "c")
        assert x.shape[1:] == (4, *E.input_shape(name)) and x.dtype == np.uint8
        assert sorted(set(y.tolist())) == list(range(E.SENSORS[name][1]))
        assert (x.reshape(len(x), -1).sum(1) > 0).all()


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = S.make_nmnist(tmp_path / "nm", per_class=1, test_per_class=1)
    cache = tmp_path / "cache"
    a, _ = E.load_event_dataset("nmnist", "train", E.EventTransform(3), data_dir=root, cache_dir=cache)
    assert len(list(cache.glob("nmnist-train-*-x.npy"))) == 1
    real = E._bin_split

    def boom(*a, **k):
        raise AssertionError("binned again")
    monkeypatch.setattr(E, "_bin_split", boom)
    b, _ = E.load_event_dataset("nmnist", "train", E.EventTransform(3), data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="binned again"):  # another transform: another key
        E.load_event_dataset("nmnist", "train", E.EventTransform(5), data_dir=root, cache_dir=cache)
    f = root / "Train" / "0" / "00000.bin"
    f.write_bytes(f.read_bytes()[:-5])  # a changed source file: another key
    with pytest.raises(AssertionError, match="binned again"):
        E.load_event_dataset("nmnist", "train", E.EventTransform(3), data_dir=root, cache_dir=cache)
    monkeypatch.setattr(E, "_bin_split", real)
    c, _ = E.load_event_dataset("nmnist", "train", E.EventTransform(3), data_dir=root, cache_dir=cache)
    assert c.sum() < a.sum()  # one event fewer in the truncated file


def test_missing_dataset_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv("SPIKEBRIDGE_DATA_DIR", raising=False)
    for name in E.SENSORS:
        with pytest.raises(DatasetError, match="put .* there") as e:
            E.load_event_dataset(name, "train", E.EventTransform(2), data_dir=tmp_path / "nothing")
        assert "\n" not in str(e.value)
        with pytest.raises(DatasetError, match="--data-dir"):
            E.load_event_dataset(name, "train", E.EventTransform(2))
    monkeypatch.setenv("SPIKEBRIDGE_DATA_DIR", str(tmp_path))
    S.make_shd(tmp_path / "shd", per_class=1, test_per_class=1)
    x, _ = E.load_event_dataset("shd", "test", E.EventTransform(2))  # $SPIKEBRIDGE_DATA_DIR/shd
    assert len(x) == 20 and (tmp_path / "event-cache").is_dir()


def _nm(tmp_path, blob: bytes):
    root = tmp_path / "nm"
    (root / "Train" / "1").mkdir(parents=True, exist_ok=True)
    (root / "Test").mkdir(exist_ok=True)
    (root / "Train" / "1" / "a.bin").write_bytes(blob)
    return root


@pytest.mark.parametrize("blob,match", [
    (S.encode_nmnist([0, 5], [1, 2], [1, 2], [0, 1])[:-2], "5-byte"),  # truncated
    (b"", "5-byte"),
    (S.encode_nmnist([0, 5], [1, 40], [1, 2], [0, 1]), "outside the 34x34"),
    (bytes([0, 240, 0, 0, 0]), "no events"),
])
def test_corrupt_nmnist_refused(tmp_path, blob, match):
    with pytest.raises(DatasetError, match=match):
        E.load_event_dataset("nmnist", "train", E.EventTransform(2), data_dir=_nm(tmp_path, blob),
                             cache_dir=tmp_path / "c")


def test_oversized_file_refused_before_reading(tmp_path, monkeypatch):
    root = _nm(tmp_path, S.encode_nmnist(range(100), [1] * 100, [1] * 100, [0] * 100))
    monkeypatch.setattr(E, "MAX_NMNIST_FILE", 400)
    with pytest.raises(DatasetError, match="above the limit 400"):
        E.load_event_dataset("nmnist", "train", E.EventTransform(2), data_dir=root, cache_dir=tmp_path / "c")


def _gesture(tmp_path, blob: bytes, csv="class,startTime_usec,endTime_usec\n1,0,100\n", trials="u.aedat\n"):
    root = tmp_path / "g"
    root.mkdir(exist_ok=True)
    (root / "u.aedat").write_bytes(blob)
    (root / "u_labels.csv").write_text(csv)
    (root / "trials_to_train.txt").write_text(trials)
    (root / "trials_to_test.txt").write_text(trials)
    return root


GOOD = S.encode_aedat31([0, 10, 20], [1, 2, 3], [1, 2, 3], [0, 1, 0])


@pytest.mark.parametrize("kw,match", [
    ({"blob": GOOD[:-3]}, "truncated"),
    ({"blob": GOOD[:GOOD.index(b"#!END")]}, "END-HEADER"),
    ({"blob": b"garbage" * 10}, "AEDAT 3"),
    ({"blob": GOOD.replace(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 3, 3, 3),
                           struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 1 << 28, 3, 3))}, "declares"),
    ({"blob": GOOD, "csv": "1,100,50\n"}, "start < end"),
    ({"blob": GOOD, "csv": "12,0,50\n"}, "1..11"),
    ({"blob": GOOD, "csv": "a,b\n1,x,2\n"}, "class,startTime_usec"),
    ({"blob": GOOD, "trials": "../etc/passwd.aedat\n"}, "plain .aedat"),
    ({"blob": GOOD, "trials": "missing.aedat\n"}, "missing"),
])
def test_corrupt_gesture_refused(tmp_path, kw, match):
    with pytest.raises(DatasetError, match=match):
        E.load_event_dataset("dvsgesture", "train", E.EventTransform(2), data_dir=_gesture(tmp_path, **kw),
                             cache_dir=tmp_path / "c")


def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)


def _shd_parts(f, n=2, labels=None, units=None):
    g = f.create_group("spikes")
    t = g.create_dataset("times", (n,), dtype=h5py.vlen_dtype(np.float32))
    u = g.create_dataset("units", (n,), dtype=h5py.vlen_dtype(np.uint16))
    for i in range(n):
        t[i] = np.array([0.0, 0.5], np.float32)
        u[i] = np.array(units or [1, 2], np.uint16)
    f.create_dataset("labels", data=np.array(labels or [0] * n, np.uint16))


@pytest.mark.parametrize("build,match", [
    (lambda f: None, "missing 'spikes/times'"),
    (lambda f: _shd_parts(f, labels=[0, 25]), "label out of range"),
    (lambda f: (_shd_parts(f), f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(3, np.uint16))),
     "rows"),
    (lambda f: (_shd_parts(f), f.__delitem__("labels"), f.__setitem__("labels", h5py.ExternalLink("x.h5", "/l"))),
     "hard links"),
])
def test_corrupt_shd_refused(tmp_path, build, match):
    _h5(tmp_path / "shd_train.h5", build)
    _h5(tmp_path / "shd_test.h5", build)
    with pytest.raises(DatasetError, match=match):
        E.load_event_dataset("shd", "train", E.EventTransform(2), data_dir=tmp_path, cache_dir=tmp_path / "c")


def test_shd_not_hdf5_refused(tmp_path):
    (tmp_path / "shd_train.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 50)
    (tmp_path / "shd_test.h5").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a readable SHD"):
        E.load_event_dataset("shd", "train", E.EventTransform(2), data_dir=tmp_path, cache_dir=tmp_path / "c")


def test_transform_checked():
    with pytest.raises(DatasetError, match="must divide"):
        E.EventTransform(4, 30).resolved("dvsgesture")
    with pytest.raises(DatasetError, match="34"):
        E.EventTransform(4, 17).resolved("nmnist")
    with pytest.raises(DatasetError, match="time bins"):
        E.EventTransform(0).resolved("shd")
    assert E.input_shape("dvsgesture", 64) == (2, 64, 64) and E.input_shape("shd", 140) == (140,)
    assert E.size_from_shape("dvsgesture", (2, 64, 64)) == 64 and E.size_from_shape("shd", (700,)) == 700
    assert E.size_from_shape("dvsgesture", (2, 30, 30)) is None


def test_event_architectures():
    from spikebridge.base.errors import InputError
    from spikebridge.models.architectures import build_spec, infer_shapes

    for shape, last_map in (((2, 34, 34), (64, 5, 5)), ((2, 32, 32), (64, 8, 8)), ((2, 128, 128), (64, 8, 8))):
        spec = build_spec("ecnn", shape, 11)
        shapes = [o for _, o in infer_shapes(spec, shape)]
        assert shapes[-1] == (11,) and shapes[-4] == last_map
    with pytest.raises(InputError, match="use --arch mlp"):
        build_spec("ecnn", (700,), 20)
    assert [o for _, o in infer_shapes(build_spec("mlp", (140,), 20), (140,))][-1] == (20,)


# ---- CLI: train -> export -> simulate (eventsim, Lava) -> report on a generated N-MNIST folder ----

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env_dir=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if env_dir is not None:
        env["SPIKEBRIDGE_DATA_DIR"] = str(env_dir)
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line_error(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return code == 3 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


@pytest.fixture(scope="module")
def nmnist_run(tmp_path_factory):
    """A BPTT ecnn trained 3 epochs on 60 generated N-MNIST recordings (T = 4 bins)."""
    base = tmp_path_factory.mktemp("events")
    S.make_nmnist(base / "nmnist", per_class=6, test_per_class=2)
    run = base / "run"
    code, out, err = cli("train", "--dataset", "nmnist", "--data-dir", base / "nmnist", "--method", "bptt",
                         "--arch", "ecnn", "--timesteps", 4, "--epochs", 3, "--batch-size", 4, "--lr", "3e-3",
                         "--schedule", "cosine", "--out", run, env_dir=base)
    assert code == 0, err
    code, _, err = cli("export", run, env_dir=base)
    assert code == 0, err
    return base, run, json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_nmnist_cli_train_export_simulate_report(nmnist_run):
    base, run, row = nmnist_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["input_shape"] == [2, 34, 34] and meta["events"]["bins"] == 4 and meta["neuron"]["encoding"] == "events"
    assert row["test_samples"] == 20
    code, out, err = cli("simulate", run / "graph.nir", "--dataset", "nmnist", "--data-dir", base / "nmnist",
                         "--out", run / "sim.npz", env_dir=base)
    assert code == 0, err
    sim = json.loads(out.strip().splitlines()[-1])
    assert sim["samples"] == 20 and sim["timesteps"] == 4
    # the exported graph on eventsim classifies as the trained torch network did (float32 vs float64:
    # at most one sample may flip at a threshold tie) and better than chance (0.1)
    assert abs(sim["accuracy"] - row["snn_test_accuracy"]) <= 1 / 20 + 1e-9
    assert sim["accuracy"] >= 0.5
    # report on the graph: the data come from $SPIKEBRIDGE_DATA_DIR/nmnist
    code, out, err = cli("report", run / "graph.nir", "--dataset", "nmnist", "--out", run / "rep", env_dir=base)
    assert code == 0, err
    rep = (run / "rep" / "report.json").read_text()
    assert "events" in rep and (run / "rep" / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.lava
def test_nmnist_cli_simulate_on_lava(nmnist_run):
    base, run, _ = nmnist_run
    outs, first = {}, {}
    for backend in ("eventsim", "lava"):
        code, out, err = cli("simulate", run / "graph.nir", "--dataset", "nmnist", "--data-dir", base / "nmnist",
                             "--limit", 4, "--backend", backend, "--out", run / f"{backend}.npz", env_dir=base)
        assert code == 0, err
        rule = json.loads(out)["input_layer"]
        assert rule["input"] == "counts", rule  # the generated frames have pixels with 2+ events
        with np.load(run / f"{backend}.npz", allow_pickle=False) as z:
            outs[backend] = z["predictions"]
            first[backend] = {n: (z[f"counts/{n}/synaptic_ops"], z[f"counts/{n}/macs"]) for n in rule["nodes"]}
    assert (outs["eventsim"] == outs["lava"]).sum() >= 3  # Lava float vs eventsim float64: ties may flip one
    for n, (sops, macs) in first["eventsim"].items():  # the input layer's count-weighted ops: the same events
        np.testing.assert_array_equal(first["lava"][n][0], sops)
        assert macs.sum() == 0 and sops.sum() > 0


@pytest.mark.slow
def test_dvsgesture_and_shd_train_snn2ann(tmp_path):
    """SNN2ANN trains one epoch on generated DVS Gesture (2x16x16 frames, ecnn) and SHD (140 channels, mlp)."""
    S.make_dvsgesture(tmp_path / "g", recordings=(1, 1))
    S.make_shd(tmp_path / "s", per_class=1, test_per_class=1)
    for ds, arch, size, folder, shape in (("dvsgesture", "ecnn", 16, "g", [2, 16, 16]), ("shd", "mlp", 140, "s", [140])):
        code, out, err = cli("train", "--dataset", ds, "--data-dir", tmp_path / folder, "--event-size", size,
                             "--arch", arch, "--timesteps", 3, "--epochs", 1, "--batch-size", 8,
                             "--out", tmp_path / ds, env_dir=tmp_path)
        assert code == 0, err
        meta = json.loads((tmp_path / ds / "model.json").read_text())
        assert meta["input_shape"] == shape and meta["method"] == "snn2ann" and meta["events"]["size"] == size


def test_cli_refusals(tmp_path):
    root = S.make_nmnist(tmp_path / "nm", per_class=1, test_per_class=1)
    cases = [
        (("--method", "qcfs"), "cannot train on event data"),
        (("--event-size", "17"), "must be 34"),
    ]
    for extra, match in cases:
        code, _, err = cli("train", "--dataset", "nmnist", "--data-dir", root, *extra, "--epochs", 1,
                           "--out", tmp_path / "o", env_dir=tmp_path)
        assert one_line_error(code, err) and match in err, err
    code, _, err = cli("train", "--dataset", "nmnist", "--data-dir", tmp_path / "empty", "--out", tmp_path / "o",
                       env_dir=tmp_path)
    assert one_line_error(code, err) and "put Train/<digit>/*.bin" in err
    (root / "Train" / "4" / "00000.bin").write_bytes(b"\x01\x02\x03")  # truncated
    code, _, err = cli("train", "--dataset", "nmnist", "--data-dir", root, "--out", tmp_path / "o", env_dir=tmp_path)
    assert one_line_error(code, err) and "00000.bin" in err
    assert not (tmp_path / "o" / "model.json").exists()


@pytest.mark.slow
def test_bench_methods_event_rows(tmp_path, monkeypatch):
    from spikebridge.benchmarks import bench_methods as B

    monkeypatch.setenv("SPIKEBRIDGE_DATA_DIR", str(tmp_path))  # the frame cache goes under tmp_path

    args = B._parser().parse_args(["--methods", "none", "--event-dataset", "shd", "--event-epochs", "1",
                                   "--event-per-class", "1", "--event-timesteps", "2", "--batch-size", "8",
                                   "--out", str(tmp_path / "b")])
    res = B.run(args)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"snn2ann@shd", "bptt@shd"}
    for r in rows.values():
        assert r["data"] == "synthetic" and r["arch"] == "mlp" and r["T"] == 2 and r["eventsim_samples"] == 20
        assert r["synaptic_ops_per_sample"] > 0 and 0.0 <= r["eventsim_accuracy"] <= 1.0
    assert (tmp_path / "b" / "event-data" / "shd" / "shd_train.h5").is_file()
    assert (tmp_path / "b" / "bench.json").is_file()


def test_time_window_binning_by_hand(tmp_path):
    # windows of 30 us from the first event (t = 10): [10, 40), [40, 70); t = 70 and later dropped
    t = np.array([10, 20, 39, 40, 69, 70, 500])
    x = np.array([0, 1, 1, 2, 3, 0, 0])
    fr = E.to_frames(t, x, np.zeros_like(x), np.zeros_like(x), (4, 1, 1), 2, window=30)
    np.testing.assert_array_equal(fr.reshape(2, 4), [[1, 2, 0, 0], [0, 0, 1, 1]])
    with pytest.raises(DatasetError, match="positive"):
        E.EventTransform(2, None, 0).resolved("shd")
    S.write_shd(tmp_path / "shd_train.h5", [([0.0, 0.001, 0.0015, 0.5], [0, 1, 2, 3], 1)])
    S.write_shd(tmp_path / "shd_test.h5", [([0.0], [0], 0)])
    xs, _ = E.load_event_dataset("shd", "train", E.EventTransform(2, None, 1000), data_dir=tmp_path,
                                 cache_dir=tmp_path / "c")
    assert xs[0, 0].tolist()[:4] == [1, 0, 0, 0] and xs[0, 1].tolist()[:4] == [0, 1, 1, 0]  # 0.5 s: beyond 2 ms


@pytest.mark.slow
def test_time_window_recorded_and_used_by_simulate(tmp_path, monkeypatch):
    """train --event-window-us records the window in model.json and the graph; simulate's
    --dataset bins with it (the frames equal the training transform's)."""
    monkeypatch.setenv("SPIKEBRIDGE_DATA_DIR", str(tmp_path))  # the frame cache goes under tmp_path
    from spikebridge.hardware.backends import RunOptions, prepare
    from spikebridge.toolchain.pipeline import load_samples

    root = S.make_shd(tmp_path / "s", per_class=1, test_per_class=1)
    code, _, err = cli("train", "--dataset", "shd", "--data-dir", root, "--event-size", 70, "--event-window-us",
                       200_000, "--arch", "mlp", "--method", "bptt", "--timesteps", 3, "--epochs", 1,
                       "--out", tmp_path / "r", env_dir=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "model.json").read_text())["events"]["window_us"] == 200_000
    code, _, err = cli("export", tmp_path / "r", env_dir=tmp_path)
    assert code == 0, err
    prep = prepare(tmp_path / "r" / "graph.nir", "eventsim", RunOptions())
    x_tb, labels, desc = load_samples(prep, dataset="shd", data_dir=root)
    want, y = E.load_event_dataset("shd", "test", E.EventTransform(3, 70, 200_000), data_dir=root,
                                   cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(x_tb, np.moveaxis(want, 1, 0))
    assert labels.tolist() == y.tolist() and "time_window=200000" in desc["binning"]
    other, _ = E.load_event_dataset("shd", "test", E.EventTransform(3, 70), data_dir=root, cache_dir=tmp_path / "c2")
    assert not np.array_equal(other, want)  # the window matters: n_time_bins frames differ


def test_constant_frames_equal_direct_encoding():
    """Event frames (B, T, ...) that repeat one image at every step give exactly what the
    network computes for that image under direct encoding: BPTT, SNN2ANN's SNN branch (layer by
    layer and step by step) and its ANN branch (which sees the frames' sum)."""
    import torch

    from spikebridge.models.architectures import build_spec
    from spikebridge.models.bptt import BPTTNet
    from spikebridge.models.snn2ann import SNN2ANNNet

    torch.manual_seed(0)
    T, shape = 3, (2, 12, 12)
    spec = build_spec("ecnn", shape, 5)
    x = torch.rand(4, *shape) * 2
    frames = x.unsqueeze(1).expand(4, T, *shape).contiguous()
    bp = BPTTNet(spec, shape, T).eval()
    a, ca = bp(x)
    b, cb = bp(frames)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # spike counts: equal but for a threshold tie that another batching's rounding may flip
    assert all(float((u - v).abs().sum()) <= 2 for u, v in zip(ca, cb))
    net = SNN2ANNNet(spec, shape, T).eval()
    for stepwise in (False, True):
        la, na = net.snn_forward(x, stepwise=stepwise)
        lb, nb = net.snn_forward(frames, stepwise=stepwise)
        torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
        assert all(float((u - v).abs().sum()) <= 2 for u, v in zip(na, nb))
    torch.testing.assert_close(net.ann_forward(x)[0], net.ann_forward(frames)[0], rtol=1e-5, atol=1e-5)
    # varying frames: step by step equals layer by layer; uint8 counts are accepted
    counts = torch.randint(0, 3, (4, T, *shape), dtype=torch.uint8)
    l1, n1 = net.snn_forward(counts, stepwise=False)
    l2, n2 = net.snn_forward(counts, stepwise=True)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    with pytest.raises(DatasetError, match="do not match"):
        net.snn_forward(counts[:, :2])
