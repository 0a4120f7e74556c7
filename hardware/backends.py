"""One backend contract and one run function for every command that runs a graph.

A backend is a registered object with a name, the run options it honours, a ``check``
that lists why it cannot run a graph, and a ``run`` that returns a Trace. ``run_graph`` is
the one way to run a graph: simulate, report (and its --sweep-timesteps re-runs), demo,
sharded runs and the benchmarks all call it with the same ``RunOptions``.

    from spikebridge.hardware.backends import RunOptions, run_graph
    trace = run_graph(graph, x_tb, "eventsim", RunOptions(profile="norse"))
    prep = prepare(graph, "lava", RunOptions(precision="fixed"))   # read once, run many
    prep.input_shape; run_graph(prep, x_tb)

Registered backends (``BACKENDS``; ``register_backend`` adds one, and the conformance
suite in tests/conformance/ runs every registered backend on every case):

    eventsim     numpy, event-driven, float64; every float profile (spikebridge, nir,
                 snntorch, norse, sinabs, spikingjelly, lava-float)
    loihi-fixed  the numpy integer model of the Loihi plan, bit-exact with lava-fixed
    lava-float   Lava floating_pt, in the Python 3.10 worker (out of process)
    lava-fixed   Lava fixed_pt (Loihi fixed point), in the worker
    The three Loihi backends take the library profiles too (``loihi_graph``: the same
    adaptation and neuron reading, lowered by hardware.loihi.plan; docs/lava.md).

CLI spellings kept (``resolve_backend``): ``--backend lava`` is lava-float, with
``--precision fixed`` lava-fixed; ``--backend eventsim --profile loihi-fixed`` is
loihi-fixed, ``--profile loihi-fixed-groups`` (or ``--threshold-groups``) its threshold
groups.

The profile adaptation (``hardware.eventsim.adapt_graph``: the batch/time dimensions
library exporters write into Input/Output types) is applied in ``prepare`` only.

An option a backend does not honour is refused, never ignored: ``OptionError`` (an
InputError: one line, exit code 3) naming the flag, the backend and what to use instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np

from spikebridge.base.errors import InputError, UnsupportedError
from spikebridge.hardware.shard import DEFAULT_BATCH_SIZE, DEFAULT_RETRIES
from spikebridge.hardware.trace import Trace, merge_traces

Progress = Callable[[int, int], None]  # progress(done_samples, total_samples)


class OptionError(InputError):
    """A run option the chosen backend does not honour (or a bad option value): exit code 3."""


@dataclass(frozen=True)
class RunOptions:
    """How to run a graph. ``None`` / False means "not given": the backend's default.

    profile:             how to read the graph (hardware.eventsim.profiles; an opaque string
                         passed to adapt_graph/simulate, e.g. "norse" or "snntorch:reset=zero")
    dt:                  time step, overrides the profile's and the graph's
    precision:           "float" | "fixed" (what the backend computes in; lava: which lava)
    allow_reset_to_zero: run soft-reset neurons with reset to zero (Loihi plan; approximation)
    threshold_groups:    split populations with spread per-neuron thresholds (Loihi plan)
    batch_size:          samples per backend call (batched backends; default 256)
    workers:             shard the batches across this many local processes
    cluster:             shard on the Dask cluster at this address
    retries:             restarts of a dead shard (local) or failed task (Dask); default 2
    limit:               run only the first N samples
    max_memory:          refuse a run whose estimated memory exceeds this (bytes or "8GiB")
    timeout_s:           lava: worker timeout (Python only)
    """

    profile: str | None = None
    dt: float | None = None
    precision: str | None = None
    allow_reset_to_zero: bool = False
    threshold_groups: bool = False
    batch_size: int | None = None
    workers: int | None = None
    cluster: str | None = None
    retries: int | None = None
    limit: int | None = None
    max_memory: int | str | None = None
    timeout_s: float | None = None

    def given(self) -> list[str]:
        """Names of the options set (not None / False)."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]


