"""Run the Lava worker out of process, under supervision (never imports lava).

The worker runs on the Lava environment's interpreter (found by
``interpreter.find_lava_venv``: $SPIKEBRIDGE_LAVA_VENV, the source checkout's .venv-lava,
or the per-user environment ``spikebridge setup-lava`` builds) in its own session/process group, with a timeout,
exchanging files in a private temporary directory. On timeout, SIGINT/SIGTERM or any
exception in the parent, the whole group is killed (SIGTERM, then SIGKILL after a short
grace), reaped, the /dev/shm segments its processes had open are removed, and the
temporary directory is deleted.
"""
from __future__ import annotations

import atexit
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

from spikebridge.base.errors import BackendError
from spikebridge.hardware.lava.interpreter import FIX, find_lava_venv

WORKER = Path(__file__).resolve().parent / "worker.py"
KILL_GRACE_S = 3.0


def lava_venv() -> tuple[Path, str]:
    """(the Lava environment, how it was found): see interpreter.find_lava_venv."""
    return find_lava_venv()


def lava_python() -> Path:
    """The worker's interpreter; BackendError (saying how to fix it) when missing."""
    venv, how = lava_venv()
    py = venv / "bin" / "python"
    if not py.exists():
        where = f"{venv} (from {how}) has no bin/python" if how == "SPIKEBRIDGE_LAVA_VENV" else how
        raise BackendError(f"the Lava environment is missing: {where}; {FIX}")
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM while a job runs: unwinds like Ctrl-C (cleanup, exit 130 from the CLI)."""

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


def _worker_env(env: dict | None) -> dict:
    wenv = dict(os.environ if env is None else env)
    wenv.pop("PYTHONPATH", None)  # the worker is standalone; never pick up numpy>=2 code
    wenv.setdefault("PYTHONUNBUFFERED", "1")
    return wenv


def _write_job(tmp: Path, meta: dict, arrays: dict, x: np.ndarray) -> None:
    (tmp / "plan.json").write_text(json.dumps(meta))
    np.savez(tmp / "plan.npz", **arrays)
    np.save(tmp / "inputs.npy", np.ascontiguousarray(x, dtype=np.float64))


def _read_result(tmp: Path, rc) -> tuple[dict, dict]:
    if rc != 0 or not (tmp / "out.npz").exists():
        raise BackendError(f"Lava worker failed (exit code {rc}): {_last_error(tmp)}")
    with np.load(tmp / "out.npz", allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    info = json.loads((tmp / "out.json").read_text()) if (tmp / "out.json").exists() else {}
    return out, info


def persistent_enabled() -> bool:
    return os.environ.get("SPIKEBRIDGE_LAVA_PERSISTENT", "1") not in ("0", "", "false", "no")


def run_job(meta: dict, arrays: dict[str, np.ndarray], x: np.ndarray, timeout_s: float | None = None,
            progress=None, env: dict | None = None,
            persistent: bool | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run one plan on the worker. x: (T, batch, n_in) float64. Returns (arrays, info).

    persistent (default: $SPIKEBRIDGE_LAVA_PERSISTENT, on): hand the job to the long-lived
    worker of this process (started on first use, Lava imported once); otherwise start a
    worker for this job alone."""
    if persistent is None:
        persistent = persistent_enabled()
    if persistent:
        return _POOL.run(meta, arrays, x, timeout_s, progress, env)
    py = lava_python()
    tmp = Path(tempfile.mkdtemp(prefix="spikebridge-lava-"))
    proc = None
    shm: set[str] = set()
    try:
        _write_job(tmp, meta, arrays, x)
        wenv = _worker_env(env)
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
        return _read_result(tmp, rc)
    except BaseException:
        if proc is not None and (proc.returncode is None or _group_alive(proc.pid)):
            kill_group(proc, shm)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Persistent:
    """One long-lived worker per parent process (``worker.py --serve``), in its own session.

    A job is a directory named on the worker's stdin; the worker answers "<code> <dir>" on
    stdout. The worker is discarded (group killed, its shm unlinked) after any failure,
    timeout, interrupt or exception in the parent, and at exit (atexit); a worker started
    under another environment (SPIKEBRIDGE_* variables, interpreter) is replaced. If the
    parent dies by SIGKILL, the worker's parent watchdog kills its group."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.wdir: Path | None = None
        self.key = None
        self.shm: set[str] = set()
        self.jobs = 0

    def _key(self, py, wenv):
        return (str(py), tuple(sorted((k, v) for k, v in wenv.items() if k.startswith("SPIKEBRIDGE_"))))

    def _start(self, py, wenv, timeout_s):
        self.wdir = Path(tempfile.mkdtemp(prefix="spikebridge-lava-worker-"))
        self.err = open(self.wdir / "stderr.txt", "wb")
        self.proc = subprocess.Popen([str(py), str(WORKER), "--serve", str(self.wdir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     env=wenv, start_new_session=True, cwd=str(self.wdir))
        self.key = self._key(py, wenv)
        self.jobs = 0
        line = self._readline(timeout_s if timeout_s is not None else 300.0)
        if line != "ready":
            err = _last_lines(self.wdir / "stderr.txt")
            self.close()
            raise BackendError(f"the persistent Lava worker did not start: {err}")

    def _readline(self, timeout_s, tmp=None, progress=None, last=None) -> str | None:
        import select

        end = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        buf = b""
        last_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= end:
                return None
            r, _, _ = select.select([fd], [], [], min(0.1, end - now))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return buf.decode(errors="replace").strip() or None
                buf += chunk
                if b"\n" in buf:
                    if not self.shm:  # a job faster than one scan: record the kept network's segments
                        self.shm = _shm_of(_group_pids(self.proc.pid))
                    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()
            if now - last_scan > 0.5:  # segments seen (pruned of those already gone)
                self.shm = {p for p in self.shm if os.path.exists(p)} | _shm_of(_group_pids(self.proc.pid))
                last_scan = now
            if tmp is not None and progress is not None:
                last = _report_progress(tmp, progress, last)

    def close(self):
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()
            kill_group(self.proc, self.shm, grace_s=1.0)
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdout.close()
            with contextlib.suppress(OSError):
                self.err.close()
        if self.wdir is not None:
            shutil.rmtree(self.wdir, ignore_errors=True)
        self.proc, self.wdir, self.key, self.shm = None, None, None, set()

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def run(self, meta, arrays, x, timeout_s, progress, env):
        py = lava_python()
        wenv = _worker_env(env)
        with self.lock, _sigterm_raises():
            if self.proc is not None and (self.proc.poll() is not None or self.key != self._key(py, wenv)):
                self.close()
            tmp = None
            try:
                if self.proc is None:
                    self._start(py, wenv, timeout_s)
                tmp = Path(tempfile.mkdtemp(prefix="job-", dir=self.wdir))
                _write_job(tmp, meta, arrays, x)
                start = time.monotonic()
                self.proc.stdin.write(f"{tmp}\n".encode())
                self.proc.stdin.flush()
                line = self._readline(timeout_s if timeout_s is not None else 1e9, tmp, progress)
                if line is None:
                    if timeout_s is not None and time.monotonic() - start >= timeout_s:
                        self.close()
                        raise BackendError(f"Lava worker timed out after {timeout_s:g} s (killed)")
                    rc = self.proc.wait(timeout=5) if self.proc.poll() is None else self.proc.returncode
                    line = f"{rc} {tmp}"
                code = int(line.split()[0]) if line.split() and line.split()[0].lstrip("-").isdigit() else 1
                if code != 0:
                    msg = _last_error(tmp) if (tmp / "error.txt").exists() else _last_lines(self.wdir / "stderr.txt")
                    self.close()  # never reuse a worker after a failed job
                    raise BackendError(f"Lava worker failed (exit code {code}): {msg}")
                if progress is not None:
                    _report_progress(tmp, progress, None)
                self.jobs += 1
                out, info = _read_result(tmp, code)
                info["persistent_worker"] = {"pid": self.pid(), "jobs": self.jobs}
                return out, info
            except BaseException:
                if self.proc is not None:
                    self.close()
                raise
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)


def _last_lines(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return " ".join(lines[-1].split())[:500]
    return "no error message (killed by a signal?)"


_POOL = _Persistent()


def shutdown_worker() -> None:
    """Stop this process's persistent Lava worker (also done at exit)."""
    _POOL.close()


def persistent_worker_pid() -> int | None:
    return _POOL.pid()


atexit.register(shutdown_worker)


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
    from spikebridge.hardware.lava.interpreter import find_lava_python

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


if __name__ == "__main__":  # python -m spikebridge.hardware.lava.supervisor: print the status
    json.dump(lava_status(), sys.stdout, indent=2)
    print()
