"""Packaging: the wheel (and the sdist) hold only the ``spikebridge`` package, with the
symlinked design-card folders (models, exporters, hardware, toolchain, benchmarks) inside
it; an installed wheel runs from a user's folder that has its own ``models/`` package
without touching it.

The wheel is built from a copy of the files the build reads, into a throwaway venv that
sees the dev environment's third-party packages through a .pth file (no download), with
PYTHONPATH cleared, so what runs is the installed wheel, not this checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINKED = ("models", "exporters", "hardware", "toolchain", "benchmarks")
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "spikebridge", *LINKED)

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def _run(cmd, cwd=None, env=None, ok=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                       timeout=600)
    if ok:
        assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def _no_isolation() -> list[str]:
    try:
        import setuptools  # noqa: F401
        return ["--no-build-isolation"]  # build with the installed setuptools: no index needed
    except ImportError:
        return []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source copy, wheel from the tree, sdist, wheel from the sdist)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_no_isolation(), "-w", tmp / "w", src])
    _run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(tmp / 'sd')!r})"],
         cwd=src)
    (sdist,) = (tmp / "sd").glob("spikebridge-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_no_isolation(), "-w", tmp / "w2", sdist])
    (wheel,) = (tmp / "w").glob("spikebridge-*.whl")
    (wheel2,) = (tmp / "w2").glob("spikebridge-*.whl")
    return src, wheel, sdist, wheel2


def _source_files() -> set[str]:
    """Every file the package should carry, as its path inside the package."""
    out = set()
    for name in ("spikebridge", *LINKED):
        root = REPO / name
        for p in root.rglob("*"):
            if "__pycache__" in p.parts or not p.is_file() or p.is_symlink():
                continue
            rel = p.relative_to(root)
            if name == "spikebridge":
                if rel.parts[0] in LINKED:
                    continue
                out.add(f"spikebridge/{rel.as_posix()}")
            elif p.suffix == ".py" or rel.as_posix() == "lava/requirements.txt":
                out.add(f"spikebridge/{name}/{rel.as_posix()}")
    return out


def test_wheel_holds_only_spikebridge(built):
    _, wheel, _, _ = built
    import spikebridge
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"spikebridge-{spikebridge.__version__}.dist-info/"
    outside = [n for n in names if not (n.startswith("spikebridge/") or n.startswith(dist_info))]
    assert outside == [], outside
    files = {n for n in names if n.startswith("spikebridge/")}
    for sub in LINKED:
        assert f"spikebridge/{sub}/__init__.py" in files, sub
    assert "spikebridge/hardware/lava/requirements.txt" in files  # setup-lava installs it
    assert "spikebridge/hardware/lava/worker.py" in files
    missing = _source_files() - files
    assert not missing, f"source files not in the wheel: {sorted(missing)}"
    assert not [n for n in files if n.endswith((".json", ".png", ".npz", ".nir"))], "data files in the wheel"
    meta = zipfile.ZipFile(wheel)
    assert meta.read(dist_info + "top_level.txt").decode().split() == ["spikebridge"]
    assert "BSD 3-Clause" in meta.read(dist_info + "licenses/LICENSE").decode()
    assert "spikebridge = spikebridge.toolchain.cli:main" in meta.read(dist_info + "entry_points.txt").decode()


def test_sdist_carries_the_linked_folders(built):
    """The sdist stores the symlinked subpackages as files under spikebridge/, so a wheel
    built from it (what `pip install` of the sdist does) has the same package files."""
    _, wheel, sdist, wheel2 = built
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
    for sub in LINKED:
        m = members.get(f"spikebridge/{sub}/__init__.py")
        assert m is not None and m.isfile(), sub
    assert "LICENSE" in members and "spikebridge/hardware/lava/requirements.txt" in members
    pkg = lambda w: sorted(n for n in zipfile.ZipFile(w).namelist() if n.startswith("spikebridge/"))  # noqa: E731
    assert pkg(wheel2) == pkg(wheel)


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A venv with the wheel installed; third-party packages come from this interpreter's
    site-packages through a .pth file (appended after the venv's own, so its spikebridge,
    the wheel's, wins over any editable install of the checkout)."""
    _, wheel, _, _ = built
    v = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", v])
    py = v / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    dev_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_dev_site.pth").write_text("".join(p + "\n" for p in sorted(dev_site)))
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel])
    assert (v / "bin" / "spikebridge").exists()
    return v


@pytest.fixture()
def user_repo(tmp_path):
    """A user's ML folder with its own models/ package (models/checkpoint.py among it)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text('OWNER = "user"\n')
    (tmp_path / "models" / "checkpoint.py").write_text('def save():\n    return "user checkpoint"\n')
    import nir
    import numpy as np
    g = nir.NIRGraph.from_list(nir.Affine(weight=np.eye(4)[:3], bias=np.zeros(3)),
                               nir.IF(r=np.ones(3), v_threshold=np.ones(3)))
    nir.write(str(tmp_path / "small.nir"), g)
    return tmp_path


def test_cli_runs_from_a_folder_with_its_own_models(venv, user_repo):
    import spikebridge
    py, exe = venv / "bin" / "python", venv / "bin" / "spikebridge"
    r = _run([py, "-m", "spikebridge", "--version"], cwd=user_repo)
    assert r.stdout.strip() == f"spikebridge {spikebridge.__version__}"
    assert _run([exe, "--version"], cwd=user_repo).stdout == r.stdout
    r = _run([exe, "inspect", "small.nir"], cwd=user_repo)
    assert "affine" in r.stdout and "Affine" in r.stdout and "nodes: 4, edges: 3" in r.stdout
    r = _run([py, "-m", "spikebridge", "inspect", "small.nir"], cwd=user_repo)
    assert "nodes: 4, edges: 3" in r.stdout
    # a command that imports models (torch) from the package: export refuses a bad checkpoint cleanly
    r = _run([exe, "export", "models"], cwd=user_repo, ok=False)
    assert r.returncode == 3 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr


def test_library_import_leaves_the_users_models_alone(venv, user_repo):
    code = """
import sys
import models, models.checkpoint
from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
from spikebridge.models.checkpoint import load_checkpoint
import spikebridge.models, spikebridge.hardware.graph, spikebridge.toolchain.cli
import spikebridge.benchmarks.bench_simulate
assert models.OWNER == "user" and models.checkpoint.save() == "user checkpoint"
assert sys.modules["models"] is models and sys.modules["models.checkpoint"] is models.checkpoint
assert models.__file__.startswith(sys.argv[1]), models.__file__
ours = sorted(k for k in sys.modules if k.split(".")[0] in ("exporters", "hardware", "toolchain", "benchmarks"))
assert ours == [], ours
assert sorted(k for k in sys.modules if k.startswith("models")) == ["models", "models.checkpoint"]
assert [n for n in vars(models) if not n.startswith("__")] == ["OWNER", "checkpoint"], vars(models).keys()
assert spikebridge.models.__file__.startswith(sys.argv[2]), spikebridge.models.__file__
print("ok")
"""
    site = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                ).stdout.strip()
    r = _run([venv / "bin" / "python", "-c", code, str(user_repo), site], cwd=user_repo)
    assert r.stdout.strip() == "ok"
