"""The Loihi plan (numpy only, never imports lava): what both the Lava backend
(``spikebridge.hardware.lava``, which runs the plan in the Lava worker) and the bit-exact
integer model (eventsim's ``loihi-fixed`` profile) run.

    plan.lower(graph, T) -> Plan             # NIR graph -> populations, connections, readouts
    groups.split_threshold_groups(plan)      # per-neuron thresholds -> LIF processes per vth
    fixedpoint.quantize(plan) -> QPlan       # Loihi's 8-bit weights, 24-bit u/v, 12-bit decays
    reference.run_qplan(meta, arrays, x)     # the step-by-step integer model (the oracle)
    fast.run_qplan_fast(meta, arrays, x)     # the same, layer by layer over all steps (>= 100x)
    runner.prepare / to_trace / fixed_trace  # graph + input -> plan -> Trace (shared by both)

Nothing here imports the Lava backend; the Lava backend imports this package.
"""
from spikebridge.hardware.loihi.fixedpoint import QPlan, quantize
from spikebridge.hardware.loihi.groups import split_threshold_groups
from spikebridge.hardware.loihi.plan import Plan, lower
from spikebridge.hardware.loihi.reference import run_qplan
from spikebridge.hardware.loihi.runner import fixed_trace, simulate_fixed

__all__ = ["lower", "Plan", "quantize", "QPlan", "split_threshold_groups", "run_qplan", "fixed_trace",
           "simulate_fixed"]
