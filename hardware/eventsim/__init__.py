"""Event-driven CPU simulator (numpy) with exact per-node, per-step operation counts.

    simulate(graph, x, profile="spikebridge", dt=None, record_spikes=True, info=None,
             max_batch=None) -> Trace
    count_ops(graph, info, activations, delay=0) -> {node: {kind: int64 (T,)}}
    adapt_graph(graph, profile) -> graph   # Input/Output shapes of other libraries' exports

Profiles (profiles.py, one data entry each): spikebridge, nir, snntorch, norse, sinabs,
spikingjelly, lava-float, loihi-fixed. The library profiles were learned from the
libraries themselves (scripts/peer_graphs, tests/data/peers, tests/test_profiles.py).
"""
from .adapt import adapt_graph
from .counts import count_ops, fanout
from .kernels import KERNELS, Kernel, register
from .profiles import PROFILES, Profile, get_profile, register_profile
from .simulator import resolve_dt, run, simulate

__all__ = ["simulate", "run", "resolve_dt", "count_ops", "fanout", "PROFILES", "Profile",
           "get_profile", "register_profile", "adapt_graph", "KERNELS", "Kernel", "register"]
