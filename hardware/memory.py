"""Memory estimate for a simulation, checked before anything is allocated.

The event-driven simulator keeps every node's output for all T steps of a batch chunk as
float64 (``hardware/eventsim/simulator.py``), and a node's input sum, delay shift and
kernel temporaries can coexist with it. It streams a batch in chunks: as many samples as
keep one chunk's activations below its budget (simulator.auto_max_batch, 512 MiB), so a
large batch is run piece by piece instead of refused. The estimate (bytes):

    activations = 3 x sum over nodes of T x chunk x prod(shape) x 8
                  (chunk = min(batch, 256, the simulator's chunk for this graph and T))
    parameters  = sum of every array parameter's nbytes, x 2 (kernels prepare float64 copies)
    inputs      = T x chunk x prod(input shape) x 8                       (one contiguous chunk)
    results     = T x batch x prod(output shapes) x 8 + per-node counts
                  + the spikes of the first 256 samples (bool; the CLI keeps them for rasters)

``check_memory`` raises ResourceError (an InputError: exit 3) naming the estimate and the
limit. The default limit is 4 GiB or half the physical memory, whichever is smaller;
``--max-memory`` changes it.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from spikebridge.base.errors import InputError, ResourceError
from spikebridge.hardware.shard import DEFAULT_BATCH_SIZE as CHUNK  # samples per backend call

GiB = 1 << 30
_TEMP_FACTOR = 3


@dataclass(frozen=True)
class MemoryEstimate:
    activations: int
    parameters: int
    inputs: int
    results: int

    @property
    def total(self) -> int:
        return self.activations + self.parameters + self.inputs + self.results

    def describe(self) -> str:
        return (f"{fmt_bytes(self.total)} (activations {fmt_bytes(self.activations)}, parameters "
                f"{fmt_bytes(self.parameters)}, inputs {fmt_bytes(self.inputs)}, results {fmt_bytes(self.results)})")


def fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def default_limit() -> int:
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 8 * GiB
    return int(min(4 * GiB, phys // 2))


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10 ** 6, "mb": 10 ** 6, "mib": 1 << 20,
          "g": 10 ** 9, "gb": 10 ** 9, "gib": GiB, "t": 10 ** 12, "tb": 10 ** 12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """'4GiB', '512M', '1.5 GB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"--max-memory {text!r} is not a size such as 4GiB, 512MiB or 2000000000",
                         place="--max-memory")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 1:
        raise InputError("--max-memory must be positive", place="--max-memory")
    return n


def _prod(shape) -> int:
    return math.prod(int(s) for s in shape)


def estimate_eventsim(graph, info, timesteps: int, batch: int, chunk: int = CHUNK) -> MemoryEstimate:
    """Bytes the simulator needs for ``batch`` samples of ``timesteps`` steps (see module
    docstring): the batch streamed in chunks, so the activations do not grow with it.
    Pure arithmetic on declared shapes: nothing is allocated."""
    from spikebridge.hardware.eventsim.simulator import auto_max_batch

    T, B = int(timesteps), int(batch)
    c = max(1, min(B, int(chunk), auto_max_batch(info, T)))
    acts = sum(_prod(info.shapes[n]) for n in info.order if n in info.shapes)
    params = 0
    for node in graph.nodes.values():
        for v in vars(node).values():
            if isinstance(v, np.ndarray):
                params += int(v.size) * 8
    n_in = sum(_prod(info.shapes[n]) for n in info.inputs)
    n_out = sum(_prod(info.shapes.get(n, ())) for n in info.outputs)
    spikes = sum(_prod(info.shapes[n]) for n in info.order if n in info.shapes and info.types.get(n) in
                 ("IF", "LIF", "CubaLIF", "Threshold"))
    return MemoryEstimate(activations=_TEMP_FACTOR * T * c * acts * 8, parameters=2 * params,
                          inputs=T * c * n_in * 8,
                          results=T * B * n_out * 8 + T * len(info.order) * 4 * 8
                          + T * min(B, CHUNK) * spikes)


def check_memory(estimate: MemoryEstimate, limit: int | None, file: str | None = None,
                 what: str = "this simulation") -> None:
    limit = default_limit() if limit is None else int(limit)
    if estimate.total > limit:
        raise ResourceError(f"{what} needs an estimated {estimate.describe()}, above the limit "
                            f"{fmt_bytes(limit)}; lower --limit or --timesteps, or raise --max-memory",
                            file, "memory")


__all__ = ["MemoryEstimate", "estimate_eventsim", "check_memory", "default_limit", "parse_size", "fmt_bytes"]
