"""Benchmarks (``spikebridge bench NAME``); each prints one JSON object.

They write only where they are told (``--out``/``--png``) or to the current directory,
never beside their own source (which is site-packages in a pip install).
"""
from __future__ import annotations

import os
from pathlib import Path


def child_env(env: dict | None = None) -> dict:
    """Environment for a child ``python -m spikebridge...`` that must import this same
    spikebridge: the folder that holds the ``spikebridge`` package goes first on PYTHONPATH
    (a checkout, a wheel or an editable install alike; never the package folder itself,
    which would expose its subpackages as top-level ``models``, ``hardware``, ...)."""
    import spikebridge

    env = dict(os.environ if env is None else env)
    home = str(Path(spikebridge.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [home, env.get("PYTHONPATH")]))
    return env


def cpu_model() -> str:
    """The CPU's model name (lscpu), recorded with every benchmark result."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"
