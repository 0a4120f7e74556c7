"""Distributed training (torch.distributed, 2 gloo processes on the CPU): the same global batch
and seed give the same weights and thresholds as one process, for every method, with dropout
on; --resume continues with a different number of processes; rank 0 alone writes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts processes and trains small models
PY = sys.executable
COMMON = dict(arch="mlp", dataset="digits", epochs=2, limit_train=96, limit_test=40, batch_size=32, seed=3,
              device="cpu", sync_bn=True, timesteps=2)
# every method of the registry plus snn2ann and bptt; extra options keep the runs tiny
METHODS = {
    "snn2ann": {},
    "bptt": {},
    "qcfs": {"L": 2},
    "parallel": {"L": 2},
    "bridge": {"finetune_epochs": 1},
    "lasnn": {"teacher_epochs": 1},
    "ann": {},
}
AUG = {"snn2ann": {"augment": True}}  # crop/flip drawn for the global batch, then sliced


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_env(rank: int, world: int, port: int) -> dict:
    """What torchrun gives each worker (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}


def _weights(d: Path) -> dict:
    from spikebridge.models.checkpoint import load_tensors
    return load_tensors(d)


# The tolerance, from the arithmetic rather than from one CPU. One process and two reduce the
# same float32 sums in different orders (and AVX2 and AVX-512 kernels differ again), so a
# membrane within rounding of its threshold can spike in one run and not in the other. Such a
# flip changes at most one sample's share (1/batch) of a gradient, and an Adam step moves a
# weight by at most about lr, so each flip-affected step moves a weight by at most lr/batch.
# Over every optimizer step of every stage (teacher or pretraining epochs included) that is
# ATOL below. A real divergence (another data slice, other dropout masks, a missing
# all-reduce) changes whole gradients, about lr per step on most weights: ATOL is 1/batch of that.
LR = 1e-3  # TrainConfig's default, which these runs use
STEPS = (-(-COMMON["limit_train"] // COMMON["batch_size"])) * (COMMON["epochs"] + 1)  # +1: the extra stage
ATOL = LR * STEPS / COMMON["batch_size"]


def _assert_same(a: Path, b: Path, atol=ATOL):
    """Weights within the float tolerance above, SNN2ANN thresholds exactly. A conv/linear bias
    followed by BatchNorm has a zero gradient in exact arithmetic, so Adam turns its float noise
    into lr-sized steps; it is compared through what the network uses, bias - running_mean."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if k.endswith("threshold"):
            assert np.array_equal(wa[k], wb[k]), f"{a.name}: {k}: thresholds differ (ATA decisions diverged)"
            continue
        ka, kb = wa[k], wb[k]
        mean = k.replace("op.bias", "bn.running_mean")
        if k.endswith("op.bias") and mean in wa:
            ka, kb = ka - wa[mean], kb - wb[mean]
        np.testing.assert_allclose(ka, kb, rtol=1e-4, atol=atol, err_msg=f"{a.name}: {k}")


def _one_process(method: str, out: Path, **kw):
    from spikebridge.models.train import TrainConfig, train
    cfg = TrainConfig(method=method, **{**COMMON, **kw})
    cfg.extra.update(METHODS.get(method, {}))
    cfg.extra["limit_test"] = COMMON["limit_test"]
    return train(cfg, out, progress=False)


def test_resume_with_two_processes_via_cli_matches_one_process(tmp_path):
    """A 1-process run killed after epoch 1 of 3, resumed by `spikebridge train --nproc-per-node 2
    --sync-bn --resume` (torchrun's launcher): the same weights (float tolerance), thresholds
    (exactly), logged losses and noisy fractions as one uninterrupted process."""
    import spikebridge.models.methods.common as T  # metrics.jsonl's writer (common.write_history)

    _one_process("snn2ann", tmp_path / "one", epochs=3)
    real, calls = T.atomic_write_text, {"n": 0}

    def killing_write(*a, **k):  # metrics.jsonl is written last in an epoch: die right after it
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    T.atomic_write_text = killing_write
    try:
        with pytest.raises(KeyboardInterrupt):
            _one_process("snn2ann", tmp_path / "two", epochs=3)
    finally:
        T.atomic_write_text = real
    args = [PY, "-m", "spikebridge", "--no-progress", "train", "--method", "snn2ann", "--arch", "mlp",
            "--dataset", "digits", "--epochs", "3", "--limit-train", "96", "--batch-size", "32", "--seed", "3",
            "--timesteps", "2", "--device", "cpu", "--sync-bn", "--nproc-per-node", "2", "--resume"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*args, "--out", str(tmp_path / "two")], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["processes"] == 2 and row["samples"] == 96 and row["epoch"] == 3
    _assert_same(tmp_path / "one", tmp_path / "two")
    hist = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [h.get("processes", 1) for h in hist] == [1, 2, 2]
    for h, r in zip(hist, ref):  # the loss is the global batch's, as one process logs it
        assert abs(h["loss"] - r["loss"]) < 1e-4 and h["noisy_fraction"] == pytest.approx(r["noisy_fraction"])
    assert not list((tmp_path / "two").glob(".*.tmp")), "a temporary file was left behind"


def test_every_method_two_processes_match_one_process(tmp_path):
    """snn2ann (dropout and augmentation on), bptt, qcfs, parallel (calibration all-reduced), bridge,
    lasnn and ann: 2 gloo processes started as torchrun starts them (env RANK/WORLD_SIZE/MASTER_*)
    == one process."""
    for m in METHODS:
        _one_process(m, tmp_path / "one" / m, **AUG.get(m, {}))
    port = _free_port()
    runs = ", ".join(f"({m!r}, {e!r})" for m, e in METHODS.items())
    script = ("from spikebridge.models.train import TrainConfig, train\n"
              f"for m, extra in [{runs}]:\n"
              f"    cfg = TrainConfig(method=m, **{COMMON!r}, **{AUG!r}.get(m, {{}}))\n"
              f"    cfg.extra.update(extra); cfg.extra['limit_test'] = {COMMON['limit_test']}\n"
              f"    train(cfg, {str(tmp_path / 'two')!r} + '/' + m, progress=False)\n")
    procs = [subprocess.Popen([PY, "-c", script], cwd=REPO, env=_torchrun_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    for m in METHODS:
        _assert_same(tmp_path / "one" / m, tmp_path / "two" / m)
        meta = json.loads((tmp_path / "two" / m / "model.json").read_text())
        assert meta["method"] == m
    # the parallel method's calibration (psi, phi, theta) is part of its weights: checked above
    assert any(k.startswith("psi_") for k in _weights(tmp_path / "two" / "parallel"))


def test_all_reduce_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path):
    """AllReduceBatchNorm (torch's SyncBatchNorm refuses CPU tensors) in 2 processes, each with
    half a batch: outputs, input gradients and running statistics equal BatchNorm2d's on the
    whole batch."""
    port = _free_port()
    script = (
        "import torch, torch.distributed as dist\n"
        "from spikebridge.models import distributed as D\n"
        "from types import SimpleNamespace\n"
        "cfg = SimpleNamespace(device='cpu', batch_size=8, sync_bn=True)\n"
        "with D.session(cfg) as ctx:\n"
        "    torch.manual_seed(0); x = torch.randn(8, 3, 4, 4) * 3 + 1\n"
        "    bn = torch.nn.BatchNorm2d(3); bn.weight.data.uniform_(0.5, 2); ref = torch.nn.BatchNorm2d(3)\n"
        "    ref.load_state_dict(bn.state_dict()); m = torch.nn.Sequential(bn); D.convert_sync_bn(m)\n"
        "    assert type(m[0]).__name__ == 'AllReduceBatchNorm'\n"
        "    off, n = ctx.shard(8); xl = x[off:off + n].clone().requires_grad_(); xr = x.clone().requires_grad_()\n"
        "    w = torch.arange(8 * 48, dtype=torch.float32).view(8, 3, 4, 4).sin()\n"
        "    (m(xl) * w[off:off + n]).sum().backward(); yr = ref(xr); (yr * w).sum().backward()\n"
        "    torch.testing.assert_close(bn.running_mean, ref.running_mean)\n"
        "    torch.testing.assert_close(bn.running_var, ref.running_var)\n"
        "    torch.testing.assert_close(xl.grad, xr.grad[off:off + n], rtol=1e-4, atol=1e-5)\n"
        "    bn.eval(); ref.eval(); torch.testing.assert_close(bn(x), ref(x))\n"
        "    print('ok', ctx.rank)\n")
    procs = [subprocess.Popen([PY, "-c", script], cwd=REPO, env=_torchrun_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sorted(o[0].split()[-1] for o in outs) == ["0", "1"]


def test_shard_slices_cover_the_global_batch_in_order():
    from spikebridge.models.distributed import DistContext
    for n in (4, 5, 7, 32, 33):
        for w in (1, 2, 3):
            parts = [DistContext(rank=r, world_size=w).shard(n) for r in range(w)]
            assert [o for o, _ in parts] == [sum(k for _, k in parts[:r]) for r in range(w)]
            assert sum(k for _, k in parts) == n and max(k for _, k in parts) - min(k for _, k in parts) <= 1


def test_keep_mask_rows_are_the_global_batch_rows():
    """Inside rows(offset, global_batch) the dropout mask is the global batch's, sliced: the
    same RNG state gives rank r exactly rows offset.. of the 1-process mask."""
    from spikebridge.models.distributed import rows
    from spikebridge.models.snn2ann import keep_mask
    like = torch.zeros(10, 3, 5)
    torch.manual_seed(7)
    full = keep_mask(like, 0.5)
    for off, n in ((0, 5), (5, 5), (3, 4)):
        torch.manual_seed(7)
        with rows(off, 10):
            part = keep_mask(like[:n], 0.5)
        assert torch.equal(part, full[off:off + n])


def test_nproc_per_node_errors_are_one_line(tmp_path):
    from spikebridge.toolchain.cli import main
    assert main(["train", "--nproc-per-node", "0", "--out", str(tmp_path / "x")]) == 3
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # an input error inside the workers (unknown dataset) -> exit 3, one line, no traceback
    p = subprocess.run([PY, "-m", "spikebridge", "--no-progress", "train", "--dataset", "nope", "--arch", "mlp",
                        "--nproc-per-node", "2", "--out", str(tmp_path / "y")], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "y" / "weights.safetensors").exists()


def test_a_killed_training_process_is_exit_4_in_one_line(tmp_path):
    """SIGKILL one of the two workers of `train --nproc-per-node 2`: the launcher stops the
    other and the command fails with exit code 4 and one line naming the dead rank."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([PY, "-m", "spikebridge", "--no-progress", "train", "--method", "snn2ann", "--arch", "mlp",
                          "--epochs", "500", "--limit-train", "256", "--batch-size", "32", "--device", "cpu",
                          "--nproc-per-node", "2", "--out", str(tmp_path / "k")], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    deadline = time.monotonic() + 240
    while len(workers) < 2 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.5)
        kids = []
        for task in Path(f"/proc/{p.pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
        workers = [k for k in kids if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]
    assert len(workers) == 2, "the two training processes never started"
    time.sleep(3)  # let them get into training
    os.kill(workers[-1], signal.SIGKILL)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: distributed training failed: a worker process died"), err
    assert "signal 9" in lines[0]
    for k in workers:
        assert not Path(f"/proc/{k}").exists() or "zombie" in Path(f"/proc/{k}/status").read_text().lower()
