"""Find the Python 3.10 interpreter that hosts Lava (lava-nc 0.10.0 needs exactly 3.10), find
the Lava worker's environment, and build it (``spikebridge setup-lava``).

The Lava environment (a venv with ``requirements.txt`` beside this file) is looked up in
this order by :func:`find_lava_venv` (the supervisor runs the worker on its ``bin/python``):
  1. ``$SPIKEBRIDGE_LAVA_VENV`` (when set, it is the only place looked at)
  2. ``.venv-lava`` in the source checkout this package runs from (``make setup``)
  3. the per-user location ``$XDG_DATA_HOME/spikebridge/lava-venv``
     (``~/.local/share/spikebridge/lava-venv``; ``spikebridge setup-lava`` builds it)

Python 3.10 search order (first that runs and reports 3.10 wins):
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
from pathlib import Path

HOW_TO_GET = (
    "no Python 3.10 found for Lava; install one (e.g. `pyenv install 3.10`, "
    "`uv python install 3.10`, or `apt-get install python3.10`) "
    "or set SPIKEBRIDGE_LAVA_PYTHON=/path/to/python3.10"
)


REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
FIX = ("run `spikebridge setup-lava` (builds the Lava environment: lava-nc 0.10.0 on Python 3.10), "
       "or `make setup` in a source checkout, or set SPIKEBRIDGE_LAVA_VENV to an existing one")


def user_lava_venv() -> Path:
    """The per-user Lava environment: ``$XDG_DATA_HOME/spikebridge/lava-venv``."""
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "spikebridge" / "lava-venv"


def checkout_lava_venv() -> Path | None:
    """``<checkout>/.venv-lava`` when this package runs from a source checkout, else None.

    In a checkout the subpackages are symlinks to top-level folders, so the resolved file
    sits in ``<checkout>/hardware/lava``; an installed package has no pyproject.toml there.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "spikebridge").is_dir():
        return root / ".venv-lava"
    return None


def find_lava_venv() -> tuple[Path, str]:
    """(venv, how it was found). When none exists: the place ``setup-lava`` would build, and
    a ``how`` that says nothing was found (the caller checks ``venv/bin/python``)."""
    env = os.environ.get("SPIKEBRIDGE_LAVA_VENV")
    if env:
        return Path(env), "SPIKEBRIDGE_LAVA_VENV"
    dev = checkout_lava_venv()
    if dev is not None and (dev / "bin" / "python").exists():
        return dev, "source checkout (.venv-lava)"
    user = user_lava_venv()
    if (user / "bin" / "python").exists():
        return user, "per-user location"
    looked = ([str(dev)] if dev is not None else []) + [str(user)]
    return user, "none found in $SPIKEBRIDGE_LAVA_VENV (unset), " + ", ".join(looked)


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


def lava_version(venv: Path, timeout_s: float = 120.0) -> str | None:
    """lava-nc's version when ``venv/bin/python`` imports Lava's run configs, else None."""
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    code = "import importlib.metadata as m, lava.magma.core.run_configs; print(m.version('lava-nc'))"
    try:
        r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=timeout_s,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def setup_lava_venv(venv: Path | None = None, python: str | None = None, force: bool = False,
                    log=print) -> Path:
    """Build the Lava worker environment: a Python 3.10 venv with requirements.txt installed.

    ``venv`` defaults to $SPIKEBRIDGE_LAVA_VENV, else the per-user location. An existing
    environment in which Lava imports is kept (``force`` reinstalls the requirements). A
    directory this call created is removed again when the build fails. Raises BackendError
    (no Python 3.10, venv or pip failure) or InputError (``venv`` is a file).
    """
    from spikebridge.base.errors import BackendError, InputError

    if venv is None:
        env = os.environ.get("SPIKEBRIDGE_LAVA_VENV")
        venv = Path(env) if env else user_lava_venv()
    venv = Path(venv).expanduser().absolute()
    if venv.exists() and not venv.is_dir():
        raise InputError(f"{venv} exists and is not a directory")
    if not force:
        ver = lava_version(venv)
        if ver:
            log(f"Lava environment {venv} is ready (lava-nc {ver})")
            return venv
    if python:
        if not _is_310(python):
            raise BackendError(f"--python {python} is not a working Python 3.10 with venv")
        how = "--python"
    else:
        found = find_lava_python()
        if found is None:
            env = os.environ.get("SPIKEBRIDGE_LAVA_PYTHON")
            raise BackendError(f"SPIKEBRIDGE_LAVA_PYTHON={env} is not a working Python 3.10" if env
                               else HOW_TO_GET)
        how, python = found
    created = not venv.exists()
    py = venv / "bin" / "python"
    try:
        if not py.exists():
            log(f"creating {venv} with {python} ({how})")
            _run([python, "-m", "venv", str(venv)], "python -m venv")
        log(f"installing {REQUIREMENTS.name} into {venv} (lava-nc 0.10.0, nir, h5py, numpy<2)")
        _run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], "pip install")
        ver = lava_version(venv)
        if not ver:
            raise BackendError(f"Lava does not import in {venv} after installing {REQUIREMENTS.name}")
    except BaseException:
        if created:
            shutil.rmtree(venv, ignore_errors=True)
        raise
    log(f"Lava environment {venv} is ready (lava-nc {ver})")
    return venv


def _run(cmd: list[str], what: str) -> None:
    from spikebridge.base.errors import BackendError

    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if r.returncode != 0:
        err = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        raise BackendError(f"{what} failed (exit {r.returncode}): {err[-1] if err else 'no output'}")


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
