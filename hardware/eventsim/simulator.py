"""The event-driven CPU simulator: runs a NIR graph on numpy, returns a Trace.

Feed-forward graphs run layer by layer over all T steps at once (stateless nodes as
one batched op over T*B, stateful nodes loop over T), as a multi-step dense run
(SpikingJelly style) does. Graphs with cycles run step by step; a back edge delivers
its source's previous step. At step 0 that is the value the source has before any input
(``_before_start``): zero for neurons, the bias for a recurrent Affine/Conv (snnTorch
RLeaky/RSynaptic add recurrent(spk = 0) = bias at t = 0).

Speed at every scale:
- each synaptic layer (Affine/Linear/Conv), per step block (the B rows of one time
  step), takes the cheaper of its event path (events x fan-out through compiled sparse
  loops) and its dense path (one BLAS product over the block), by costs measured on this
  machine at run time (kernels.machine_costs, once per process; convolutions also time
  both paths once on their own busiest block and keep those costs for the process);
- a layer fed by the Input with the same frame at every step (direct encoding) is
  computed for one step and shared by all T;
- ``precision='float32'`` runs the synaptic products, neuron drive, membranes and spikes
  in float32 (tolerance FLOAT32_RTOL per summed term, tested); float64 stays the default
  and the reference. Only the ``spikebridge`` and ``nir`` profiles allow float32: the
  library profiles (snntorch, norse, sinabs, spikingjelly) reproduce those libraries'
  spikes exactly and ``lava-float`` reproduces Lava's floating_pt (float64) spikes, so
  they stay float64; ``loihi-fixed`` is integer arithmetic (its own model);
- the batch streams in chunks under a memory budget, on one thread per usable CPU
  when the batch is large (numpy, BLAS and scipy's sparse loops release the GIL);
  counts are exact whatever the path (they come from the activations).
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from spikebridge.base.errors import DatasetError, InputError, UnsupportedError
from ..graph import NEURON_TYPES, SPIKING_TYPES, SYNAPSE_TYPES, GraphInfo, analyse, graph_meta
from ..trace import Trace
from .adapt import adapt_graph
from .counts import count_ops
from .detect import check_decays
from .kernels import KERNELS, Context, as_dtype, as_f64, machine_costs
from .profiles import Profile, get_profile


def resolve_dt(graph, profile: Profile, dt: float | None, file: str | None = None) -> float:
    if dt is not None:
        dt = float(dt)
        if not (np.isfinite(dt) and dt > 0):
            raise DatasetError(f"dt {dt!r} must be finite and > 0", file, "dt")
        return dt
    if profile.dt_from_graph:
        md = graph.metadata.get("spikebridge") if isinstance(graph.metadata, dict) else None
        if isinstance(md, dict) and "dt" in md:
            return graph_meta(graph, file)["dt"]
    return float(profile.default_dt)


# Input dtypes kept as given (their float64 values are exact): synapse kernels read them
# directly (events need no conversion); every other consumer gets a float64 copy.
_RAW_DTYPES = (np.dtype(bool), np.dtype(np.float32), np.dtype(np.float64))
_RAW_CONSUMERS = frozenset({"Affine", "Linear", "Conv1d", "Conv2d", "Flatten"})


def _check_input(x, info: GraphInfo) -> np.ndarray:
    if len(info.inputs) != 1:
        raise UnsupportedError(f"simulate takes exactly one Input node, graph has "
                               f"{len(info.inputs)}: {info.inputs}", info.file, "graph")
    name = info.inputs[0]
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"input dtype {x.dtype} is not numeric or bool", info.file,
                           f"input {name!r}")
    want = info.shapes[name]
    if x.ndim != 2 + len(want) or tuple(x.shape[2:]) != tuple(want):
        raise DatasetError(f"input shape {x.shape} is not (T, batch, *{want})", info.file,
                           f"input {name!r}")
    if x.dtype not in _RAW_DTYPES:
        x = x.astype(np.float64)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DatasetError("input contains non-finite values", info.file, f"input {name!r}")
    return x


def lava_offsets(info: GraphInfo, k: int) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Raw-time offsets of the Lava lowering (hardware/loihi/plan.py) with ``k`` steps of delay
    per Lava connection, for a feed-forward graph.

    Every chain of synaptic nodes from a source (Input or neuron) to a target (neuron or
    Output) is one Lava connection: the target sits ``k`` steps behind its DEEPEST source,
    and connections from shallower sources (skip connections) are delayed to match
    (DelayDense). A direct source -> target edge is an identity connection. An Output fed
    by one neuron node alone records that node's spikes (no connection).

    Returns (off, edge_shift): off[n] = raw offset of node n's value (synaptic nodes: the
    source time of their inputs); edge_shift[(p, n)] = steps after which an event of p
    reaching synaptic node n is delivered to n's target (counts are taken at delivery).
    """
    types, preds = info.types, info.preds
    source = {n for n, t in types.items() if t == "Input" or t in NEURON_TYPES}
    off: dict[str, int] = {}
    for n in info.order:
        t = types[n]
        if t == "Input" or not preds[n]:
            off[n] = 0
            continue
        arrive = max(off[p] for p in preds[n])
        if t == "Output" and len(preds[n]) == 1 and preds[n][0] in source:
            off[n] = arrive
        elif t in NEURON_TYPES or t == "Output":
            off[n] = arrive + k
        else:
            off[n] = arrive
    succs: dict[str, list[str]] = {n: [] for n in info.order}
    for n in info.order:
        for p in preds[n]:
            succs[p].append(n)
    deliver: dict[str, int] = {}
    for n in reversed(info.order):
        if n in source or types[n] == "Output":
            continue
        ds = [off[s] if (s in source or types[s] == "Output") else deliver.get(s, off[n] + k)
              for s in succs[n]]
        deliver[n] = max(ds) if ds else off[n] + k
    edge_shift = {(p, n): deliver[n] - off[p] for n in deliver for p in preds[n]}
    return off, edge_shift


