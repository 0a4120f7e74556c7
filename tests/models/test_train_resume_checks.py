"""``train --resume`` of snn2ann / bptt (models/methods/snn2ann.py): settings checked like every
registered method, metrics rows kept inside train_state.pt (a kill between the two renames
loses nothing), and a hostile metrics.jsonl of an older state refused in one line (exit 3),
never hanging, never reading without bound, leaving every file as it was."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COMMON = ["--dataset", "digits", "--limit-train", "64", "--limit-test", "32", "--arch", "mlp", "--device", "cpu",
          "--timesteps", "2", "--batch-size", "32"]


def _main(*argv) -> tuple[int, list[str]]:
    from spikebridge.toolchain.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--no-progress", *argv])
    return rc, err.getvalue().strip().splitlines()


def _snapshot(d: Path) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink()
                     else "special") for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A 2-epoch snn2ann run (the reference every test copies)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    rc, err = _main("train", *COMMON, "--method", "snn2ann", "--epochs", "2", "--out", str(out))
    assert rc == 0, err
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def _resume(out: Path, *extra, method="snn2ann", epochs="3"):
    return _main("train", *COMMON, "--method", method, "--epochs", epochs, "--out", str(out), "--resume", *extra)


def _refused(rc, err, *words):
    assert rc == 3, err
    assert len(err) == 1 and err[0].startswith("error:"), err
    for w in words:
        assert w in err[0], err


@pytest.mark.parametrize("extra,word", [(["--lr", "0.01"], "lr"), (["--timesteps", "3"], "timesteps"),
                                        (["--smu", "resu"], "smu"), (["--seed", "1"], "seed")])
def test_resume_with_other_settings_is_refused_and_changes_nothing(run2, tmp_path, extra, word):
    out = _copy(run2, tmp_path / "run")
    before = _snapshot(out)
    argv = [a for a in COMMON]
    for i in range(0, len(extra), 2):
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i:i + 2]
    rc, err = _main("train", *argv, "--method", "snn2ann", "--epochs", "3", "--out", str(out), "--resume")
    _refused(rc, err, "--resume with a different configuration", word)
    assert _snapshot(out) == before


def test_resume_with_another_method_is_refused(run2, tmp_path):
    out = _copy(run2, tmp_path / "run")
    before = _snapshot(out)
    rc, err = _resume(out, method="bptt")
    _refused(rc, err, "method", "'snn2ann' there", "'bptt' now")
    assert _snapshot(out) == before


def test_bptt_resume_checks_the_neuron(tmp_path):
    out = tmp_path / "b"
    rc, err = _main("train", *COMMON, "--method", "bptt", "--neuron", "if", "--epochs", "1", "--out", str(out))
    assert rc == 0, err
    before = _snapshot(out)
    rc, err = _resume(out, "--neuron", "lif", method="bptt", epochs="2")
    _refused(rc, err, "neuron")
    assert _snapshot(out) == before
    rc, err = _resume(out, "--neuron", "if", method="bptt", epochs="2")
    assert rc == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_kill_between_the_state_and_the_metrics_loses_no_row(run2, tmp_path, monkeypatch):
    """Killed after train_state.pt (epoch 3) is renamed, before metrics.jsonl is rewritten: the
    resumed run still has every row, equal to an uninterrupted run's (times aside)."""
    from spikebridge.models.methods import common as C
    from spikebridge.models.config import TrainConfig
    from spikebridge.models.train import train

    def cfg(epochs):
        return TrainConfig(method="snn2ann", arch="mlp", dataset="digits", timesteps=2, epochs=epochs, batch_size=32,
                           limit_train=64, device="cpu", extra={"limit_test": 32})

    full = tmp_path / "full"
    train(cfg(4), full, progress=False)
    out = tmp_path / "killed"
    real = C.write_history

    def kill_at_3(o, history, plot=True):
        if len(history) == 3:
            raise KeyboardInterrupt  # the process dies here
        real(o, history, plot)

    monkeypatch.setattr(C, "write_history", kill_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(4), out, progress=False)
    monkeypatch.setattr(C, "write_history", real)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # epoch 3's row never reached the file
    train(cfg(4), out, progress=False, resume=True)

    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(out) == rows(full)
    a = torch.load(out / "train_state.pt", weights_only=True)["model"]
    b = torch.load(full / "train_state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


# ---- states written before the rows and settings lived in them: metrics.jsonl is read ----

def _legacy(run2: Path, dst: Path) -> Path:
    """The run as spikebridge 63bfee2 left it: train_state.pt without 'config' and 'history'."""
    out = _copy(run2, dst)
    st = torch.load(out / "train_state.pt", weights_only=True)
    del st["config"], st["history"]
    torch.save(st, out / "train_state.pt")
    return out


def test_legacy_state_resumes_from_a_valid_metrics_file(run2, tmp_path):
    out = _legacy(run2, tmp_path / "run")
    rc, err = _resume(out)
    assert rc == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_legacy_state_checks_settings_against_model_json(run2, tmp_path):
    out = _legacy(run2, tmp_path / "run")
    before = _snapshot(out)
    rc, err = _resume(out, "--lr", "0.5")
    _refused(rc, err, "lr")
    assert _snapshot(out) == before


HOSTILE = {
    "garbage": lambda p: p.write_bytes(b"\x00\xff{not json\n"),
    "nan": lambda p: p.write_text('{"epoch": 1, "loss": NaN}\n{"epoch": 2, "loss": 1.0}\n'),
    "infinity": lambda p: p.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": -Infinity}\n'),
    "not-an-object": lambda p: p.write_text('[1, 2]\n{"epoch": 2}\n'),
    "too-few-rows": lambda p: p.write_text('{"epoch": 1, "loss": 1.0}\n'),
    "deep": lambda p: p.write_text("[" * 100000 + "]" * 100000 + "\n"),
    "directory": lambda p: p.mkdir(),
    "missing": lambda p: None,
    "zero-device": lambda p: p.symlink_to("/dev/zero"),
    "huge": lambda p: p.write_bytes(b" " * (16 << 20) + b"\n"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_legacy_state_refuses_a_hostile_metrics_file(run2, tmp_path, kind):
    out = _legacy(run2, tmp_path / "run")
    (out / "metrics.jsonl").unlink()
    HOSTILE[kind](out / "metrics.jsonl")
    before = _snapshot(out)
    rc, err = _resume(out)
    _refused(rc, err, "metrics.jsonl")
    assert _snapshot(out) == before


def test_legacy_state_with_a_fifo_metrics_file_does_not_hang(run2, tmp_path):
    out = _legacy(run2, tmp_path / "run")
    (out / "metrics.jsonl").unlink()
    os.mkfifo(out / "metrics.jsonl")
    before = _snapshot(out)
    r = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", "train", *COMMON, "--method", "snn2ann",
                        "--epochs", "3", "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    err = r.stderr.strip().splitlines()
    _refused(r.returncode, err, "metrics.jsonl", "not a regular file")
    assert _snapshot(out) == before


def test_current_state_never_reads_metrics_jsonl(run2, tmp_path):
    """The rows come from train_state.pt: a FIFO in place of metrics.jsonl is replaced, not read."""
    out = _copy(run2, tmp_path / "run")
    (out / "metrics.jsonl").unlink()
    os.mkfifo(out / "metrics.jsonl")
    r = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", "train", *COMMON, "--method", "snn2ann",
                        "--epochs", "3", "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_nan_rows_inside_the_state_are_refused(run2, tmp_path):
    out = _copy(run2, tmp_path / "run")
    st = torch.load(out / "train_state.pt", weights_only=True)
    st["history"] = st["history"].replace('"loss": ', '"loss": NaN, "x": ', 1)
    torch.save(st, out / "train_state.pt")
    before = _snapshot(out)
    rc, err = _resume(out)
    _refused(rc, err, "train_state.pt", "non-finite")
    assert _snapshot(out) == before


def test_a_kill_before_model_json_of_the_last_epoch_is_repaired_by_resume(tmp_path, monkeypatch):
    """Killed after the last epoch's train_state.pt, before its model.json and metrics.jsonl:
    --resume trains nothing more and leaves checkpoint, model.json and rows of that epoch."""
    from spikebridge.models import checkpoint as CK
    from spikebridge.models.checkpoint import read_meta
    from spikebridge.models.config import TrainConfig
    from spikebridge.models.train import train

    cfg = TrainConfig(method="bptt", arch="mlp", dataset="digits", timesteps=2, epochs=2, batch_size=32,
                      limit_train=64, device="cpu", neuron="if", extra={"limit_test": 32})
    out = tmp_path / "run"
    real, calls = CK.atomic_write_json, {"n": 0}

    def kill_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*a, **k)

    monkeypatch.setattr(CK, "atomic_write_json", kill_second)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(CK, "atomic_write_json", real)
    assert read_meta(out)["metrics"]["epoch"] == 1
    assert torch.load(out / "train_state.pt", weights_only=True)["epoch"] == 2
    row = train(cfg, out, progress=False, resume=True)
    assert row["epoch"] == 2 and read_meta(out)["metrics"] == row
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1] == row


@pytest.mark.parametrize("method", ["snn2ann", "qcfs"])
def test_a_directory_in_place_of_the_state_is_refused_not_retrained(tmp_path, method):
    out = tmp_path / "run"
    out.mkdir()
    state = out / ("train_state.pt" if method == "snn2ann" else "train_state.qcfs-ann.pt")
    state.mkdir()
    rc, err = _main("train", *COMMON, "--method", method, "--epochs", "1", "--out", str(out), "--resume")
    _refused(rc, err, state.name, "directory")
    assert sorted(p.name for p in out.iterdir()) == [state.name]