# option -> the CLI flag that sets it (for one-line refusals)
FLAGS = {"profile": "--profile", "dt": "--dt", "precision": "--precision",
         "allow_reset_to_zero": "--allow-reset-to-zero", "threshold_groups": "--threshold-groups",
         "batch_size": "--batch-size", "workers": "--workers", "cluster": "--cluster", "retries": "--retries",
         "limit": "--limit", "max_memory": "--max-memory", "timeout_s": "timeout_s"}
# honoured by run_graph itself, whatever the backend
GENERIC = frozenset({"limit", "max_memory"})
# honoured by every batched backend (run_graph batches and shards them)
BATCHING = frozenset({"batch_size", "workers", "cluster", "retries"})


def loihi_graph(graph, options: RunOptions):
    """The graph the Loihi plan lowers: read with ``--profile`` (a library profile: the same
    adaptation and neuron reading eventsim uses) and ``--dt`` (hardware.loihi.plan.read_as,
    which writes it where the lowering reads it)."""
    from spikebridge.hardware.loihi.plan import read_as
    if options.dt is not None and not (np.isfinite(float(options.dt)) and float(options.dt) > 0):
        raise OptionError(f"--dt {float(options.dt)!r} must be finite and > 0", place="--dt")
    return read_as(graph, options.profile, options.dt)