def _shifted(a: np.ndarray, k: int) -> np.ndarray:
    if not k:
        return a
    out = np.zeros_like(a)
    if k < a.shape[0]:
        out[k:] = a[:a.shape[0] - k]
    return out


PRECISIONS = ("float64", "float32")
# Profiles whose results may be computed in float32 (precision='float32'): our own exports
# and strict plain NIR promise the network's function, not bit patterns, and the models
# they come from compute in float32 themselves. The library profiles (snntorch, norse,
# sinabs, spikingjelly) reproduce those libraries' spikes exactly and lava-float Lava's
# floating_pt (float64) run: they stay float64, where the summation order cannot move a
# membrane across its threshold in the tested cases (tests/hardware/test_profiles.py); loihi-fixed
# is integer arithmetic.
FLOAT32_PROFILES = frozenset({"spikebridge", "nir"})
# Declared tolerance of precision='float32' against float64 (relative to the magnitude of
# the terms summed): float32 rounding of weights, inputs and every partial sum of a
# synaptic product, ~2^-24 per operation, growing with fan-in (tests use fan-in x 2^-22).
FLOAT32_RTOL = 2.0 ** -22


def check_precision(precision: str, prof: Profile, file: str | None = None) -> str:
    if precision not in PRECISIONS:
        raise UnsupportedError(f"precision {precision!r} is not one of {PRECISIONS}", file, "precision")
    if precision == "float32" and prof.name not in FLOAT32_PROFILES:
        raise UnsupportedError(f"profile {prof.name} stays float64 (it reproduces a reference's spikes "
                               f"exactly); precision float32 is for {sorted(FLOAT32_PROFILES)}",
                               file, "precision")
    return precision


def _constant_over_time(x: np.ndarray) -> bool:
    """True when every step of x (T, B, ...) equals step 0 (direct encoding)."""
    return x.shape[0] > 1 and all(np.array_equal(x[t], x[0]) for t in range(1, x.shape[0]))


