"""--resume for the registry methods: a run killed after epoch k and continued with --resume
ends with bit-identical weights to an uninterrupted run (CPU, same seed), and it really
continues (the finished epochs are not trained again)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikebridge.base.errors import InputError

BASE = dict(arch="mlp", dataset="digits", limit_train=96, seed=3, batch_size=32, device="cpu", timesteps=2,
            lr=2e-3)


def _cfg(method, **kw):
    from spikebridge.models.train import TrainConfig
    extra = {"limit_test": 24, **kw.pop("extra", {})}
    return TrainConfig(method=method, **{**BASE, **kw}, extra=extra)


def _kill_and_resume(monkeypatch, tmp_path, cfg, kill_after):
    from spikebridge.models.checkpoint import load_tensors
    from spikebridge.models.methods import resume as R
    from spikebridge.models.train import train

    train(cfg, tmp_path / "full", progress=False)
    real = R.Stages.save
    saved = []

    def killing_save(self, stage, epoch, *a, **k):
        real(self, stage, epoch, *a, **k)
        saved.append((stage, epoch))
        if len(saved) == kill_after:
            raise KeyboardInterrupt  # the process dies right after this epoch's state is on disk

    monkeypatch.setattr(R.Stages, "save", killing_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False)
    before = list(saved)
    torch.manual_seed(999)  # the resumed process starts from another global RNG state
    train(cfg, tmp_path / "killed", progress=False, resume=True)
    redone = saved[len(before):]
    assert redone and redone[0] != before[-1] and not set(redone) & set(before[:-1]), (before, redone)
    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    return before, redone


def test_qcfs_killed_and_resumed_equals_uninterrupted(monkeypatch, tmp_path):
    before, redone = _kill_and_resume(monkeypatch, tmp_path, _cfg("qcfs", epochs=3, extra={"L": 2}), 2)
    assert before == [("qcfs-ann", 1), ("qcfs-ann", 2)] and redone == [("qcfs-ann", 3)]


@pytest.mark.parametrize("kill_after", [3])  # inside the BPTT fine-tune (the pretraining is fit_ann, as qcfs)
def test_bridge_killed_and_resumed_equals_uninterrupted(monkeypatch, tmp_path, kill_after):
    before, redone = _kill_and_resume(monkeypatch, tmp_path, _cfg("bridge", epochs=2, extra={"finetune_epochs": 2}),
                                      kill_after)
    assert before + redone == [("bridge-ann", 1), ("bridge-ann", 2), ("bridge-bptt", 1), ("bridge-bptt", 2)]


def test_lasnn_with_its_own_teacher_killed_in_the_student_and_resumed(monkeypatch, tmp_path):
    before, redone = _kill_and_resume(monkeypatch, tmp_path, _cfg("lasnn", epochs=2), 3)
    assert before == [("relu-ann", 1), ("relu-ann", 2), ("lasnn-student", 1)] and redone == [("lasnn-student", 2)]


def test_resume_with_another_configuration_is_a_one_line_input_error(tmp_path):
    from spikebridge.models.train import train

    train(_cfg("qcfs", epochs=1, extra={"L": 2}), tmp_path / "run", progress=False)
    with pytest.raises(InputError, match=r"different configuration .*lr"):
        train(_cfg("qcfs", epochs=1, lr=1e-2, extra={"L": 2}), tmp_path / "run", progress=False, resume=True)
    # a fresh run (no --resume) drops the old stage state first
    (tmp_path / "run" / "train_state.stale.pt").write_bytes(b"junk")
    train(_cfg("qcfs", epochs=1, lr=1e-2, extra={"L": 2}), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").glob("train_state.*.pt")) == ["train_state.qcfs-ann.pt"]
