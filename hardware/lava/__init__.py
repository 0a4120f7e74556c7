"""The Lava backend: NIR graph -> Lava processes, run in a Python 3.10 worker process.

The main process never imports lava: the Loihi plan (``spikebridge.hardware.loihi``: lowering,
fixed-point quantisation, threshold groups) turns the graph into plain arrays (numpy only),
``supervisor.run_job`` runs ``worker.py`` on the Lava interpreter in its own process group,
and the recorded activations come back time first, aligned to the delay-free semantics of
the event-driven simulator. The integer model of the same plan (bit-exact with fixed_pt)
is ``spikebridge.hardware.loihi.fixed_trace``.

    run_lava(graph, x, precision="float", allow_reset_to_zero=False, timeout_s=None,
             progress=None) -> Trace
    run_fixed_plan(meta, arrays, x_int) -> dict   # an already quantised plan on fixed_pt
    lava_status() -> dict          # for `spikebridge doctor`
"""
from __future__ import annotations

import time

import numpy as np

from spikebridge.base.errors import BackendError, UnsupportedError
from spikebridge.hardware.lava.supervisor import lava_status, run_job
from spikebridge.hardware.loihi import runner
from spikebridge.hardware.loihi.runner import prepare, to_trace
from spikebridge.hardware.trace import Trace

__all__ = ["run_lava", "run_fixed_plan", "lava_status", "BackendError", "UnsupportedError"]

# Sink buffers hold (neurons x steps) float64; keep one run's recordings below this many values.
MAX_RECORDED_VALUES = 40_000_000


def run_lava(graph, x, precision: str = "float", allow_reset_to_zero: bool = False,
             timeout_s: float | None = None, progress=None, timesteps: int | None = None,
             window: int | None = None, record_state: bool = False, threshold_groups=None) -> Trace:
    """Run ``graph`` on Lava (float: Loihi2SimCfg floating_pt; fixed: fixed_pt with the
    quantisation of ``spikebridge.hardware.loihi.fixedpoint``) for a batch of inputs.

    x: (T, batch, *input_shape), or (batch, *input_shape) repeated over T steps (direct
    encoding; T from ``timesteps`` or the graph's spikebridge.timesteps).
    Returns a Trace (backend "lava") whose outputs and spikes are time first and aligned
    to the delay-free semantics; ``meta["lava_delay_steps"]`` gives each node's raw Lava
    delay in steps (raw Lava step of sample k, step j: k*window + j + delay + 1).
    ``progress(done, total)`` is called as chunks of samples finish. ``record_state``
    (needs window >= T + depth) puts the final u and v of every population in
    ``meta["final_state"]``. ``threshold_groups`` (True or a max span, e.g. 4.0): split
    populations with widely spread per-neuron thresholds into LIF processes with their
    own vth (spikebridge.hardware.loihi.groups; same float function, better fixed-point resolution).
    Raises UnsupportedError (graph not expressible), BackendError (worker failure, timeout,
    missing .venv-lava).
    """
    pr = prepare(graph, x, precision, allow_reset_to_zero, timesteps, window, threshold_groups)
    meta = pr.meta
    T, B = pr.xt.shape[:2]
    if record_state:
        if meta["window"] < T + meta["max_depth"]:
            raise ValueError("record_state needs window >= timesteps + max depth")
        meta["record_state"] = True
    n_rec = sum(p["size"] for p in meta["populations"]) + sum(
        r["size"] for r in meta["readouts"] if r["kind"] == "analog") + meta["input"]["size"]
    meta["dense_max_elements"] = runner.DENSE_MAX_ELEMENTS  # one setting for Lava and the integer model
    meta["chunk_samples"] = int(max(1, min(B, MAX_RECORDED_VALUES // max(1, n_rec * meta["window"]))))
    t1 = time.perf_counter()
    out, info = run_job(meta, pr.arrays, pr.xs, timeout_s=timeout_s, progress=progress)
    wall = time.perf_counter() - t1
    extra = {"plan_s": pr.plan_s, "worker_wall_s": wall, "worker": info}
    if pr.qplan is not None:
        extra["fixed_point"] = {"input_frac": pr.qplan.input_frac, "layers": pr.qplan.layers}
    return to_trace(pr, out, precision, extra)


def run_fixed_plan(meta: dict, arrays: dict, x_int: np.ndarray, timeout_s: float | None = None,
                   record_state: bool = False) -> dict:
    """Run an already quantised plan (meta/arrays as ``spikebridge.hardware.loihi.fixedpoint.QPlan``) on Lava
    fixed_pt; x_int (T, batch, n_in) integers. Returns the worker's arrays (spikes__*,
    output__*, and u__*/v__* final states with record_state)."""
    meta = dict(meta)
    meta["precision"] = "fixed"
    meta["record_state"] = bool(record_state)
    meta.setdefault("dense_max_elements", runner.DENSE_MAX_ELEMENTS)
    meta.setdefault("chunk_samples", int(np.asarray(x_int).shape[1]))
    out, _ = run_job(meta, arrays, np.ascontiguousarray(x_int, dtype=np.float64), timeout_s=timeout_s)
    return out
