"""One small SNN2ANN model trained once per test session and shared by the test files."""
from __future__ import annotations

import tempfile
from pathlib import Path

_CACHE: dict[str, Path] = {}


def trained_checkpoint(arch: str = "cnn", epochs: int = 6, timesteps: int = 4) -> Path:
    key = f"{arch}-{epochs}-{timesteps}"
    if key not in _CACHE:
        from spikebridge.models.train import TrainConfig, train
        out = Path(tempfile.mkdtemp(prefix=f"sb-{key}-")) / "ckpt"
        train(TrainConfig(arch=arch, dataset="digits", epochs=epochs, timesteps=timesteps, seed=0),
              out, progress=False)
        _CACHE[key] = out
    return _CACHE[key]
