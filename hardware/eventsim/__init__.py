"""Event-driven CPU simulator (numpy) with exact per-node, per-step operation counts.

    simulate(graph, x, profile="spikebridge", dt=None, record_spikes=True, info=None) -> Trace
    count_ops(graph, info, activations) -> {node: {kind: int64 (T,)}}
"""
from .adapt import adapt_graph
from .counts import count_ops, fanout
from .kernels import KERNELS, Kernel, register
from .profiles import PROFILES, Profile, get_profile, register_profile
from .simulator import resolve_dt, run, simulate

__all__ = ["simulate", "run", "resolve_dt", "count_ops", "fanout", "PROFILES", "Profile",
           "get_profile", "register_profile", "adapt_graph", "KERNELS", "Kernel", "register"]
