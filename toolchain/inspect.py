"""`spikebridge inspect`: what a graph (or checkpoint) contains and which backend runs it."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt_shape(s) -> str:
    return "x".join(str(int(v)) for v in s) if len(s) else "scalar"


def _param_summary(node) -> str:
    parts = []
    for field in ("weight", "bias", "v_threshold", "tau", "tau_mem", "tau_syn", "r", "scale", "threshold",
                  "kernel_size", "stride", "padding", "delay"):
        v = getattr(node, field, None)
        if v is None:
            continue
        a = np.asarray(v)
        if a.size == 1 or field in ("kernel_size", "stride", "padding"):
            parts.append(f"{field}={np.array2string(a.reshape(-1), separator=',', precision=4)}")
        elif field == "weight":
            parts.append(f"weight {_fmt_shape(a.shape)} nnz={int(np.count_nonzero(a))}")
        else:
            parts.append(f"{field}[{_fmt_shape(a.shape)}] {a.min():.4g}..{a.max():.4g}")
    return ", ".join(parts)


# neuron-semantics fields a profile may define (the set grows with the library profiles)
_PROFILE_FIELDS = ("integrator", "decay", "reset", "default_reset", "reset_timing", "threshold_test",
                   "default_threshold_test", "if_input", "current_input", "multi_spike")


def _analysed(graph, path, profile):
    """(graph, info, note): the graph as read, or adapted the way a library profile reads
    it (third-party exporters write their trace sample's batch/time dims into the Input
    node; hardware.backends.prepare); info None with the problem as note when neither analyses."""
    from spikebridge.base.errors import InputError
    from spikebridge.hardware.backends import RunOptions, prepare
    from spikebridge.hardware.eventsim import PROFILES, get_profile

    if profile:
        get_profile(profile)  # an unknown profile is refused first
    try:
        prep = prepare(graph, "eventsim", RunOptions(profile=profile), file=str(path))
        note = "" if prep.graph is graph else (f"Input/Output shapes adapted as profile {profile} reads them (the "
                                               "leading batch/time dimensions the exporter wrote dropped)")
        return prep.graph, prep.info, note
    except InputError as e:
        first = e
    names = [profile] if profile else [n for n, p in PROFILES.items() if getattr(p, "strip_io_dims", False)]
    for name in names:
        try:
            prep = prepare(graph, "eventsim", RunOptions(profile=name), file=str(path))
            if prep.graph is graph:
                continue
            return prep.graph, prep.info, (
                "Input/Output shapes adapted as the library profiles read them (the leading "
                f"batch/time dimensions the exporter wrote into the Input dropped; profile {name})")
        except InputError:
            continue
    return graph, None, str(first)


def backend_support(graph, info, options=None, only: str | None = None) -> list[str]:
    """One line per registered backend (or ``only``): whether it runs the graph with these
    run options, else every reason it does not."""
    from spikebridge.base.errors import InputError
    from spikebridge.hardware.backends import BACKENDS, RunOptions, resolve_backend

    options = options or RunOptions()
    if only:
        be, opts = resolve_backend(only, options)
        items = [(be, opts)]
    else:
        items = [(be, options) for be in BACKENDS.values()]
    lines = []
    for be, opts in items:
        try:
            reasons = be.check_options(opts) or be.check(graph, info, opts)
        except InputError as e:
            reasons = [str(e)]
        head = f"{be.name}: "
        lines.append(head + ("runs this graph" + (f" (precision {be.precision})" if be.name != "eventsim" else "")
                             if not reasons else "cannot run it: " + "; ".join(reasons)))
    return lines


def inspect_graph(path, profile: str | None = None, options=None, backend: str | None = None) -> str:
    """What the graph holds and, per registered backend (or ``backend``), whether it runs it
    with ``options`` (hardware.backends.RunOptions; ``profile`` is its reading)."""
    from spikebridge.hardware.eventsim import fanout
    from spikebridge.hardware.graph import graph_meta, load_graph, neuron_semantics

    graph = load_graph(path)
    raw = graph  # as written: the profile's reading is described from the file itself
    graph, info, note = _analysed(graph, path, profile)
    meta = graph_meta(graph, file=str(path))
    lines = [f"graph {path}", f"metadata: {meta}"]
    if info is None:  # still show what the file holds, then why it cannot run
        lines += ["", f"{'node':<16}{'type':<11}parameters / neuron semantics"]
        for name, node in graph.nodes.items():
            lines.append(f"{name:<16}{type(node).__name__:<11}{_param_summary(node)}")
        lines += ["", f"nodes: {len(graph.nodes)}, edges: {len(graph.edges)}"]
        print("\n".join(lines), flush=True)  # what the file holds (stdout), then the rejection: exit 3
        from spikebridge.base.errors import GraphError
        raise GraphError(note)  # ``note`` already names the file, the place and the rule
    if note:
        lines.append(f"note: {note}")
    prof = None
    if profile:
        from spikebridge.hardware.eventsim import get_profile
        prof = get_profile(profile)
    from spikebridge.hardware.eventsim.detect import describe_reading
    lines += describe_reading(raw, prof or "spikebridge")  # options, detections, assumptions
    lines += ["", f"{'node':<16}{'type':<11}{'output':<12}{'synapses':>10}  parameters / neuron semantics"]
    total_syn = 0
    for name in info.order:
        node = graph.nodes[name]
        typ = info.types[name]
        syn = 0
        if hasattr(node, "weight") or typ in ("SumPool2d", "AvgPool2d"):
            try:
                syn = int(np.asarray(fanout(node, info.in_shapes[name])).sum())
            except Exception:
                syn = 0
        total_syn += syn
        desc = _param_summary(node)
        if typ in ("IF", "LIF", "CubaLIF"):
            if prof is not None and not prof.honour_metadata:
                sem = {k: getattr(prof, k) for k in _PROFILE_FIELDS if getattr(prof, k, None) is not None}
            else:
                sem = neuron_semantics(node, name=name, file=str(path))
            desc += "; " + ", ".join(f"{k}={v if np.ndim(v) == 0 else 'array'}" for k, v in sem.items())
            if "spikebridge" not in (getattr(node, "metadata", None) or {}):
                desc += " (no spikebridge metadata)"
        lines.append(f"{name:<16}{typ:<11}{_fmt_shape(info.shapes[name]):<12}{syn:>10}  {desc}")
    lines += ["", f"nodes: {len(info.order)}, edges: {len(graph.edges)}, synapses (nonzero weights): {total_syn}", ""]
    from dataclasses import replace

    from spikebridge.hardware.backends import RunOptions
    opts = replace(options or RunOptions(), profile=profile)
    lines += backend_support(graph, info, opts, backend)
    try:
        from spikebridge.exporters.nir_import import SUPPORTED
        bad = sorted({t for t in info.types.values() if t not in SUPPORTED})
        lines.append("torch:    " + ("spikebridge.exporters.nir_import rebuilds it (spikebridge profile)" if not bad else f"cannot rebuild {', '.join(bad)}"))
    except ImportError:
        pass
    return "\n".join(lines)


def inspect_checkpoint(path) -> str:
    from spikebridge.models.checkpoint import load_checkpoint

    from spikebridge.models.checkpoint import build_model

    meta, tensors = load_checkpoint(path)
    build_model(meta, tensors, file=str(path))  # names and shapes checked against the architecture
    lines = [f"checkpoint {path}",
             f"method {meta['method']}, arch {meta['arch']}, T={meta['timesteps']}, input {meta['input_shape']}, "
             f"classes {meta['num_classes']}, dataset {meta.get('dataset')}",
             f"neuron: {meta['neuron']}", f"metrics (last epoch): {meta.get('metrics')}", "", "tensors:"]
    for k, v in tensors.items():
        lines.append(f"  {k:<36}{_fmt_shape(v.shape):<14}{v.dtype}")
    return "\n".join(lines)


def inspect_lava(path, options=None) -> str:
    """`inspect --lava`: the Lava lowering and its fixed-point quantisation, per layer, with
    the run options a Loihi backend honours (--dt reaches the lowering, --allow-reset-to-zero;
    the threshold-group split is always shown); others are refused like on a run."""
    from dataclasses import replace

    from spikebridge.hardware.backends import OptionError, RunOptions, get_backend, loihi_graph
    from spikebridge.hardware.graph import load_graph
    from spikebridge.hardware.lava.describe import describe

    options = options or RunOptions()
    bad = get_backend("lava-float").check_options(replace(options, precision=None))
    if bad:
        raise OptionError(bad[0])
    graph = loihi_graph(load_graph(path), options)
    return f"graph {path}\n" + describe(graph, allow_reset_to_zero=options.allow_reset_to_zero)


def inspect_path(path, profile: str | None = None, options=None, backend: str | None = None) -> str:
    p = Path(path)
    if p.is_dir():
        return inspect_checkpoint(p)
    return inspect_graph(p, profile, options, backend)