class Backend:
    """The contract. Subclasses set the class attributes and implement ``run_batch`` (batched
    backends: samples are independent, run_graph batches and shards them) or ``run``.

    name:        registry key (also what --backend accepts)
    honours:     RunOptions fields it reads besides GENERIC (and BATCHING when batched)
    batched:     samples run independently in batches (batch_size/workers/cluster apply)
    precision:   what it computes in ("float" or "fixed"); --precision must agree
    tolerance:   how its outputs compare with the reference (tests/conformance declares it as data)
    """

    name: str = ""
    description: str = ""
    honours: frozenset = frozenset()
    batched: bool = False
    precision: str = "float"
    tolerance: str = ""
    check_before_run: bool = True  # False when run() itself raises check()'s UnsupportedError first

    def honoured(self) -> frozenset:
        return GENERIC | self.honours | (BATCHING if self.batched else frozenset())

    def check_options(self, options: RunOptions) -> list[str]:
        """Why these options cannot be used with this backend (one reason per option)."""
        out = []
        for f in options.given():
            if f not in self.honoured():
                out.append(f"{FLAGS[f]} does nothing on the {self.name} backend ({self._instead(f)})")
        if options.precision not in (None, self.precision):
            out.append(f"--precision {options.precision}: the {self.name} backend computes in {self.precision} "
                       f"({self._instead('precision')})")
        return out

    def _instead(self, option: str) -> str:
        if option in BATCHING:
            return ("it runs the whole batch in its own worker: use --backend eventsim or loihi-fixed to batch "
                    "or shard")
        return {"precision": "fixed point: --backend loihi-fixed (the bit-exact integer model) or --backend lava "
                             "--precision fixed; float: --backend eventsim or --backend lava",
                "threshold_groups": "threshold groups split Loihi populations: --backend lava or loihi-fixed",
                "allow_reset_to_zero": "only the Loihi backends (lava, loihi-fixed) need it; this one runs the "
                                       "reset the graph asks for",
                "timeout_s": "it runs in this process"}.get(option, "not supported")

    def profile_for_adapt(self, options: RunOptions) -> str:
        """The profile whose graph adaptation (adapt_graph) this backend reads the graph with."""
        return options.profile or "spikebridge"

    def check(self, graph, info, options: RunOptions) -> list[str]:
        """Reasons this backend cannot run the (prepared) graph with these options; [] if it can."""
        return []

    def run_batch(self, graph, info, x_tb: np.ndarray, options: RunOptions, record_spikes: bool) -> Trace:
        raise NotImplementedError

    def run(self, graph, info, x_tb: np.ndarray, options: RunOptions, progress: Progress | None = None) -> Trace:
        """Run (T, batch, *shape) inputs; batched backends run batch_size samples per call
        (spikes recorded for the first batch only) and join the batches (merge_traces)."""
        total = int(x_tb.shape[1])
        bs = options.batch_size or DEFAULT_BATCH_SIZE
        parts = []
        for i in range(0, total, bs):
            xb = np.ascontiguousarray(x_tb[:, i:i + bs])
            parts.append(self.run_batch(graph, info, xb, options, record_spikes=(i == 0)))
            if progress:
                progress(min(i + bs, total), total)
        return merge_traces(parts)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry; returns it. The conformance suite picks it up."""
    if not backend.name:
        raise ValueError("a backend needs a name")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise OptionError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))} "
                          "(and lava: lava-float, or lava-fixed with --precision fixed)", place="--backend") from None


FIXED_PROFILES = ("loihi-fixed", "loihi-fixed-groups")


def resolve_backend(name: str | Backend, options: RunOptions | None = None) -> tuple[Backend, RunOptions]:
    """The backend and options the CLI spellings mean (module docstring)."""
    options = options or RunOptions()
    if isinstance(name, Backend):
        return name, options
    if name == "lava":
        name = "lava-fixed" if options.precision == "fixed" else "lava-float"
    elif name == "eventsim" and options.profile in FIXED_PROFILES:
        name = "loihi-fixed"
    if name == "loihi-fixed" and options.profile in FIXED_PROFILES:
        options = replace(options, profile=None,
                          threshold_groups=options.threshold_groups or options.profile == "loihi-fixed-groups")
    return get_backend(name), options


@dataclass
class Prepared:
    """A graph read for one backend: adapted (the profile's Input/Output shapes) and analysed."""
    backend: Backend
    options: RunOptions
    graph: object
    info: object

    @property
    def input_shape(self) -> tuple[int, ...]:
        if len(self.info.inputs) != 1:
            raise InputError(f"graph has {len(self.info.inputs)} Input nodes; spikebridge runs graphs with "
                             "exactly one", file=self.info.file)
        return tuple(int(s) for s in self.info.shapes[self.info.inputs[0]])


def check_run_options(options: RunOptions) -> None:
    """Values every backend needs in range (OptionError)."""
    for f, low in (("batch_size", 1), ("workers", 1), ("retries", 0), ("limit", 1)):
        v = getattr(options, f)
        if v is not None and int(v) < low:
            raise OptionError(f"{FLAGS[f]} must be at least {low}", place=FLAGS[f])
    if options.precision not in (None, "float", "float32", "fixed"):
        raise OptionError(f"--precision {options.precision!r} is not float, float32 or fixed", place="--precision")


def prepare(graph, backend: str | Backend = "eventsim", options: RunOptions | None = None,
            file: str | None = None) -> Prepared:
    """Refuse options the backend does not honour, apply the profile's graph adaptation (the
    one place it happens) and analyse the graph. ``graph``: a nir.NIRGraph or a .nir path."""
    from spikebridge.hardware.eventsim import adapt_graph
    from spikebridge.hardware.graph import analyse, load_graph

    be, options = resolve_backend(backend, options)
    check_run_options(options)
    bad = be.check_options(options)
    if bad:
        raise OptionError(bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if isinstance(graph, (str, bytes)) or hasattr(graph, "__fspath__"):
        file = file or str(graph)
        graph = load_graph(graph)
    graph = adapt_graph(graph, be.profile_for_adapt(options))
    info = analyse(graph, file=file)
    return Prepared(backend=be, options=options, graph=graph, info=info)


def _check_memory(prep: Prepared, x_tb) -> None:
    from spikebridge.hardware.memory import check_memory, estimate_eventsim, parse_size

    T, B = int(x_tb.shape[0]), int(x_tb.shape[1])
    o = prep.options
    chunk = (o.batch_size or DEFAULT_BATCH_SIZE) if prep.backend.batched else B
    limit = None if o.max_memory is None else (o.max_memory if isinstance(o.max_memory, int)
                                               else parse_size(o.max_memory))
    check_memory(estimate_eventsim(prep.graph, prep.info, T, B, chunk=chunk), limit, file=prep.info.file)


def run_graph(graph, x_tb: np.ndarray, backend: str | Backend = "eventsim", options: RunOptions | None = None,
              progress: Progress | None = None) -> Trace:
    """Run ``x_tb`` (T, batch, *input_shape) through ``graph`` on ``backend``; returns the Trace.

    ``graph``: a Prepared (from ``prepare``; then ``backend``/``options`` must be left out),
    a nir.NIRGraph or a .nir path. Options the backend does not honour are refused
    (OptionError); graphs it cannot run raise UnsupportedError with its reasons; an estimated
    memory above --max-memory raises ResourceError before anything runs. ``workers`` > 1 or
    ``cluster`` shard the batches (hardware.shard; identical results). ``trace.meta`` gets
    wall_seconds, samples_per_second and input_layer (the costing rule applied to the input
    layer, decided on the whole input: binary -> synaptic ops, counts (non-negative integers, some
    2 or more) -> synaptic ops weighted by the values, analog -> MACs; eventsim.counts).
    """
    if isinstance(graph, Prepared):
        if options is not None or backend not in ("eventsim", graph.backend, graph.backend.name):
            raise ValueError("run_graph(prepared, x): backend and options come from prepare()")
        prep = graph
    else:
        prep = prepare(graph, backend, options)
    o = prep.options
    x_tb = np.asarray(x_tb) if not isinstance(x_tb, np.ndarray) else x_tb
    if x_tb.ndim < 2:
        raise InputError(f"input shape {x_tb.shape} is not (T, batch, *shape)", place="input")
    if o.limit is not None:
        x_tb = x_tb[:, :int(o.limit)]
    reasons = prep.backend.check(prep.graph, prep.info, o) if prep.backend.check_before_run else []
    if reasons:
        raise UnsupportedError(f"the {prep.backend.name} backend cannot run this graph: " + "; ".join(reasons),
                               file=prep.info.file)
    _check_memory(prep, x_tb)
    t0 = time.perf_counter()
    if (o.workers or 1) > 1 or o.cluster:
        from spikebridge.hardware.shard import run_sharded
        trace = run_sharded(prep, x_tb, progress=progress)
    else:
        trace = prep.backend.run(prep.graph, prep.info, x_tb, o, progress)
    wall = time.perf_counter() - t0
    from spikebridge.hardware.eventsim.counts import apply_input_rule, input_kind  # the input-layer costing rule
    trace.meta["input_layer"] = apply_input_rule(prep.info, trace.counts, input_kind(x_tb), x_tb, prep.graph)
    trace.meta["wall_seconds"] = wall
    trace.meta["samples_per_second"] = x_tb.shape[1] / max(wall, 1e-9)
    trace.meta["registered_backend"] = prep.backend.name
    return trace


# ---------------------------------------------------------------------------- backends


class EventsimBackend(Backend):
    name = "eventsim"
    description = "event-driven numpy simulator, float64, exact op counts; every float profile"
    honours = frozenset({"profile", "dt", "precision"})
    batched = True
    precision = "float"
    tolerance = "spikes identical to the reference; analog outputs to float64 rounding"

    def check_options(self, options):
        # float32: the faster products of the spikebridge/nir profiles, with the declared
        # tolerance of hardware.eventsim.simulator (library profiles stay float64-exact)
        out = super().check_options(replace(options, precision=None) if options.precision == "float32" else options)
        if options.profile is not None:
            from spikebridge.hardware.eventsim import get_profile
            prof = get_profile(options.profile)  # UnsupportedError for an unknown profile
            if prof.name in FIXED_PROFILES:
                out.append(f"--profile {options.profile} is the loihi-fixed backend")
        return out

    def check(self, graph, info, options):
        from spikebridge.hardware.eventsim import KERNELS
        missing = sorted({t for t in info.types.values() if t not in KERNELS})
        return [f"no kernel for node type(s) {', '.join(missing)}"] if missing else []

    def run_batch(self, graph, info, x_tb, options, record_spikes):
        from spikebridge.hardware.eventsim import simulate
        return simulate(graph, x_tb, profile=options.profile or "spikebridge", dt=options.dt,
                        record_spikes=record_spikes, info=info,
                        precision="float32" if options.precision == "float32" else "float64")


class _LoihiPlan(Backend):
    """Shared by the backends that run the Loihi plan (hardware.loihi.plan.lower)."""

    honours = frozenset({"profile", "dt", "precision", "allow_reset_to_zero", "threshold_groups"})
    check_before_run = False  # run() lowers the graph first: the same UnsupportedError, one lowering

    def check_options(self, options):
        out = super().check_options(options)
        if options.profile not in (None, "spikebridge"):
            from spikebridge.hardware.eventsim import get_profile
            prof = get_profile(options.profile)  # UnsupportedError for an unknown profile or option
            if prof.name in ("lava-float",) + FIXED_PROFILES:
                out.append(f"--profile {options.profile} is eventsim's model of a Loihi backend, not a reading "
                           f"of the graph; the {self.name} backend lowers the graph itself")
        return out

    def check(self, graph, info, options):
        from spikebridge.hardware.loihi import lower
        try:
            lower(loihi_graph(graph, options), 1, allow_reset_to_zero=options.allow_reset_to_zero)
        except UnsupportedError as e:
            return [e.rule]
        return []


class LoihiFixedBackend(_LoihiPlan):
    name = "loihi-fixed"
    description = ("numpy integer model of the Loihi fixed-point plan, bit-exact with lava-fixed "
                   "(was eventsim --profile loihi-fixed)")
    batched = True
    precision = "fixed"
    tolerance = "bit-exact with lava-fixed (spikes, analog outputs)"

    def run_batch(self, graph, info, x_tb, options, record_spikes):
        from spikebridge.hardware.loihi import fixed_trace
        return fixed_trace(loihi_graph(graph, options), x_tb, allow_reset_to_zero=options.allow_reset_to_zero,
                           record_spikes=record_spikes, threshold_groups=True if options.threshold_groups else None)


class LavaBackend(_LoihiPlan):
    batched = False
    honours = _LoihiPlan.honours | {"timeout_s"}

    def __init__(self, precision: str):
        self.precision = precision
        self.name = f"lava-{precision}"
        self.description = (f"Lava {'floating_pt' if precision == 'float' else 'fixed_pt'} in the Python 3.10 "
                            "worker (out of process)")
        self.tolerance = ("float32 rounding vs eventsim's lava-float reading (summation order)" if precision == "float"
                          else "bit-exact with loihi-fixed")

    def run(self, graph, info, x_tb, options, progress=None):
        from spikebridge.hardware.lava import run_lava
        return run_lava(loihi_graph(graph, options), np.ascontiguousarray(x_tb), precision=self.precision,
                        allow_reset_to_zero=options.allow_reset_to_zero, timeout_s=options.timeout_s,
                        threshold_groups=True if options.threshold_groups else None, progress=progress)


register_backend(EventsimBackend())
register_backend(LoihiFixedBackend())
register_backend(LavaBackend("float"))
register_backend(LavaBackend("fixed"))

__all__ = ["Backend", "BACKENDS", "RunOptions", "Prepared", "OptionError", "register_backend", "get_backend",
           "resolve_backend", "prepare", "run_graph"]
