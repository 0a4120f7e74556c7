"""spikebridge: train spiking networks fast, export NIR/ONNX, run them event-driven and on
Lava, and report energy and latency.

One import name. The four folders of the design card are its subpackages:
``spikebridge.models`` (torch: neurons, architectures, training methods, datasets,
checkpoints), ``spikebridge.exporters`` (NIR and ONNX writers and readers),
``spikebridge.hardware`` (graph loading, backends, energy and latency; numpy only) and
``spikebridge.toolchain`` (the CLI and the reports). ``spikebridge.base`` is what every
layer may import (errors and exit codes, atomic file I/O, the NIR dialect).
"""
__version__ = "0.2.0"
