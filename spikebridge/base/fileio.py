"""File I/O shared by every layer: atomic outputs and bounded inputs.

Outputs (``atomic_path`` and the helpers on it): write to a hidden temporary name beside
the target (``.NAME.sb<pid>.XXXXXXXX<ext>.tmp``), fsync, rename. An interrupted run leaves
either the old file or the new one, never a partial file. The file gets the mode any file
the user writes gets (0o666 & ~umask, not mkstemp's 0600). A SIGKILL can still strand a
temporary file; the next atomic write into the same folder removes stranded temporaries
of this naming whose writer process is gone (untouched for a minute), or that are older
than a day. A write that
fails because the disk is full or a file-size limit is hit (ENOSPC, EDQUOT, EFBIG; HDF5's
own wording of them included) raises ``OutputError`` (exit 3) naming the file.

``check_writable(path)`` tells, before any computation, whether an output (file or
folder) can be created there; ``output_lock(folder)`` keeps two runs out of one folder.

Inputs: ``regular_file`` (stat only), ``read_regular_bytes`` (a bounded read that also
catches /proc-style files whose size lies) and ``read_json`` (bounded, strict, no
RecursionError).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from spikebridge.base.errors import InputError, OutputError

STALE_TEMP_SECONDS = 24 * 3600  # a temporary of a live writer older than this is stranded too
# a dead writer's temporary is removed once untouched this long (a writer in another PID
# namespace sharing the folder looks dead from here, but keeps its file's mtime fresh)
DEAD_WRITER_GRACE_SECONDS = 60
_TEMP_RE = re.compile(r"^\..+\.sb(\d+)\.[A-Za-z0-9_]{8}.*\.tmp$")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# HDF5 (h5py) reports a failed write as a plain OSError/RuntimeError whose text carries the errno
_FULL_TEXT = re.compile(r"errno = (28|27|122)\b|No space left|File too large|Disk quota", re.I)


def _umask() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # not thread-safe; only where /proc is missing
    os.umask(old)
    return old


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove temporaries of ``atomic_path``'s naming in ``folder`` whose writer process is
    gone (and that were untouched for DEAD_WRITER_GRACE_SECONDS), or that are older than
    ``max_age_s``; returns the removed names. Files of any other naming are never touched."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if not m:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        pid = int(m.group(1))
        age = now - st.st_mtime
        if (age > DEAD_WRITER_GRACE_SECONDS and pid != os.getpid() and not _pid_alive(pid)) or age > max_age_s:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(e.name)
    return removed


def is_disk_full(e: BaseException) -> bool:
    """True for an error that means "the disk (or the file-size limit) is full"."""
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return True
    return bool(_FULL_TEXT.search(str(e))) if isinstance(e, (OSError, RuntimeError)) else False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    previous ``path`` (if any) is left untouched. ``suffix`` keeps the extension for
    libraries that look at it (e.g. numpy adds .npz otherwise). A full disk or file-size
    limit becomes ``OutputError``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder: {e.strerror}", str(path.parent)) from None
    clean_stale_temps(path.parent)
    sfx = path.suffix if suffix is None else suffix
    mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.sb{os.getpid()}.", suffix=f"{sfx}.tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write here: {e.strerror}", str(path)) from None
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_path, mode)  # a library may have recreated the file
            os.replace(tmp_path, path)
        except (OSError, RuntimeError) as e:
            if is_disk_full(e):
                raise OutputError("the disk is full or the file-size limit was reached while writing; the "
                                  "previous file (if any) is unchanged", str(path)) from None
            raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_npy(path: str | os.PathLike, arr) -> None:
    """``np.save`` of one array (never pickled) through ``atomic_path``: the file appears whole or not at all."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _strict(obj):
    """Replace non-finite floats by None so the JSON stays strict (no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalars and arrays
        return _strict(obj.tolist())
    return obj


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    text = json.dumps(_strict(obj), indent=indent, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def regular_file(file: str, max_bytes: int, error: type) -> os.stat_result:
    """``os.stat`` of an input file that must exist, be a regular file (not a FIFO or a
    device: reading those can block or never end) and be at most ``max_bytes``; otherwise
    raises ``error(rule, file, "file")`` (an InputError subclass)."""
    try:
        st = os.stat(file)
    except OSError as e:
        raise error(f"cannot open: {e.strerror}", file, "file") from None
    if not stat.S_ISREG(st.st_mode):
        raise error("not a regular file", file, "file")
    if st.st_size > max_bytes:
        raise error(f"file is {st.st_size} bytes, above the limit {max_bytes}", file, "file")
    return st


def read_regular_bytes(file: str | os.PathLike, max_bytes: int, error: type = InputError,
                       place: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, read with a bound. A FIFO,
    device or directory is refused before opening (they block or never end), and a file
    whose content does not match its size (a /proc or /sys file, or one that changed while
    being read) is refused too. Raises ``error(rule, file, place)``."""
    file = str(file)
    st = regular_file(file, max_bytes, error)
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot open: {e.strerror}", file, place) from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # swapped between stat and open
            raise error("not a regular file", file, place)
        chunks, left = [], max_bytes + 1
        while left > 0:
            try:
                b = os.read(fd, min(left, 1 << 20))
            except OSError as e:
                raise error(f"cannot read: {e.strerror}", file, place) from None
            if not b:
                break
            chunks.append(b)
            left -= len(b)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise error(f"file is above the limit of {max_bytes} bytes", file, place)
    if len(data) != st.st_size:
        raise error(f"the file's content ({len(data)} bytes read) does not match its size ({st.st_size}): "
                    "a special file (e.g. under /proc) or a file that changed while being read", file, place)
    return data


