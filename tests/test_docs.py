"""The user documentation stays true: README.md is a short front door whose links and
anchors resolve, every command line in README.md and docs/ parses with the real CLI,
docs/cli.md names every option of every command, no machine-specific paths, and the
README's Python API example runs."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from spikebridge.toolchain.cli import _parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower().replace("`", "")
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def _code_blocks(page: Path, langs=("sh", "")) -> list[str]:
    """The bodies of the fenced blocks whose language is one of ``langs``."""
    blocks, lang, body = [], None, []
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                if lang in langs:
                    blocks.append("\n".join(body) + "\n")
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for section in ("## Set-up", "## Quickstart 1", "## Quickstart 2", "## Quickstart 3", "## Python API",
                    "## Backends and run options", "## Profiles", "## Reliability"):
        assert section in text, section
    for page in ("cli", "methods", "lava", "nir-conventions", "benchmarks", "reliability"):
        assert f"(docs/{page}.md" in text, page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external URL
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with this anchor in {dest.name}")
    assert not bad, bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_machine_specific_paths_or_dev_notes(page):
    text = page.read_text()
    for pat in (r"/work/", r"/tmp/[\w.-]+-venv", r"/root/", r"/home/\w", r"\bthis session\b", r"\bhelpers?\b",
                r"\bsession \d"):
        assert not re.search(pat, text), f"{page.name}: {pat}"


def _command_lines(page: Path) -> list[str]:
    lines = []
    for block in _code_blocks(page):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if "[" in line or "..." in line:
                continue  # a synopsis with [optional] parts, not a command line
            for part in line.split("|"):
                part = part.strip()
                if part.startswith("spikebridge "):
                    lines.append(part)
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_command_lines_parse(page):
    """Every `spikebridge ...` line in a code block is accepted by the real argument parser."""
    bad = []
    for line in _command_lines(page):
        argv = shlex.split(line)[1:]
        try:
            _parser().parse_args(argv)
        except SystemExit as e:
            if e.code != 0:
                bad.append(line)
    assert not bad, bad


def test_cli_reference_names_every_option():
    text = (REPO / "docs" / "cli.md").read_text()
    top = _parser()
    missing = []
    for name, sub in _subparsers(top).items():
        m = re.search(rf"^### spikebridge {re.escape(name)}\n(.*?)(?=^### |\Z)", text, flags=re.M | re.S)
        if not m:
            missing.append(f"{name}: no section")
            continue
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in m.group(1):
                    missing.append(f"{name} {opt}")
        if f"## {name}" not in text.replace("### spikebridge", ""):
            missing.append(f"{name}: no prose section")
    for action in top._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in text:
                missing.append(f"global {opt}")
    assert not missing, f"{missing}: run python scripts/cli_reference.py and describe new commands"


@pytest.mark.slow
def test_readme_python_api_runs(tmp_path):
    (code,) = _code_blocks(README, ("python",))
    assert "epochs=5" in code
    code = code.replace("epochs=5", "epochs=1, limit_train=512")  # the same calls, a shorter training
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    acc, ops = re.fullmatch(r"accuracy (\S+) synaptic ops/sample (\S+)", r.stdout.strip().splitlines()[-1]).groups()
    assert 0.0 <= float(acc) <= 1.0 and float(ops) > 0
    assert (tmp_path / "runs/api/report/report.json").exists() and (tmp_path / "runs/api/report/report.html").exists()
