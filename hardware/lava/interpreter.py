"""Find the Python 3.10 interpreter that hosts Lava (lava-nc 0.10.0 needs exactly 3.10).

Search order (first that runs and reports 3.10 wins):
  1. $SPIKEBRIDGE_LAVA_PYTHON
  2. ``python3.10`` on PATH (a pyenv shim that fails to run is skipped)
  3. pyenv's 3.10: ``$(pyenv root)/versions/3.10.*/bin/python3.10``
  4. ``uv python find 3.10``

Runnable as a script with no third-party imports (``make setup`` calls it before any
environment exists): prints the path, or one line on stderr and exits 1.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

HOW_TO_GET = (
    "no Python 3.10 found for Lava; install one (e.g. `pyenv install 3.10`, "
    "`uv python install 3.10`, or `apt-get install python3.10`) "
    "or set SPIKEBRIDGE_LAVA_PYTHON=/path/to/python3.10"
)


def _is_310(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "3.10"


def candidates() -> list[tuple[str, str]]:
    """(how it was found, path) in search order; paths may not work."""
    found: list[tuple[str, str]] = []
    env = os.environ.get("SPIKEBRIDGE_LAVA_PYTHON")
    if env:
        found.append(("SPIKEBRIDGE_LAVA_PYTHON", env))
    on_path = shutil.which("python3.10")
    if on_path:
        found.append(("python3.10 on PATH", on_path))
    root = None
    if shutil.which("pyenv"):
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = None
    root = root or os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for p in sorted(glob.glob(os.path.join(root, "versions", "3.10*", "bin", "python3.10")), reverse=True):
        found.append(("pyenv", p))
    if shutil.which("uv"):
        try:
            out = subprocess.run(["uv", "python", "find", "3.10"], capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip():
                found.append(("uv python find 3.10", out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def find_lava_python() -> tuple[str, str] | None:
    """Return (how, path) of the first working Python 3.10, or None."""
    env = os.environ.get("SPIKEBRIDGE_LAVA_PYTHON")
    for how, path in candidates():
        if _is_310(path):
            return how, path
        if how == "SPIKEBRIDGE_LAVA_PYTHON" and env:
            # An explicit choice that does not work is an error, not a hint to look elsewhere.
            return None
    return None


def main() -> int:
    found = find_lava_python()
    if found is None:
        env = os.environ.get("SPIKEBRIDGE_LAVA_PYTHON")
        if env:
            print(f"error: SPIKEBRIDGE_LAVA_PYTHON={env} is not a working Python 3.10", file=sys.stderr)
        else:
            print(f"error: {HOW_TO_GET}", file=sys.stderr)
        return 1
    print(found[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
