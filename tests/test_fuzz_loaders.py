"""A short run of the file-loader fuzzer (fuzz/fuzz_loaders.py) in CI: mutated NIR,
checkpoint, .pt, ONNX, .npz and .npy files raise only InputError, and no pickle payload
runs. The long run is documented in fuzz/README.md."""
from __future__ import annotations

import os

from fuzz.fuzz_loaders import TARGETS, fuzz

EXAMPLES = int(os.environ.get("SPIKEBRIDGE_FUZZ_EXAMPLES", "25"))


def test_file_loaders_raise_only_input_errors(tmp_path, monkeypatch):
    # a mutation can make HDF5 loop forever; the loader's guard then rejects the file after this long
    monkeypatch.setenv("SPIKEBRIDGE_HDF5_TIMEOUT", "3")
    fuzz(TARGETS, EXAMPLES, 10.0, tmp_path)
    assert not (tmp_path / "corpus" / "PWNED_MARKER").exists()
