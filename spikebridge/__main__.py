"""``python -m spikebridge``: the command line."""
import sys

from spikebridge.toolchain.cli import main

sys.exit(main())
