"""Hardware side of spikebridge: NIR graph loading and checks, the event-driven
simulator, the Lava backend, and the energy and latency models.

Running a graph goes through one function and one backend contract:
``spikebridge.hardware.backends.run_graph(graph, x_tb, backend, RunOptions(...))``
(backends: eventsim, loihi-fixed, lava-float, lava-fixed; ``register_backend`` adds one).

Imports only numpy, nir and h5py (never torch, never models); Lava only inside the
worker that spikebridge.hardware.lava starts on the Lava environment's interpreter.
"""
