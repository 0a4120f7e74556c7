"""spikebridge's command line and pipeline: turns arguments into configs and calls the
stages in models/, exporters/ and hardware/."""
__version__ = "0.1.0"
