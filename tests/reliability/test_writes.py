"""Issue 18 §5 and §7: writes and concurrency.

- stranded temporaries (what a SIGKILL during an atomic write leaves) are removed by the next
  write into that folder when their writer is dead; a live writer's temporary and other
  files are left alone;
- a full disk / file-size limit while writing (HDF5 via h5py for NIR, npz, ONNX) is one
  line, exit 3, the old file intact, no temporary left (RLIMIT_FSIZE in the child; a 64 KiB
  tmpfs too where mounting is permitted);
- two runs into one --out: the second is refused at once (flock on FOLDER/.spikebridge.lock);
- a read-only or full output location is refused before any computation, by every command
  that writes (export, simulate, report, train, convert);
- outputs get 0o666 & ~umask, not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from spikebridge.base import fileio
from tests.hostile.make_corpus import write_base_checkpoint, write_base_nir
from tests.reliability._contract import only, refused, run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    write_base_checkpoint(d / "ckpt")
    write_base_nir(d / "graph.nir")
    np.save(d / "x.npy", np.ones((4, 2, 4), np.float32))
    from tests.reliability.test_onnx_reading import conv_model
    onnx.save(conv_model(), str(d / "m.onnx"))
    np.save(d / "calib.npy", np.random.default_rng(1).uniform(0, 1, (16, 1, 8, 8)).astype(np.float32))
    return d


def _age(p: Path, seconds: float) -> None:
    t = p.stat().st_mtime - seconds
    os.utime(p, (t, t))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- stranded temporaries ---------------------------------------------------------------

def test_a_stranded_temporary_is_removed_by_the_next_write(tmp_path, inputs):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".graph.nir.sb{_dead_pid()}.abcd1234.nir.tmp"  # what a SIGKILL mid-write leaves
    live = out / f".graph.nir.sb{os.getpid()}.efgh5678.nir.tmp"  # a writer that is still running
    other = out / ".graph.nir.zzzz.nir.tmp"  # not our naming: never touched
    for p in (dead, live, other):
        p.write_bytes(b"partial")
        _age(p, 120)
    r = run_cli("export", inputs / "ckpt", "--format", "nir", "--out", out / "graph.nir")
    assert r.code == 0, r.stderr
    only(out, "graph.nir", live.name, other.name)


def test_a_real_sigkill_mid_write_is_cleaned_on_the_next_run(tmp_path):
    """A writer process killed inside atomic_path (after the temporary exists, before the
    rename) strands its temporary; the next atomic write there removes it."""
    out = tmp_path / "out"
    code = f"""
import os, signal
from spikebridge.base.fileio import atomic_path
with atomic_path({str(out / 'f.bin')!r}) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert p.returncode == -9
    stranded = [q.name for q in out.iterdir()]
    assert len(stranded) == 1 and stranded[0].endswith(".tmp")
    fileio.atomic_write_text(out / "g.txt", "ok")  # within the grace period: kept
    only(out, "g.txt", stranded[0])
    _age(out / stranded[0], fileio.DEAD_WRITER_GRACE_SECONDS + 5)
    fileio.atomic_write_text(out / "g.txt", "ok")
    only(out, "g.txt")


# ---- full disk ---------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["export nir (h5py)", "export onnx", "simulate npz"])
def test_file_size_limit_while_writing(tmp_path, inputs, what):
    out = tmp_path / "out"
    out.mkdir()
    name = {"export nir (h5py)": "g.nir", "export onnx": "m.onnx", "simulate npz": "sim.npz"}[what]
    (out / name).write_bytes(b"the old file")
    if what == "simulate npz":
        argv = ["simulate", inputs / "graph.nir", "--input", inputs / "x.npy", "--out", out / name]
        limit = 600  # the npz is ~1.5 KB
    else:
        argv = ["export", inputs / "ckpt", "--format", name.split(".")[1], "--out", out / name]
        limit = 20_000  # the mlp's graph is ~200 KB
    r = run_cli(*argv, fsize=limit)
    refused(r, 3, "file-size limit")
    assert r.code != -25 and r.code != -11  # not SIGXFSZ, not SIGSEGV
    assert (out / name).read_bytes() == b"the old file"
    only(out, name)


@contextlib.contextmanager
def _tmpfs(d: Path, size: str = "64k", ro: bool = False):
    d.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_tmpfs_while_writing_hdf5(tmp_path, inputs):
    """A 64 KiB tmpfs: the NIR graph (~200 KB) does not fit. One line, exit 3, old file kept."""
    with _tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "g.nir").write_bytes(b"the old file")
        r = run_cli("export", inputs / "ckpt", "--format", "nir", "--out", mnt / "g.nir")
        refused(r, 3, "disk is full")
        assert (mnt / "g.nir").read_bytes() == b"the old file"
        only(mnt, "g.nir")


