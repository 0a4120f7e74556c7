"""The layering of the design card, held by a test (read from the source, nothing imported).

(a) no import cycles among our modules, counting imports anywhere in a file (inside
    functions too), with the rules of the shared cycles hook: an edge goes to the deepest
    module an import names; a module's edges to its own parent packages do not count;
(b) no upward imports: spikebridge.base imports nothing of ours; hardware never imports
    torch, models, exporters, toolchain or benchmarks (lava only in the worker file, which
    runs on the Lava interpreter); models never imports exporters, hardware, toolchain or
    benchmarks; exporters never imports toolchain or benchmarks;
(c) no bare top-level imports of our packages (``import models``, ``from hardware.x import
    y``: everything is ``spikebridge.*``) in any .py file of the repository, tests,
    benchmarks and scripts included, nor in code strings run with ``python -c``.

Module names: spikebridge/*.py and spikebridge/base/** as themselves; the design card's
folders models/, exporters/, hardware/, toolchain/, benchmarks/ as spikebridge.<folder>.*
(spikebridge/ links to them).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "exporters", "hardware", "toolchain", "benchmarks")
# not ours: version control, environments (any name holding site-packages), build outputs
SKIP_DIRS = {".git", ".venv", ".venv-lava", "venv", ".tox", ".eggs", "build", "dist", "runs", "node_modules",
             "__pycache__", "site-packages"}

# (layer prefix, forbidden prefixes of ours, forbidden third-party top-level names, exempt files)
RULES = [
    ("spikebridge.base", ("spikebridge.models", "spikebridge.exporters", "spikebridge.hardware",
                          "spikebridge.toolchain", "spikebridge.benchmarks"), (), ()),
    ("spikebridge.hardware", ("spikebridge.models", "spikebridge.exporters", "spikebridge.toolchain",
                              "spikebridge.benchmarks"), ("torch", "lava"),
     ("spikebridge.hardware.lava.worker",)),  # runs on the Lava interpreter, imports lava by design
    ("spikebridge.models", ("spikebridge.exporters", "spikebridge.hardware", "spikebridge.toolchain",
                            "spikebridge.benchmarks"), (), ()),
    ("spikebridge.exporters", ("spikebridge.toolchain", "spikebridge.benchmarks"), (), ()),
]


# ----------------------------------------------------------------------------- the analysis


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file for every module of ours under ``root`` (a repository checkout)."""
    mods = {}
    for p in sorted((root / "spikebridge").glob("*.py")):
        mods["spikebridge." + p.stem] = p
    for p in sorted((root / "spikebridge" / "base").rglob("*.py")):
        mods[".".join(("spikebridge",) + p.relative_to(root / "spikebridge").with_suffix("").parts)] = p
    for folder in FOLDERS:
        for p in sorted((root / folder).rglob("*.py")):
            mods[".".join(("spikebridge",) + p.relative_to(root).with_suffix("").parts)] = p
    return {k.removesuffix(".__init__"): p for k, p in mods.items()}


