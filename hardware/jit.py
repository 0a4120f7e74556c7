"""Compiled event loops (numba), shared by eventsim and the Loihi integer model.

An event loop adds one weight row per nonzero input to one output row. numpy has no such
primitive; scipy's CSR x dense product is one, but it is compiled for the x86-64 baseline
(SSE2: four floats per instruction) and needs the events as a CSR matrix first. These
loops are compiled by numba for the CPU they run on (AVX2 or AVX-512 adds over the output
row), read the events straight from the input, and release the GIL (eventsim's chunk
threads run them in parallel).

Every loop here sums in the same order as the scipy product it replaces: each output
element adds its events' terms one at a time, events in input order (row, then column
ascending); vectorisation runs across the output row, never across events, and no
multiply-add is fused (numba does not contract without fastmath). Results are therefore
the same on every CPU, and bit-identical to the scipy path on x86-64 (tests/hardware/
test_jit.py), in float32, float64 and integers (integers wrap modulo 2^bits, so their
order never matters). On ARM, scipy's wheels fuse the product and the add of csr_matvecs
(fmla), so there the scipy path (SPIKEBRIDGE_NO_JIT=1) differs from these loops in the last
bits wherever an event value is not 1 (binary events: identical everywhere).

Compiled on first use in a process and cached on disk by numba (``cache=True``: beside
this file, or numba's user cache when that is not writable), so later processes load the
machine code instead of compiling it. ``SPIKEBRIDGE_NO_JIT=1`` (or numba missing) turns
them off: callers then take the scipy path, which gives the same numbers, slower.
"""
from __future__ import annotations

import os
import threading
from types import SimpleNamespace

_LOCK = threading.Lock()
_KERNELS: list = []  # [namespace or None], filled on first use


def kernels():
    """The compiled loops as a namespace, or None when numba is unavailable or turned off."""
    if not _KERNELS:
        with _LOCK:
            if not _KERNELS:
                _KERNELS.append(None if os.environ.get("SPIKEBRIDGE_NO_JIT") else _build())
    return _KERNELS[0]


def _build():
    try:
        from . import _jit_loops as loops
    except ImportError:  # pragma: no cover - numba is a dependency; kept for odd platforms
        return None
    return SimpleNamespace(csr_add=loops.csr_add,
                           conv_direct=loops.conv_direct, mask_add=loops.mask_add,
                           value_add=loops.value_add, loihi_scan=loops.loihi_scan,
                           neuron_scan=loops.neuron_scan, batch_counts=loops.batch_counts,
                           nchw_bias=loops.nchw_bias)
