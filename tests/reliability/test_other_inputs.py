"""Issue 18 §4: other inputs read from strangers -- energy-model TOML, sweep .npy, run.json
and report.json, Fashion-MNIST .gz, Tiny ImageNet zips. Every file is generated here; each
is refused with exit 3 (DatasetError from the Python API for the archives) and one error
line, under a 1 GiB memory limit (512 MiB where torch is not imported) and a timeout."""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.make_corpus import write_base_nir
from tests.reliability._contract import MiB, only, refused, run_cli


@pytest.fixture()
def graph(tmp_path):
    g = tmp_path / "graph.nir"
    write_base_nir(g)
    x = tmp_path / "x.npy"
    np.save(x, np.ones((4, 2, 4), np.float32))
    return g, x


def _report(tmp_path, graph, *extra, **kw):
    g, x = graph
    out = tmp_path / "rep"
    return run_cli("report", g, "--input", x, "--out", out, *extra, **kw), out


TOML_OK = ('name = "mine"\nkind = "gpu-style"\n[constants.mac]\nvalue_pj = 4.6\nsource = "Horowitz 2014"\n'
           '[constants.synaptic_op]\nvalue_pj = 0.9\nsource = "Horowitz 2014"\n')


def _toml_cases(d: Path) -> dict:
    cases = {}
    fifo = d / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes: reading it would block forever
    cases["fifo"] = fifo
    deep = d / "deep.toml"
    deep.write_text("x = " + "[" * 20000 + "]" * 20000 + "\n" + TOML_OK)
    cases["deep nesting"] = deep
    big = d / "bigint.toml"
    big.write_text(TOML_OK.replace("4.6", "9" * 400))
    cases["400-digit integer"] = big
    bad = d / "utf8.toml"
    bad.write_bytes(TOML_OK.encode().replace(b"Horowitz", b"Horo\xff\xfewitz"))
    cases["invalid UTF-8"] = bad
    folder = d / "folder.toml"
    folder.mkdir()
    cases["directory"] = folder
    return cases


@pytest.mark.parametrize("case", ["fifo", "deep nesting", "400-digit integer", "invalid UTF-8", "directory"])
def test_energy_model_toml(tmp_path, graph, case):
    f = _toml_cases(tmp_path)[case]
    r, out = _report(tmp_path, graph, "--energy-model", f, timeout=120)
    refused(r, 3, str(f))
    only(out)


def test_energy_model_toml_valid_control(tmp_path, graph):
    f = tmp_path / "ok.toml"
    f.write_text(TOML_OK)
    r, out = _report(tmp_path, graph, "--energy-model", f)
    assert r.code == 0, r.stderr
    assert "mine" in (out / "report.json").read_text()


def test_sweep_npy_declaring_ten_billion_rows(tmp_path, graph):
    """A 200-byte .npy whose header declares (10^10, 2) float64: 149 GB. Bounded by the
    header before anything is allocated."""
    f = tmp_path / "sweep.npy"
    with open(f, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10**10, 2)})
        fh.write(np.array([[1, 0.5], [2, 0.75]]).tobytes())
    r, out = _report(tmp_path, graph, "--sweep", f)
    refused(r, 3, str(f))
    only(out)


DEEP = "[" * 100_000 + "]" * 100_000


def _run_dir(d: Path, run_json: str) -> Path:
    d.mkdir()
    (d / "run.json").write_text(run_json)
    write_base_nir(d / "graph.nir")
    np.savez(d / "eventsim.npz", x=np.zeros(1))
    return d


@pytest.mark.parametrize("how", ["report RUN", "report RUN --sweep-timesteps", "report --compare"])
def test_deeply_nested_run_json(tmp_path, how):
    run = _run_dir(tmp_path / "run", '{"dataset": "digits", "accuracy": ' + DEEP + "}")
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "out"
    if how == "report RUN":
        r = run_cli("report", run, "--out", out)
    elif how == "report RUN --sweep-timesteps":
        r = run_cli("report", run, "--sweep-timesteps", "1,2", "--out", out)
    else:
        other = _run_dir(tmp_path / "other", '{"dataset": "digits", "accuracy": {}}')
        (other / "report.json").write_text('{"schema_version": 1, "energy": ' + DEEP + "}")
        r = run_cli("report", "--compare", run, other, "--out", out)
    refused(r, 3, "run.json" if how != "report --compare" else "json", "nested deeper")
    assert sorted(p.name for p in run.iterdir()) == before
    only(out)


# ---- datasets (Python API and CLI in a subprocess under a memory limit) -------------------

def _py(code: str, tmp_path, mem=512 * MiB, timeout=300):
    script = tmp_path / "job.py"
    script.write_text(code)
    return run_cli(script, module="python", mem=mem, timeout=timeout)


