"""`spikebridge doctor` reports what is true: Lava works -> "works", exit 0; Lava missing or
broken -> "NOT WORKING" with the fix, exit 4. Also the Lava environment lookup and the
cheap paths of `spikebridge setup-lava` (the full build runs in `make setup`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spikebridge.hardware.lava import interpreter

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, env_extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "spikebridge", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def fields(stdout: str) -> dict:
    """label -> text of the doctor's two-column report."""
    out = {}
    for line in stdout.splitlines():
        out[line[:14].strip()] = line[14:]
    return out


@pytest.mark.lava
def test_doctor_lava_present():
    r = run_cli("doctor")
    f = fields(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f["lava"] == "works (lava-nc 0.10.0)"
    assert f["lava python"].endswith(")") and "(3.10." in f["lava python"]
    assert f["status"] == "ok"
    assert "NOT WORKING" not in r.stdout and "MISSING" not in r.stdout
    assert f["nir"] == "1.0.8" and f["torch"]


def test_doctor_lava_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("doctor", env_extra={"SPIKEBRIDGE_LAVA_VENV": str(empty)})
    f = fields(r.stdout)
    assert r.returncode == 4, r.stdout + r.stderr
    assert f["lava venv"] == f"{empty} (found via SPIKEBRIDGE_LAVA_VENV)"
    assert f["lava"] == f"NOT WORKING: {empty / 'bin' / 'python'} does not exist"
    assert "spikebridge setup-lava" in f["fix"]
    assert f["status"] == "problems found (see above)"
    assert "works" not in f["lava"] and r.stderr == ""


def test_doctor_lava_broken(tmp_path):
    """An environment whose python runs but has no Lava: the import error is shown."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    r = run_cli("doctor", env_extra={"SPIKEBRIDGE_LAVA_VENV": str(venv)}, drop=("PYTHONPATH",))
    f = fields(r.stdout)
    assert r.returncode == 4, r.stdout + r.stderr
    assert f["lava"].startswith("NOT WORKING: ") and "lava" in f["lava"][len("NOT WORKING: "):]
    assert f["status"] == "problems found (see above)"


def test_lava_venv_lookup_order(tmp_path, monkeypatch):
    """$SPIKEBRIDGE_LAVA_VENV, then the checkout's .venv-lava, then the per-user location."""
    def fake_venv(d: Path) -> Path:
        (d / "bin").mkdir(parents=True)
        (d / "bin" / "python").write_text("")
        return d

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    user = tmp_path / "data" / "spikebridge" / "lava-venv"
    assert interpreter.user_lava_venv() == user
    dev = tmp_path / "checkout" / ".venv-lava"
    monkeypatch.setattr(interpreter, "checkout_lava_venv", lambda: dev)
    monkeypatch.delenv("SPIKEBRIDGE_LAVA_VENV", raising=False)
    venv, how = interpreter.find_lava_venv()
    assert venv == user and how.startswith("none found") and str(dev) in how and str(user) in how
    fake_venv(user)
    assert interpreter.find_lava_venv() == (user, "per-user location")
    fake_venv(dev)
    assert interpreter.find_lava_venv() == (dev, "source checkout (.venv-lava)")
    monkeypatch.setenv("SPIKEBRIDGE_LAVA_VENV", str(tmp_path / "explicit"))
    assert interpreter.find_lava_venv() == (tmp_path / "explicit", "SPIKEBRIDGE_LAVA_VENV")
    # an installed package (no checkout) skips the .venv-lava step
    monkeypatch.delenv("SPIKEBRIDGE_LAVA_VENV")
    monkeypatch.setattr(interpreter, "checkout_lava_venv", lambda: None)
    assert interpreter.find_lava_venv() == (user, "per-user location")


def test_checkout_lava_venv_here():
    """Run from this checkout (the subpackages are symlinks), the dev location is <repo>/.venv-lava."""
    if not (REPO / "spikebridge" / "hardware").is_symlink():
        pytest.skip("not a source checkout")
    assert interpreter.checkout_lava_venv() == REPO / ".venv-lava"


def test_setup_lava_refuses_bad_python(tmp_path):
    """--python that is not a 3.10: exit 4 with one line, and no directory left behind."""
    target = tmp_path / "lava-env"
    r = run_cli("setup-lava", "--venv", str(target), "--python", sys.executable)
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stderr.startswith("error: --python") and "3.10" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not target.exists()


def test_setup_lava_venv_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run_cli("setup-lava", "--venv", str(f))
    assert r.returncode == 3 and "not a directory" in r.stderr, r.stderr


@pytest.mark.lava
def test_setup_lava_keeps_a_working_environment():
    """An environment where Lava imports is reported ready and left as it is."""
    venv, _ = interpreter.find_lava_venv()
    before = sorted(p.name for p in (venv / "lib").iterdir())
    r = run_cli("setup-lava", "--venv", str(venv))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(venv.absolute())
    assert "is ready (lava-nc 0.10.0)" in r.stderr
    assert sorted(p.name for p in (venv / "lib").iterdir()) == before
