"""`spikebridge doctor`: which interpreters and packages are in use, whether Lava runs,
and how to fix what does not."""
from __future__ import annotations

import sys


def doctor() -> tuple[str, bool]:
    from spikebridge.toolchain.pipeline import versions

    lines = [f"{'python':<14}{sys.executable} ({sys.version.split()[0]})"]
    ok = True
    for pkg, ver in versions().items():
        if pkg in ("python", "spikebridge"):
            continue
        lines.append(f"{pkg:<14}{ver or 'MISSING (run: make setup)'}")
        ok &= ver is not None
    try:
        import torch
        lines.append(f"{'cuda':<14}{'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available (training runs on the CPU)'}")
    except ImportError:
        pass
    from spikebridge.hardware.lava import lava_status
    st = lava_status()
    lines.append(f"{'lava python':<14}{st.get('interpreter') or 'not found'}"
                 + (f" (found via {st['how_found']})" if st.get("how_found") else ""))
    lines.append(f"{'lava venv':<14}{st.get('venv')}")
    if st.get("works"):
        lines.append(f"{'lava':<14}works (lava-nc {st.get('lava_version')})")
    else:
        ok = False
        lines.append(f"{'lava':<14}NOT WORKING: {st.get('detail')}")
        if st.get("fix"):
            lines.append(f"{'fix':<14}{st['fix']}")
    lines.append("status        " + ("ok" if ok else "problems found (see above)"))
    return "\n".join(lines), ok