def _flipped_gzip(d: Path) -> Path:
    """A valid gzip of an idx image file with one bit flipped inside the deflate stream,
    chosen so that decompressing it raises zlib.error (not a CRC error)."""
    rng = np.random.default_rng(0)
    idx = struct.pack(">HBBIII", 0, 8, 3, 200, 28, 28) + rng.integers(0, 8, 200 * 784, dtype=np.uint8).tobytes()
    good = gzip.compress(idx)
    for pos in range(20, len(good) - 8):
        for bit in range(8):
            bad = bytearray(good)
            bad[pos] ^= 1 << bit
            try:
                gzip.decompress(bytes(bad))
            except zlib.error:
                f = d / "train-images-idx3-ubyte.gz"
                f.write_bytes(bytes(bad))
                return f
            except (OSError, EOFError):
                continue
    raise AssertionError("no bit flip gave zlib.error")


def test_fashion_mnist_gz_with_a_flipped_bit(tmp_path):
    """Debian's folder (where the real files live) is pointed at the hostile one; the CLI's
    `train --dataset fashion-mnist` must refuse it with exit 3 and one line."""
    d = tmp_path / "fm"
    d.mkdir()
    _flipped_gzip(d)
    out = tmp_path / "out"
    code = f"""
import sys
from pathlib import Path
import spikebridge.models.datasets as ds
ds.DEBIAN_FASHION = Path({str(d)!r})
from spikebridge.toolchain.cli import main
sys.exit(main(["--no-progress", "train", "--dataset", "fashion-mnist", "--arch", "mlp", "--epochs", "1",
               "--device", "cpu", "--out", {str(out)!r}]))
"""
    r = _py(code, tmp_path, mem=2048 * MiB)
    refused(r, 3, "train-images-idx3-ubyte.gz", "gzip")
    assert not out.exists()


def _zip_by_hand(path: Path, name: str, size: int) -> None:
    """A zip with one deflated member of ``size`` zero bytes and an honest header, built
    without compressing ``size`` bytes: after a full flush a deflate compressor emits the same
    bytes for the same input, so one 1 MiB block is repeated."""
    block = 1 << 20
    assert size % block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    rest = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert rest == c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    data = first + rest * (size // block - 1) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    for _ in range(size // block):
        crc = zlib.crc32(bytes(block), crc)
    n = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(n), 0) + n
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(n),
                          0, 0, 0, 0, 0, 0) + n
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


def _tiny_annotated_once_per_line(path: Path, lines: int) -> None:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG")
    wnids = [f"n{i:08d}" for i in range(200)]
    ann = f"val_0.JPEG\t{wnids[0]}\n" * lines
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", ann)
        z.writestr("tiny-imagenet-200/val/images/val_0.JPEG", buf.getvalue())


TINY_JOB = """
import sys
from pathlib import Path
from spikebridge.base.errors import DatasetError
from spikebridge.models.datasets import load_tiny_imagenet
try:
    load_tiny_imagenet("test", path=Path({zip!r}))
except DatasetError as e:
    print(f"error: {{e}}", file=sys.stderr)
    sys.exit(3)
"""


def test_tiny_imagenet_small_zip_annotating_one_image_150k_times(tmp_path):
    """A ~20 KB zip whose val_annotations.txt (3 MB, under the text bound) names one image
    150000 times: 1.8 GB of decoded cache. Refused before allocating; no cache file written."""
    z = tmp_path / "tiny-imagenet-200.zip"
    _tiny_annotated_once_per_line(z, 150_000)
    assert z.stat().st_size < 200_000
    r = _py(TINY_JOB.format(zip=str(z)), tmp_path)
    refused(r, 3, "annotated twice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.py", z.name]


def test_tiny_imagenet_zip_member_expanding_to_2_gib(tmp_path):
    """A ~2 MB zip whose wnids.txt expands to 2 GiB: refused by the declared size, under a
    512 MiB memory limit."""
    z = tmp_path / "tiny-imagenet-200.zip"
    _zip_by_hand(z, "tiny-imagenet-200/wnids.txt", 2048 * MiB)
    assert z.stat().st_size < 4 * MiB
    r = _py(TINY_JOB.format(zip=str(z)), tmp_path)
    refused(r, 3, "wnids.txt", "above the limit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.py", z.name]


def test_tiny_imagenet_bounds_pass_a_well_formed_archive(tmp_path):
    """Control: 200 classes, one val image annotated once decodes."""
    from spikebridge.models.datasets import load_tiny_imagenet
    z = tmp_path / "tiny-imagenet-200.zip"
    _tiny_annotated_once_per_line(z, 1)
    x, y = load_tiny_imagenet("test", path=z)
    assert x.shape == (1, 3, 64, 64) and y.tolist() == [0]
