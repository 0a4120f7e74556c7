"""Hardware side of spikebridge: NIR graph loading and checks, the event-driven
simulator, the Lava backend, and the energy and latency models.

Imports only numpy, nir and h5py (never torch, never models); Lava only inside the
worker that spikebridge.hardware.lava starts on the Lava environment's interpreter.
"""
