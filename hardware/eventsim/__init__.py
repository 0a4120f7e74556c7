"""Event-driven CPU simulator (numpy) with exact per-node, per-step operation counts.

    simulate(graph, x, profile="spikebridge", dt=None, record_spikes=True, info=None,
             max_batch=None) -> Trace
    count_ops(graph, info, activations, delay=0) -> {node: {kind: int64 (T,)}}
    adapt_graph(graph, profile) -> graph   # Input/Output shapes of other libraries' exports

Profiles (profiles.py, one data entry each): spikebridge, nir, snntorch, norse, sinabs,
spikingjelly, lava-float, loihi-fixed; library profiles take options for what their
exporters do not record ("snntorch:reset=zero", profiles.LIBRARY_OPTIONS). detect.py tells
which library wrote a graph, warns when a foreign graph is read without a profile
(adapt.ForeignGraphWarning), describes a reading (describe_reading) and refuses decays
outside [0, 1] (check_decays). The library profiles were learned from the
libraries themselves (scripts/peer_graphs, tests/data/peers, tests/hardware/test_profiles.py).
"""
from .adapt import ForeignGraphWarning, adapt_graph
from .counts import count_ops, fanout
from .kernels import KERNELS, Kernel, register
from .detect import describe_reading, detect_library
from .profiles import LIBRARY_OPTIONS, PROFILES, Profile, get_profile, parse_profile, register_profile
from .simulator import resolve_dt, run, simulate

__all__ = ["simulate", "run", "resolve_dt", "count_ops", "fanout", "PROFILES", "Profile",
           "get_profile", "register_profile", "adapt_graph", "KERNELS", "Kernel", "register",
           "parse_profile", "LIBRARY_OPTIONS", "describe_reading", "detect_library",
           "ForeignGraphWarning"]
