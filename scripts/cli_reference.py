"""Regenerate the option reference at the end of docs/cli.md from the CLI's own ``--help``.

    python scripts/cli_reference.py          # rewrite the block between the markers
    python scripts/cli_reference.py --check  # exit 1 if the block is out of date

Run from the repository root with spikebridge importable (``make setup`` or PYTHONPATH=.).
Text outside the markers is written by hand and left alone. tests/test_docs.py checks that
every option of every command appears in docs/cli.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
START, END = "<!-- cli-help:start -->", "<!-- cli-help:end -->"
BENCHES = ("train", "methods", "simulate", "distributed")


def commands() -> list[str]:
    from spikebridge.toolchain.cli import _parser
    p = _parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def help_text(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "100", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "spikebridge", *args, "--help"], capture_output=True, text=True,
                       env=env, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"spikebridge {' '.join(args)} --help failed: {r.stderr.strip()}")
    return r.stdout.rstrip()


def block() -> str:
    parts = [START, "", "### spikebridge", "", "```text", help_text([]), "```", ""]
    for c in commands():
        parts += [f"### spikebridge {c}", "", "```text", help_text([c]), "```", ""]
        if c == "bench":
            for b in BENCHES:
                parts += [f"### spikebridge bench {b}", "", "```text", help_text(["bench", b]), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def main() -> int:
    text = DOC.read_text()
    i, j = text.index(START), text.index(END) + len(END)
    new = text[:i] + block() + text[j:]
    if "--check" in sys.argv[1:]:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