def run(graph, x, profile: str | Profile = "spikebridge", dt: float | None = None,
        info: GraphInfo | None = None, precision: str = "float64", masks: dict | None = None
        ) -> tuple[dict[str, np.ndarray], GraphInfo, Profile, float]:
    """Every node's output (T, B, *shape), plus the info, profile and dt used. Outputs are
    float64 (precision 'float32': float32, Outputs float64), except that the Input (and a
    Flatten of it) keep a bool or float32 input as given (exact values; synapse kernels
    read events from it without a float64 copy). ``masks``: a dict to receive, for the
    neuron nodes whose scan emits it (and Flattens of them), ``output != 0`` as bool."""
    masks = {} if masks is None else masks
    unit: dict = {}  # node -> its spikes are exactly 1.0 (the mask is the activation)
    prof = get_profile(profile)
    if info is None:
        graph = adapt_graph(graph, prof)
        info = analyse(graph)
    check_precision(precision, prof, info.file)
    if info.back_edges:  # step by step in float64 (the float32 paths are for layer-by-layer runs)
        precision = "float64"
    work = np.dtype(np.float32 if precision == "float32" else np.float64)
    missing = [f"{n!r} ({t})" for n, t in info.types.items() if t not in KERNELS]
    if missing:
        raise UnsupportedError("eventsim has no kernel for node(s) " + ", ".join(missing),
                               info.file, "graph")
    x = _check_input(x, info)
    T, B = x.shape[0], x.shape[1]
    step_dt = resolve_dt(graph, prof, dt, info.file)
    check_decays(graph, info, prof, step_dt)
    ctx = Context(info=info, profile=prof, dt=step_dt, file=info.file, precision=precision)
    params = {n: KERNELS[info.types[n]].prepare(graph.nodes[n], n, ctx) for n in info.order}
    for n in info.order:  # synapse kernels choose their path per step block of B rows
        if isinstance(params[n], dict) and info.types[n] in SYNAPSE_TYPES:
            params[n]["_block"] = B
    acts: dict[str, np.ndarray] = {}
    if not info.back_edges and prof.synaptic_delay:
        # Lava timing: the delay-free run, each node shifted by its raw offset. This is what
        # the Lava lowering does: each population starts fresh (LIFReset) when its first
        # input arrives, skip connections are delayed to the deepest path, the bias is not.
        aligned, info, _, step_dt = run(graph, x, replace(prof, synaptic_delay=0), dt, info, precision)
        off, _ = lava_offsets(info, prof.synaptic_delay)
        return {n: _shifted(a, off[n]) for n, a in aligned.items()}, info, prof, step_dt
    if not info.back_edges:
        for n in info.order:
            k = KERNELS[info.types[n]]
            if info.types[n] == "Input":
                acts[n] = x
                continue
            ps = info.preds[n]
            inp = acts[ps[0]]  # kernels never write into their input
            if len(ps) > 1 or info.types[n] not in _RAW_CONSUMERS:
                inp = as_dtype(inp, work)
            for p in ps[1:]:
                inp = inp + as_dtype(acts[p], work)
            k_delay = prof.synaptic_delay if info.types[n] in SYNAPSE_TYPES else 0
            if k_delay:  # a_out at t is what arrived at t - k (the bias is not delayed)
                shifted = np.zeros_like(inp)
                if k_delay < T:
                    shifted[k_delay:] = inp[:T - k_delay]
                inp = shifted
            if k.stateful:
                st = k.init(params[n], B)
                if k.scan is not None:  # all T steps in one call (same arithmetic)
                    acts[n], st = k.scan(params[n], inp, st)
                    if st.get("_spike_mask") is not None and len(ps) >= 1:
                        masks[n] = st["_spike_mask"]
                        unit[n] = st.get("_spike_unit", False)
                    continue
                out = np.empty((T, B, *info.shapes[n]), dtype=np.float64)
                for t in range(T):
                    out[t], st = k.step(params[n], inp[t], st)
                acts[n] = out
            elif (info.types[n] in SYNAPSE_TYPES and not k_delay and len(ps) == 1
                  and info.types[ps[0]] == "Input" and _constant_over_time(inp)):
                # direct encoding: every step is the same input, one step computes them all
                y = as_dtype(np.asarray(k.forward(params[n], inp[0])), work)
                acts[n] = np.broadcast_to(y.reshape(1, B, *info.shapes[n]), (T, B, *info.shapes[n]))
            else:
                flat = inp.reshape(T * B, *inp.shape[2:])
                if len(ps) == 1 and ps[0] in masks and not k_delay:
                    if info.types[n] == "Flatten":
                        masks[n] = masks[ps[0]].reshape(T, B, *info.shapes[n])
                        unit[n] = unit.get(ps[0], False)
                    elif isinstance(params[n], dict):  # the events, known: no scan of the input
                        params[n]["_mask"] = masks[ps[0]]
                        params[n]["_binary"] = unit.get(ps[0], False)
                y = k.forward(params[n], flat)
                if info.types[n] != "Flatten":  # a Flatten of the input stays as given
                    y = as_dtype(np.asarray(y), work)
                acts[n] = y.reshape(T, B, *info.shapes[n])
        for o in info.outputs:
            acts[o] = as_f64(acts[o])
        return acts, info, prof, step_dt

    back = set(info.back_edges)
    x = as_f64(x)
    for n in info.order:
        acts[n] = np.zeros((T, B, *info.shapes[n]), dtype=np.float64)
    states = {n: KERNELS[info.types[n]].init(params[n], B)
              for n in info.order if KERNELS[info.types[n]].stateful}
    before = _before_start(info, params, B) if not prof.synaptic_delay else {}
    for t in range(T):
        for n in info.order:
            k = KERNELS[info.types[n]]
            if info.types[n] == "Input":
                acts[n][t] = x[t]
                continue
            inp = np.zeros((B, *info.in_shapes[n]), dtype=np.float64)
            k_delay = prof.synaptic_delay if info.types[n] in SYNAPSE_TYPES else 0
            for p in info.preds[n]:
                src = t - k_delay - (1 if (p, n) in back else 0)
                if src >= 0:
                    inp += acts[p][src]
                elif src == -1 and p in before:  # a back edge at step 0
                    inp += before[p]
            if k.stateful:
                acts[n][t], states[n] = k.step(params[n], inp, states[n])
            else:
                acts[n][t] = k.forward(params[n], inp)
    return acts, info, prof, step_dt