# ---- up-front checks ---------------------------------------------------------------------

def _argv(cmd: str, inputs: Path, out: Path) -> list:
    return {
        "export": ["export", inputs / "ckpt", "--format", "nir", "--out", out / "g.nir"],
        "simulate": ["simulate", inputs / "graph.nir", "--input", inputs / "x.npy", "--out", out / "s.npz"],
        "report": ["report", inputs / "graph.nir", "--input", inputs / "x.npy", "--out", out / "rep"],
        "train": ["train", "--arch", "mlp", "--epochs", "1", "--device", "cpu", "--out", out / "run"],
        "convert": ["convert", inputs / "m.onnx", "--timesteps", "4", "--calibration", inputs / "calib.npy",
                    "--out", out / "g.nir"],
    }[cmd]


COMMANDS = ["export", "simulate", "report", "train", "convert"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_read_only_output_is_refused_up_front(tmp_path, inputs, cmd):
    if os.geteuid() == 0:
        ctx = _tmpfs(tmp_path / "ro", ro=True)
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        ctx = contextlib.nullcontext(tmp_path / "ro")
    with ctx as ro:
        r = run_cli(*_argv(cmd, inputs, ro))
        refused(r, 3, "read-only" if os.geteuid() == 0 else "not writable")
        assert r.stdout == ""  # nothing was computed (every command prints its result at the end)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_full_output_file_system_is_refused_up_front(tmp_path, inputs, cmd):
    with _tmpfs(tmp_path / "full", size="64k") as mnt:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        r = run_cli(*_argv(cmd, inputs, mnt))
        refused(r, 3, "no space left")
        assert r.stdout == ""
        only(mnt, "filler")


# ---- one run per folder ------------------------------------------------------------------

def test_second_train_into_the_same_out_is_refused(tmp_path):
    out = tmp_path / "run"
    with fileio.output_lock(out):  # a first run holds the folder
        r = run_cli("train", "--arch", "mlp", "--epochs", "1", "--device", "cpu", "--out", out)
        line = refused(r, 3, "another spikebridge run", f"pid {os.getpid()}")
        only(out, fileio.LOCK_NAME)
    assert not out.exists(), line  # the folder the first run created is removed again when empty


def test_lock_of_a_killed_run_does_not_block_the_next(tmp_path):
    out = tmp_path / "run"
    code = f"""
import os, signal
from spikebridge.base.fileio import output_lock
with output_lock({str(out)!r}):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert p.returncode == -9 and (out / fileio.LOCK_NAME).exists()
    with fileio.output_lock(out):
        pass
    only(out)


# ---- §7 modes ----------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path, inputs, umask):
    out = tmp_path / "out"
    code = f"""
import os, sys
os.umask({umask})
from spikebridge.toolchain.cli import main
sys.exit(main(["export", {str(inputs / 'ckpt')!r}, "--format", "nir", "--out", {str(out / 'g.nir')!r}]))
"""
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE((out / "g.nir").stat().st_mode) == 0o666 & ~umask


def test_stale_temporaries_age_rule_and_naming(tmp_path):
    """In-process rules of clean_stale_temps: a temporary of a live writer is kept until it is
    older than STALE_TEMP_SECONDS; names not of atomic_path's pattern (even .tmp) are never
    touched; the temporary atomic_path creates matches the pattern."""
    live_old = tmp_path / f".a.sb{os.getpid()}.abcdefgh.tmp"
    live_new = tmp_path / f".b.sb{os.getpid()}.abcdefgh.tmp"
    user = tmp_path / "notes.tmp"
    for p in (live_old, live_new, user):
        p.write_text("x")
    old = live_old.stat().st_mtime - fileio.STALE_TEMP_SECONDS - 60
    os.utime(live_old, (old, old))
    assert fileio.clean_stale_temps(tmp_path) == [live_old.name]
    only(tmp_path, live_new.name, user.name)
    with fileio.atomic_path(tmp_path / "c.bin") as t:
        assert fileio._TEMP_RE.match(t.name), t.name
        t.write_bytes(b"1")
    only(tmp_path, live_new.name, user.name, "c.bin")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_output_of_the_wrong_kind_is_refused_up_front(tmp_path, inputs, cmd):
    """A file --out that is an existing folder (export, simulate, convert) or a folder --out
    that is an existing file (report, train): refused before computing, not at the rename."""
    argv = _argv(cmd, inputs, tmp_path)
    target = Path(argv[-1])
    if cmd in ("report", "train"):
        target.write_text("a file")
    else:
        target.mkdir()
    r = run_cli(*argv)
    refused(r, 3, "--out")
    assert r.stdout == ""