def load_npy(file: str | os.PathLike, max_bytes: int, error: type = InputError, kinds: str = "biuf"):
    """A .npy array from a stranger, bounded by its header before anything is allocated: a
    regular file, memory-mapped read-only (a header that declares more data than the file
    holds fails there, at no cost), never unpickled, dtype kind in ``kinds``, at most
    ``max_bytes``; returns an in-memory copy. Failures are ``error(rule, file, "file")``."""
    import numpy as np

    file = str(file)
    regular_file(file, max_bytes + (1 << 20), error)  # the header is not counted in max_bytes
    try:
        arr = np.load(file, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - numpy parses the header with ast: crafted ones raise anything
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise error(f"not a readable .npy array ({msg})", file, "file") from None
    if not isinstance(arr, np.ndarray):
        raise error("expected a single .npy array", file, "file")
    if arr.dtype.kind not in kinds:
        raise error(f"dtype {arr.dtype} is not one of the kinds {kinds!r}", file, "file")
    if arr.nbytes > max_bytes:
        raise error(f"the array {arr.shape} of {arr.dtype} is {arr.nbytes} bytes, above the limit {max_bytes}",
                    file, "file")
    return np.array(arr)


MAX_JSON_DEPTH = 64


def _depth(obj, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion)."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def read_json(file: str | os.PathLike, max_bytes: int = 16 << 20, error: type = InputError,
              max_depth: int = MAX_JSON_DEPTH, allow_nan: bool = False):
    """Parse a JSON file from a stranger: a bounded read of a regular file (``read_regular_bytes``),
    UTF-8, no NaN/Infinity unless ``allow_nan`` (then they read as float nan/inf), nesting of at
    most ``max_depth`` levels. Every failure is ``error(rule, file, "file")`` (one line)."""
    file = str(file)
    data = read_regular_bytes(file, max_bytes, error)
    depth = 0
    for ch in re.finditer(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', data):  # nesting, outside strings
        t = ch.group()
        if t in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise error(f"JSON nested deeper than {max_depth} levels", file, "file")
        elif t in (b"]", b"}"):
            depth -= 1

    def constant(name):
        if allow_nan:
            return float(name.replace("Infinity", "inf"))
        raise ValueError(f"non-finite number {name} is not allowed")
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, parse_constant=constant)
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 ({e.reason} at byte {e.start})", file, "file") from None
    except (ValueError, RecursionError, MemoryError) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise error(f"not valid JSON ({msg})", file, "file") from None
    if _depth(obj, max_depth) > max_depth:  # belt and braces (the scan above already bounds it)
        raise error(f"JSON nested deeper than {max_depth} levels", file, "file")
    return obj


def check_writable(path: str | os.PathLike, what: str = "output", kind: str | None = None) -> None:
    """Refuse, before any computation, an output ``path`` (``kind`` "file" or "folder", or
    None for either) that cannot be written: the nearest existing folder on its way must be
    a writable folder on a file system with free space; an existing ``path`` must be of the
    expected kind (never a special file). Raises ``OutputError`` naming the path (nothing
    is created)."""
    p = Path(os.path.abspath(os.fspath(path)))
    if p.exists() and not p.is_dir() and not p.is_file():
        raise OutputError(f"the {what} exists and is not a regular file or folder", str(p))
    if kind == "file" and p.is_dir():
        raise OutputError(f"the {what} is a folder; give a file name", str(p))
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputError(f"the {what} exists and is not a folder", str(p))
    folder = p if p.is_dir() else p.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder, so the {what} cannot be created", str(p))
    if not os.access(folder, os.W_OK | os.X_OK):
        try:
            ro = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        except OSError:
            ro = False
        why = "is on a read-only file system" if ro else "is not writable"
        raise OutputError(f"{folder} {why}; choose another location for the {what}", str(p))
    try:
        sv = os.statvfs(folder)
    except OSError:
        return
    if sv.f_blocks and (sv.f_bavail == 0 and os.geteuid() != 0 or sv.f_bfree == 0):  # (FUSE may report 0 blocks)
        raise OutputError(f"no space left on the file system of {folder}", str(p))


LOCK_NAME = ".spikebridge.lock"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (``fcntl.flock`` on FOLDER/.spikebridge.lock)
    for the duration of a run; a second run into the same folder is refused at once with
    ``OutputError``. The lock file is removed on release; a folder this call had to create
    is removed again if the run left it empty."""
    import fcntl

    d = Path(folder)
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder: {e.strerror}", str(d)) from None
    lock = d / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise OutputError(f"cannot create a lock file: {e.strerror}", str(d)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(f"another spikebridge run{who} is writing to this folder; wait for it or "
                              "choose another --out", str(d)) from None
        try:  # the file we locked must still be the one at that name (a releaser may have unlinked it)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when empty


def print_json(obj, out: str | os.PathLike | None = None) -> None:
    """A benchmark's result: JSON on stdout and, with ``out``, the same text written atomically."""
    text = json.dumps(obj, indent=1)
    if out:
        atomic_write_text(out, text + "\n")
    print(text)
