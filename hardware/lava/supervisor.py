"""Run the Lava worker out of process, under supervision (never imports lava).

The worker runs on the Lava interpreter (<repo>/.venv-lava/bin/python, or
$SPIKEBRIDGE_LAVA_VENV/bin/python) in its own session/process group, with a timeout,
exchanging files in a private temporary directory. On timeout, SIGINT/SIGTERM or any
exception in the parent, the whole group is killed (SIGTERM, then SIGKILL after a short
grace), reaped, the /dev/shm segments its processes had open are removed, and the
temporary directory is deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hardware.errors import BackendError

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "worker.py"
FIX = "run `make setup` (creates .venv-lava with lava-nc 0.10.0 on Python 3.10)"
KILL_GRACE_S = 3.0


def lava_venv() -> tuple[Path, str]:
    env = os.environ.get("SPIKEBRIDGE_LAVA_VENV")
    if env:
        return Path(env), "SPIKEBRIDGE_LAVA_VENV"
    return REPO / ".venv-lava", "default (<repo>/.venv-lava)"


def lava_python() -> Path:
    """The worker's interpreter; BackendError (saying how to fix it) when missing."""
    venv, how = lava_venv()
    py = venv / "bin" / "python"
    if not py.exists():
        raise BackendError(f"the Lava environment {venv} is missing ({how}): {FIX}")
    return py


# ----------------------------------------------------------------------------- process group


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:  # state ppid pgrp ...
                pids.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _shm_of(pids: list[int]) -> set[str]:
    """/dev/shm files the given processes map or hold open."""
    found: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        found.add(line[i:].strip().replace(" (deleted)", ""))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if t.startswith("/dev/shm/"):
                        found.add(t.replace(" (deleted)", ""))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies still count for killpg; look at states
    for pid in _group_pids(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            if stat[stat.rindex(")") + 2] != "Z":
                return True
    return False


def kill_group(proc: subprocess.Popen, shm: set[str], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the worker's group, SIGKILL what is left after ``grace_s``, reap, unlink its shm."""
    pgid = proc.pid
    shm |= _shm_of(_group_pids(pgid))
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
            if proc.returncode is not None and not _group_alive(pgid):
                break
        else:
            continue
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for path in shm:
        with contextlib.suppress(OSError):
            os.unlink(path)


class _Terminated(BaseException):
    pass


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into an exception while the worker runs, so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------- running a job


def run_job(meta: dict, arrays: dict[str, np.ndarray], x: np.ndarray, timeout_s: float | None = None,
            progress=None, env: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run one plan on the worker. x: (T, batch, n_in) float64. Returns (arrays, info)."""
    py = lava_python()
    tmp = Path(tempfile.mkdtemp(prefix="spikebridge-lava-"))
    proc = None
    shm: set[str] = set()
    try:
        (tmp / "plan.json").write_text(json.dumps(meta))
        np.savez(tmp / "plan.npz", **arrays)
        np.save(tmp / "inputs.npy", np.ascontiguousarray(x, dtype=np.float64))
        wenv = dict(os.environ if env is None else env)
        wenv.pop("PYTHONPATH", None)  # the worker is standalone; never pick up numpy>=2 code
        wenv.setdefault("PYTHONUNBUFFERED", "1")
        with _sigterm_raises():
            with open(tmp / "stderr.txt", "wb") as err:
                proc = subprocess.Popen([str(py), str(WORKER), str(tmp)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, env=wenv,
                                        start_new_session=True, cwd=str(tmp))
            start = time.monotonic()
            last_scan = 0.0
            last_prog = None
            while True:
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - last_scan > 0.5:
                    shm |= _shm_of(_group_pids(proc.pid))
                    last_scan = now
                if progress is not None:
                    last_prog = _report_progress(tmp, progress, last_prog)
                if timeout_s is not None and now - start > timeout_s:
                    kill_group(proc, shm)
                    raise BackendError(f"Lava worker timed out after {timeout_s:g} s (killed)")
            rc = proc.returncode
            kill_group(proc, shm)  # stray children, leaked segments (normally nothing)
            if progress is not None and rc == 0:
                _report_progress(tmp, progress, last_prog)
        if rc != 0 or not (tmp / "out.npz").exists():
            raise BackendError(f"Lava worker failed (exit code {rc}): {_last_error(tmp)}")
        with np.load(tmp / "out.npz", allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        info = json.loads((tmp / "out.json").read_text()) if (tmp / "out.json").exists() else {}
        return out, info
    except BaseException:
        if proc is not None and (proc.returncode is None or _group_alive(proc.pid)):
            kill_group(proc, shm)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report_progress(tmp: Path, progress, last):
    """Call progress(done, total) when the worker's progress file changed."""
    with contextlib.suppress(OSError, ValueError):
        done, total = (int(v) for v in (tmp / "progress.txt").read_text().split())
        if (done, total) != last:
            progress(done, total)
            return (done, total)
    return last


def _last_error(tmp: Path) -> str:
    with contextlib.suppress(OSError):
        line = (tmp / "error.txt").read_text().strip().splitlines()
        if line:
            return line[-1]
    with contextlib.suppress(OSError):
        lines = [ln for ln in (tmp / "stderr.txt").read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return " ".join(lines[-1].split())[:500]
    return "no error message (killed by a signal?)"


# ----------------------------------------------------------------------------- doctor


def lava_status(timeout_s: float = 120.0) -> dict:
    """What `spikebridge doctor` shows about Lava: interpreter, venv, whether lava imports."""
    from hardware.lava.interpreter import find_lava_python

    venv, how = lava_venv()
    py = venv / "bin" / "python"
    st = {"venv": str(venv), "venv_found_by": how, "python": str(py), "python_exists": py.exists(),
          "base_python": None, "base_python_found_by": None, "lava_importable": False,
          "lava_version": None, "python_version": None, "error": None, "fix": None}
    found = find_lava_python()
    if found is not None:
        st["base_python_found_by"], st["base_python"] = found
    if not py.exists():
        st["error"] = f"{py} does not exist"
        st["fix"] = FIX
        return st
    code = ("import sys, importlib.metadata as m; import lava.magma.core.run_configs; "
            "print('%d.%d.%d' % sys.version_info[:3]); print(m.version('lava-nc'))")
    try:
        r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=timeout_s,
                           start_new_session=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except (OSError, subprocess.SubprocessError) as e:
        st["error"] = " ".join(f"{type(e).__name__}: {e}".split())
        st["fix"] = FIX
        return st
    if r.returncode == 0:
        lines = r.stdout.split()
        st["lava_importable"] = True
        st["python_version"], st["lava_version"] = lines[0], lines[1]
    else:
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        st["error"] = err[-1] if err else f"exit code {r.returncode}"
        st["fix"] = FIX
    return st


if __name__ == "__main__":  # python -m hardware.lava.supervisor: print the status
    json.dump(lava_status(), sys.stdout, indent=2)
    print()
