"""The error contract, checked on a real ``spikebridge`` subprocess.

``run_cli(argv, ...)`` runs ``python -m spikebridge --no-progress ARGV`` under a memory limit
(RLIMIT_DATA: private anonymous memory, which every numpy/torch allocation uses; RLIMIT_AS is
no use once torch's libraries are mapped) and a timeout, and ``refused(result, code)`` checks
what a refusal must look like: the exit code, exactly one line on stderr starting with
``error: ``, no traceback, no terminal control characters.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MEM_LIMIT = 1024 * MiB  # far below what every defect asked for (2 GiB .. 74.5 GiB)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(*argv, cwd=None, mem: int | None = MEM_LIMIT, timeout: float = 300, env_extra: dict | None = None,
            fsize: int | None = None, stdin=subprocess.DEVNULL, module: str = "spikebridge") -> Result:
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", **(env_extra or {}))

    def limits():
        if mem:
            resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    cmd = [sys.executable, "-m", module, "--no-progress", *map(str, argv)] if module == "spikebridge" \
        else [sys.executable, *map(str, argv)]
    p = subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, timeout=timeout, preexec_fn=limits,
                       stdin=stdin)
    return Result(p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))


def refused(r: Result, code: int = 3, *fragments: str) -> str:
    """Assert the refusal contract; returns the error line."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"exit {r.code}, stderr:\n{r.stderr[-3000:]}"
    assert r.code == code, f"exit {r.code} (want {code}): {lines[0]}"
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def only(folder: Path, *names: str) -> None:
    """``folder`` holds exactly ``names`` (nothing partial, no temporary files, no lock)."""
    have = sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []
    assert have == sorted(names), f"{folder}: {have}"
