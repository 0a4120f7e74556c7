"""Shared pytest hooks.

Tests marked ``@pytest.mark.lava`` need the Lava environment (found as the Lava backend
finds it: $SPIKEBRIDGE_LAVA_VENV, the checkout's .venv-lava, or the per-user environment
that `spikebridge setup-lava` builds). Without it they are skipped, unless
SPIKEBRIDGE_REQUIRE_LAVA=1, in which case they fail (CI and `make test` set it).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A non-interactive shell starts background jobs with SIGINT ignored, and an ignored signal
# stays ignored across exec: the CLI processes the interrupt tests start would then never
# see their SIGINT. A handler (unlike SIG_IGN) is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _lava_python() -> Path:
    from spikebridge.hardware.lava.interpreter import find_lava_venv
    return find_lava_venv()[0] / "bin" / "python"


def pytest_runtest_setup(item):
    if item.get_closest_marker("lava") is None:
        return
    py = _lava_python()
    if py.exists():
        return
    msg = f"Lava environment missing ({py}); run `make setup` or `spikebridge setup-lava`"
    if os.environ.get("SPIKEBRIDGE_REQUIRE_LAVA") == "1":
        pytest.fail(msg + " (SPIKEBRIDGE_REQUIRE_LAVA=1)", pytrace=False)
    pytest.skip(msg)