def _before_start(info: GraphInfo, params: dict, B: int) -> dict[str, np.ndarray]:
    """Each stateless node's output at step -1 (inputs and neurons give 0 there), where it
    is nonzero: an Affine's bias, passed on through Scale/Flatten/... A back edge from such
    a node delivers it at step 0."""
    vals: dict[str, np.ndarray] = {}
    back = set(info.back_edges)
    for n in info.order:
        k = KERNELS[info.types[n]]
        if info.types[n] == "Input" or k.stateful:
            continue
        inp = np.zeros((B, *info.in_shapes[n]), dtype=np.float64)
        for p in info.preds[n]:
            if (p, n) not in back and p in vals:
                inp = inp + vals[p]
        y = np.asarray(k.forward(params[n], inp), dtype=np.float64).reshape(B, *info.shapes[n])
        if np.any(y != 0):
            vals[n] = y
    return vals


MEMORY_BUDGET_BYTES = 512 << 20  # float64 activations of one chunk of the batch (auto max_batch)


def auto_max_batch(info: GraphInfo, T: int, budget: int | None = None) -> int:
    """Samples per slice so that every node's float64 (T, slice, *shape) activation fits
    in ``budget`` bytes together (default MEMORY_BUDGET_BYTES; at least 1)."""
    budget = MEMORY_BUDGET_BYTES if budget is None else budget
    per_sample = 8 * T * sum(int(np.prod(s)) for s in info.shapes.values())
    return max(1, int(budget // max(per_sample, 1)))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


MIN_THREAD_CHUNK = 8  # samples: smaller chunks are not worth a thread of their own


def simulate(graph, x, profile: str | Profile = "spikebridge", dt: float | None = None,
             record_spikes: bool = True, info: GraphInfo | None = None,
             max_batch: int | None = None, precision: str = "float64",
             workers: int | None = None) -> Trace:
    """Run ``graph`` on ``x`` (T, batch, *input_shape), time-major, bool or float.

    Samples never interact. A library profile first adapts the graph (eventsim.adapt);
    when ``info`` is given, ``graph`` must already be adapted. ``profile`` names an entry of PROFILES (or is a Profile);
    ``dt`` overrides the profile's choice. Returns a Trace with outputs per Output node,
    spikes (bool) per spiking neuron node when ``record_spikes``, and exact counts
    (spikebridge.hardware.eventsim.counts).

    Each synaptic layer runs, per step block, the cheaper of its event path and its dense
    path by costs measured on this machine (kernels.machine_costs); feed-forward graphs run
    layer by layer over all T steps. ``precision``: 'float64' (default; the reference
    arithmetic) or 'float32' (synaptic products and neuron outputs in float32, membranes
    float64; tolerance FLOAT32_RTOL; only for the profiles in FLOAT32_PROFILES: the library
    and Lava profiles stay float64 to reproduce their references' spikes exactly).

    Memory: every node's (T, batch, *shape) activation is kept, so the batch is streamed in
    chunks (``max_batch`` samples each; by default as many as keep one chunk's float64
    activations below MEMORY_BUDGET_BYTES, 512 MiB) and the results joined (identical to
    one run: samples never interact; counts are summed exactly). ``workers``: threads that
    run chunks in parallel (default: one per usable CPU, when the batch gives each at
    least MIN_THREAD_CHUNK samples; numpy, BLAS and scipy's sparse loops release the GIL);
    the budget is shared between them.
    """
    prof = get_profile(profile)
    if prof.name in ("loihi-fixed", "loihi-fixed-groups"):  # whole-graph integer model, bit-exact with Lava
        from ..loihi import simulate_fixed
        return simulate_fixed(graph, x, dt=dt, record_spikes=record_spikes,
                              threshold_groups=prof.name == "loihi-fixed-groups" or None)
    if info is None:
        graph = adapt_graph(graph, prof)
        info = analyse(graph)
    check_precision(precision, prof, info.file)
    x = np.asarray(x)
    if x.ndim >= 2:
        B = int(x.shape[1])
        if workers is None:
            workers = min(usable_cpus(), max(1, B // MIN_THREAD_CHUNK))
        workers = max(1, int(workers))
        if max_batch is None:
            max_batch = auto_max_batch(info, int(x.shape[0]), MEMORY_BUDGET_BYTES // workers)
            if workers > 1:
                max_batch = min(max_batch, -(-B // workers))
    if max_batch is not None and x.ndim >= 2 and x.shape[1] > max_batch >= 1:
        slices = [slice(i, i + max_batch) for i in range(0, x.shape[1], max_batch)]
        one = lambda sl: simulate(graph, x[:, sl], prof, dt, record_spikes, info,  # noqa: E731
                                  precision=precision, workers=1)
        if workers > 1 and len(slices) > 1:
            from concurrent.futures import ThreadPoolExecutor
            machine_costs()  # measured once, before the threads start
            with ThreadPoolExecutor(max_workers=min(workers, len(slices))) as pool:
                parts = list(pool.map(one, slices))
        else:
            parts = [one(sl) for sl in slices]
        first = parts[0]
        counts = {n: {k: sum(p.counts[n][k] for p in parts) for k in c}
                  for n, c in first.counts.items()}
        return Trace(timesteps=first.timesteps, batch=int(x.shape[1]),
                     outputs={o: np.concatenate([p.outputs[o] for p in parts], axis=1)
                              for o in first.outputs},
                     counts=counts,
                     spikes={n: np.concatenate([p.spikes[n] for p in parts], axis=1)
                             for n in first.spikes},
                     backend="eventsim", profile=prof.label, meta=first.meta)
    masks: dict = {}
    acts, info, prof, step_dt = run(graph, x, prof, dt, info, precision, masks=masks)
    T, B = next(iter(acts.values())).shape[:2]
    if prof.synaptic_delay and not info.back_edges:
        counts = count_ops(graph, info, acts, edge_shift=lava_offsets(info, prof.synaptic_delay)[1])
    else:
        counts = count_ops(graph, info, acts, delay=prof.synaptic_delay, masks=masks)
    spikes = {}
    if record_spikes:
        spikes = {n: masks[n] if n in masks else acts[n] != 0
                  for n in info.order if info.types[n] in SPIKING_TYPES}
    meta = {"dt": step_dt, "precision": precision if not info.back_edges else "float64"}
    try:
        meta["readout"] = graph_meta(graph, info.file)["readout"]
    except InputError:
        if prof.honour_metadata:
            raise
    return Trace(timesteps=int(T), batch=int(B),
                 outputs={o: acts[o] for o in info.outputs}, counts=counts, spikes=spikes,
                 backend="eventsim", profile=prof.label, meta=meta)
