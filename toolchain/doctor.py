"""`spikebridge doctor`: which interpreters and packages are in use, whether Lava runs,
and how to fix what does not.

Exit status (from the CLI): 0 when every package imports and Lava runs, 4 otherwise.
"""
from __future__ import annotations

import sys
from pathlib import Path

W = 14  # label column


def _line(label: str, text: str) -> str:
    return f"{label:<{W}}{text}"


def doctor() -> tuple[str, bool]:
    """(the report, whether everything works). Lava is checked by running its interpreter."""
    import spikebridge
    from spikebridge.hardware.lava import lava_status
    from spikebridge.toolchain.pipeline import versions

    lines = [_line("spikebridge", f"{spikebridge.__version__} ({Path(spikebridge.__file__).parent})"),
             _line("python", f"{sys.executable} ({sys.version.split()[0]})")]
    ok = True
    for pkg, ver in versions().items():
        if pkg in ("python", "spikebridge"):
            continue
        lines.append(_line(pkg, ver or "MISSING (reinstall spikebridge with pip, or `make setup` in a checkout)"))
        ok &= ver is not None
    try:
        import torch
        lines.append(_line("cuda", "available: " + torch.cuda.get_device_name(0) if torch.cuda.is_available()
                           else "not available (training runs on the CPU)"))
    except ImportError:
        pass

    st = lava_status()
    how = st["venv_found_by"]
    if how.startswith("none found"):
        lines.append(_line("lava venv", how))
    else:
        lines.append(_line("lava venv", f"{st['venv']} (found via {how})"))
    if st["lava_importable"]:
        lines.append(_line("lava python", f"{st['python']} ({st['python_version']})"))
        lines.append(_line("lava", f"works (lava-nc {st['lava_version']})"))
    else:
        ok = False
        base = st["base_python"]
        lines.append(_line("python 3.10", f"{base} (found via {st['base_python_found_by']}; setup-lava builds "
                           "the environment with it)" if base else "not found (setup-lava needs one)"))
        lines.append(_line("lava", f"NOT WORKING: {st['error']}"))
        lines.append(_line("fix", st["fix"]))
    lines.append(_line("status", "ok" if ok else "problems found (see above)"))
    return "\n".join(lines), ok