def imports(mod: str, path: Path) -> list[tuple[str, int]]:
    """Every absolute module name one file imports (relative imports resolved), with its line."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - n.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from a import b` may name module a.b or attribute b of a: record a.b, resolved below
            out += [(f"{base}.{a.name}" if a.name != "*" else base, n.lineno) for a in n.names]
        elif isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
    return out


def _resolve(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name if name and name != "spikebridge" else None


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        for name, _ in imports(m, p):
            r = _resolve(name, mods)
            if r and r != m and not m.startswith(r + "."):  # a package's own __init__ is no cycle edge
                edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter; counter += 1
        stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter; counter += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def upward_imports(root: Path) -> list[str]:
    mods = modules(root)
    bad = []
    for m, p in mods.items():
        for layer, ours, third, exempt in RULES:
            if not (m == layer or m.startswith(layer + ".")) or m in exempt:
                continue
            for name, line in imports(m, p):
                top = name.split(".")[0]
                target = _resolve(name, mods) or ""
                if top in third:
                    bad.append(f"{p.relative_to(root)}:{line}: {layer} imports {name}")
                elif any(target == f or target.startswith(f + ".") for f in ours):
                    bad.append(f"{p.relative_to(root)}:{line}: {layer} imports {target}")
    return list(dict.fromkeys(bad))


_BARE = re.compile(r"(?:^|[;\n])[ \t]*(?:from|import)[ \t]+(" + "|".join(FOLDERS) + r")(?:[ \t.]|$)", re.M)


def python_files(root: Path):
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in SKIP_DIRS or part.startswith(".venv") for part in rel):
            continue
        if rel[0] == "spikebridge" and len(rel) > 1 and rel[1] in FOLDERS:
            continue  # the links to the folders: same files, counted once
        yield p


def bare_imports(root: Path) -> list[str]:
    """Imports of ``models``/``exporters``/``hardware``/``toolchain``/``benchmarks`` as top-level
    packages, in import statements and in string constants holding code (``python -c``)."""
    bad = []
    for p in python_files(root):
        tree = ast.parse(p.read_text(), str(p))
        for n in ast.walk(tree):
            names = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and not n.level:
                names = [n.module or ""]
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                names = [m.group(1) for m in _BARE.finditer(n.value)]
            for name in names:
                if name.split(".")[0] in FOLDERS:
                    bad.append(f"{p.relative_to(root)}:{n.lineno}: bare import of {name!r} "
                               f"(use spikebridge.{name})")
    return bad


# ----------------------------------------------------------------------------- the repository


def test_no_import_cycles():
    found = cycles(import_graph(REPO))
    assert not found, "import cycles (counting imports inside functions):\n" + "\n".join(
        f"{len(c)}: {' <-> '.join(c)}" for c in found)


def test_no_upward_imports():
    bad = upward_imports(REPO)
    assert not bad, "imports against the layering (design card):\n" + "\n".join(bad)


def test_no_bare_top_level_imports():
    bad = bare_imports(REPO)
    assert not bad, "\n".join(bad)


def test_the_analysis_sees_the_whole_project():
    mods = modules(REPO)
    for m in ("spikebridge.base.errors", "spikebridge.models", "spikebridge.exporters.nir_export",
              "spikebridge.hardware.loihi.plan", "spikebridge.hardware.lava.worker",
              "spikebridge.toolchain.cli", "spikebridge.benchmarks"):
        assert m in mods, m
    edges = import_graph(REPO)
    # relative and absolute imports both resolve to the module they name
    assert "spikebridge.hardware.graph" in edges["spikebridge.hardware.eventsim.counts"]
    assert "spikebridge.hardware.loihi.plan" in edges["spikebridge.hardware.loihi.fixedpoint"]


# ----------------------------------------------------------------------------- the checks can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for d in ("spikebridge", "spikebridge/base") + FOLDERS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / "__init__.py").touch()
    return tmp_path


def test_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _tree(tmp_path, {
        "hardware/a.py": "from spikebridge.hardware import b\n",
        "hardware/b.py": "def f():\n    from .c import g\n",
        "hardware/c.py": "def g():\n    import spikebridge.hardware.a as a\n",
        "hardware/d.py": "from spikebridge.hardware.a import x\n",  # into the cycle, not part of it
    })
    assert cycles(import_graph(root)) == [["spikebridge.hardware.a", "spikebridge.hardware.b",
                                           "spikebridge.hardware.c"]]


def test_package_init_importing_its_submodules_is_no_cycle(tmp_path):
    root = _tree(tmp_path, {
        "hardware/lava/__init__.py": "from spikebridge.hardware.lava.plan import lower\n",
        "hardware/lava/plan.py": "from spikebridge.base.errors import E\n",
    })
    assert cycles(import_graph(root)) == []


@pytest.mark.parametrize("rel,text,what", [
    ("hardware/x.py", "def f():\n    import torch\n", "imports torch"),
    ("hardware/x.py", "from spikebridge.models.checkpoint import load\n", "spikebridge.models"),
    ("hardware/x.py", "import lava.magma\n", "imports lava"),
    ("models/x.py", "from spikebridge.exporters import nir_export\n", "spikebridge.exporters"),
    ("models/x.py", "from ..hardware import graph\n", "spikebridge.hardware"),
    ("exporters/x.py", "from spikebridge.toolchain.cli import main\n", "spikebridge.toolchain"),
    ("spikebridge/base/x.py", "from spikebridge.hardware.graph import analyse\n", "spikebridge.hardware"),
])
def test_upward_import_is_found(tmp_path, rel, text, what):
    bad = upward_imports(_tree(tmp_path, {rel: text}))
    assert len(bad) == 1 and what in bad[0], bad


def test_allowed_imports_pass(tmp_path):
    root = _tree(tmp_path, {
        "hardware/lava/worker.py": "import lava.magma.core\n",
        "exporters/x.py": "import torch\nfrom spikebridge.models import checkpoint\n",
        "toolchain/x.py": "from spikebridge.hardware import graph\nfrom spikebridge.benchmarks import b\n",
        "models/x.py": "import torch\nfrom spikebridge.base.errors import InputError\n",
    })
    assert upward_imports(root) == []


# "@" keeps these samples from being bare imports of this file; it is removed before the check
@pytest.mark.parametrize("text", [
    "import @models\n",
    "from @hardware.graph import analyse\n",
    "import @toolchain.cli as cli\n",
    "CODE = 'import sys; from @exporters.nir_export import to_nir'\n",
    "CODE = '''\nimport @benchmarks.bench_train\n'''\n",
])
def test_bare_import_is_found(tmp_path, text):
    bad = bare_imports(_tree(tmp_path, {"tests/test_x.py": text.replace("@", "")}))
    assert len(bad) == 1, bad


def test_qualified_and_unrelated_imports_pass(tmp_path):
    root = _tree(tmp_path, {"tests/test_x.py": "import spikebridge.models\nfrom spikebridge.hardware import graph\n"
                                                 "import modelscope_like\nfrom hardwarex import y\n"
                                                 "TEXT = 'the models import weights'\n"})
    assert bare_imports(root) == []
