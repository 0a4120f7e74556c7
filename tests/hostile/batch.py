"""Run many CLI invocations (or loader calls) in ONE process and record what each did.

    python -m tests.hostile.batch JOBS.json RESULTS.json

JOBS.json: a list of {"argv": [...]} (calls ``spikebridge.toolchain.cli.main(argv)``) or
{"onnx": PATH} (calls ``spikebridge.toolchain.safety.load_onnx``) or {"pt": PATH} (calls
``spikebridge.models.checkpoint.load_train_state``). For each job, file descriptors 1 and 2 are
redirected to temporary files (so C-level writes are caught too) and a CPU-time alarm
(ITIMER_PROF, ``cpu_seconds``, default 10) stops a job that runs too long. The caller
runs this process under RLIMIT_AS / RLIMIT_CPU. RESULTS.json: per job, the exit code
(3 for an InputError of a direct loader call, "timeout", or "crash: ..." for any other
exception), stdout and stderr.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile


class _CpuTimeout(BaseException):  # not an Exception: the CLI's catch-all must not swallow it
    pass


def _alarm(signum, frame):
    raise _CpuTimeout()


def _run_job(job: dict):
    if "argv" in job:
        from spikebridge.toolchain.cli import main
        try:
            return main(list(job["argv"]))
        except SystemExit as e:
            return e.code
    from spikebridge.base.errors import InputError
    try:
        if "onnx" in job:
            from spikebridge.toolchain.safety import load_onnx
            load_onnx(job["onnx"])
        else:
            from spikebridge.models.checkpoint import load_train_state
            load_train_state(job["pt"], required=("epoch", "optimizer", "scheduler", "generator", "torch_rng"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def main(jobs_path: str, results_path: str) -> None:
    jobs = json.loads(open(jobs_path).read())
    signal.signal(signal.SIGPROF, _alarm)
    results = []
    saved_out, saved_err = os.dup(1), os.dup(2)
    for job in jobs:
        with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            signal.setitimer(signal.ITIMER_PROF, float(job.get("cpu_seconds", 10)))
            try:
                code = _run_job(job)
            except _CpuTimeout:
                code = "timeout"
            except BaseException as e:  # noqa: BLE001 - recorded, the test fails on it
                code = f"crash: {type(e).__name__}: {e}"
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
            fo.seek(0)
            fe.seek(0)
            results.append({"code": code, "stdout": fo.read().decode("utf-8", "replace"),
                            "stderr": fe.read().decode("utf-8", "replace")})
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
