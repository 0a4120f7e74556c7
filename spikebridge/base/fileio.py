"""Atomic output files: write to a temporary name beside the target, fsync, rename.

An interrupted run leaves either the old file or the new one, never a partial file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    previous ``path`` (if any) is left untouched. ``suffix`` keeps the extension for
    libraries that look at it (e.g. numpy adds .npz otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{sfx}.tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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


def print_json(obj, out: str | os.PathLike | None = None) -> None:
    """A benchmark's result: JSON on stdout and, with ``out``, the same text written atomically."""
    text = json.dumps(obj, indent=1)
    if out:
        atomic_write_text(out, text + "\n")
    print(text)
