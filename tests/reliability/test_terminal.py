"""Issue 18 §6: control characters from paths and file contents never reach the terminal raw
in the CLI's error line (colour codes, an OSC sequence that retitles the terminal, C1 CSI,
bidirectional overrides, undecodable file-name bytes)."""
from __future__ import annotations

import os

import numpy as np
import onnx

from spikebridge.toolchain.cli import terminal_safe
from tests.reliability._contract import refused, run_cli

HOSTILE = "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x9b2J\u202egnp.exe\r"


def _assert_clean(stderr: str) -> None:
    for ch in stderr.rstrip("\n"):
        o = ord(ch)
        assert not (o < 0x20 or 0x7F <= o <= 0x9F or o in (0x202E, 0x202D)), f"raw {ch!r} in {stderr!r}"


def test_terminal_safe_escapes_every_control():
    s = terminal_safe(HOSTILE + "\udcff ok é 😀")
    _assert_clean(s)
    assert s.startswith("\\x1b]0;pwned\\x07\\x1b[31mred") and "\\u202e" in s and "\\udcff" in s
    assert s.endswith(" ok é 😀")  # printable text, accents and emoji are kept


def test_control_characters_in_a_path(tmp_path):
    p = tmp_path / f"g{HOSTILE}.nir"
    r = run_cli("inspect", p)
    refused(r, 3, "\\x1b]0;pwned\\x07", "\\x9b2J", "\\u202e")  # (a CR is whitespace: InputError makes it a space)
    _assert_clean(r.stderr)


def test_undecodable_bytes_in_a_path(tmp_path):
    d = os.fsencode(tmp_path) + b"/bad\xff\xfe.nir"
    with open(d, "wb") as f:
        f.write(b"not hdf5")
    r = run_cli("inspect", os.fsdecode(d))
    refused(r, 3, "\\udcff")
    _assert_clean(r.stderr)


def test_control_characters_from_file_contents(tmp_path):
    """An ONNX node named with an OSC title sequence and colour codes, rejected for stride 0:
    the error line names the node, escaped."""
    from tests.reliability.test_onnx_reading import conv_model
    m = conv_model({"strides": [0, 0]})
    m.graph.node[0].name = HOSTILE
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", np.zeros((4, 1, 8, 8), np.float32))
    r = run_cli("convert", tmp_path / "m.onnx", "--timesteps", "4", "--calibration", tmp_path / "c.npy",
                "--out", tmp_path / "g.nir")
    refused(r, 3, "\\x1b]0;pwned\\x07", "strides")
    _assert_clean(r.stderr)


def test_internal_error_text_is_escaped_too(monkeypatch, capsys):
    """The catch-all (exit 1) prints exception text: escaped as well."""
    from spikebridge.toolchain import cli

    def boom(args):
        raise RuntimeError(HOSTILE)
    monkeypatch.setitem(cli.COMMANDS, "doctor", boom)
    assert cli.main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error") and err.count("\n") == 1
    _assert_clean(err)
