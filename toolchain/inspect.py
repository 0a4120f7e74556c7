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


def inspect_graph(path) -> str:
    from hardware.eventsim import KERNELS, fanout
    from hardware.graph import analyse, graph_meta, load_graph, neuron_semantics

    graph = load_graph(path)
    info = analyse(graph, file=str(path))
    meta = graph_meta(graph, file=str(path))
    lines = [f"graph {path}", f"metadata: {meta}", "",
             f"{'node':<16}{'type':<11}{'output':<12}{'synapses':>10}  parameters / neuron semantics"]
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
            sem = neuron_semantics(node, name=name, file=str(path))
            desc += "; " + ", ".join(f"{k}={v if np.ndim(v) == 0 else 'array'}" for k, v in sem.items())
        lines.append(f"{name:<16}{typ:<11}{_fmt_shape(info.shapes[name]):<12}{syn:>10}  {desc}")
    lines += ["", f"nodes: {len(info.order)}, edges: {len(graph.edges)}, synapses (nonzero weights): {total_syn}", ""]
    unsupported = sorted({t for t in info.types.values() if t not in KERNELS})
    lines.append("eventsim: " + ("runs this graph" if not unsupported else f"cannot run {', '.join(unsupported)}"))
    try:
        from hardware.lava.plan import lower
        lower(graph, int(meta.get("timesteps") or 1))
        lines.append("lava:     runs this graph (precision float)")
    except Exception as e:  # the planner names every problem
        lines.append(f"lava:     cannot run it: {e}")
    return "\n".join(lines)


def inspect_checkpoint(path) -> str:
    from models.checkpoint import load_checkpoint

    from models.checkpoint import build_model

    meta, tensors = load_checkpoint(path)
    build_model(meta, tensors, file=str(path))  # names and shapes checked against the architecture
    lines = [f"checkpoint {path}",
             f"method {meta['method']}, arch {meta['arch']}, T={meta['timesteps']}, input {meta['input_shape']}, "
             f"classes {meta['num_classes']}, dataset {meta.get('dataset')}",
             f"neuron: {meta['neuron']}", f"metrics (last epoch): {meta.get('metrics')}", "", "tensors:"]
    for k, v in tensors.items():
        lines.append(f"  {k:<36}{_fmt_shape(v.shape):<14}{v.dtype}")
    return "\n".join(lines)


def inspect_lava(path) -> str:
    """`inspect --lava`: the Lava lowering and its fixed-point quantisation, per layer."""
    from hardware.graph import load_graph
    from hardware.lava.describe import describe

    return f"graph {path}\n" + describe(load_graph(path))


def inspect_path(path) -> str:
    p = Path(path)
    if p.is_dir():
        return inspect_checkpoint(p)
    return inspect_graph(p)
