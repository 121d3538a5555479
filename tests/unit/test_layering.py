"""Import contract of the slmkit package, checked over `ast` (stdlib only).

Every import counts: module level or inside a function, `import x`, `from x import y` (relative ones resolved;
`from pkg import name` where pkg.name is a module imports that module), and `importlib.import_module("slmkit...")`
with a literal string. Implicit imports of parent packages do not count.
"""

from __future__ import annotations

import ast
import shutil
from collections import deque
from pathlib import Path

import pytest

LAYERS = {
    "top": ("slmkit", "slmkit.cli", "slmkit.pipeline"),  # may import anything
    # each stage package with all its submodules: slmkit.data, slmkit.data.*, ...
    "stage": tuple(f"slmkit.{s}" for s in ("data", "synth", "train", "distill", "eval", "export", "serve")),
    # "shared": every other module under slmkit
}
RULES = {
    "A": "no import cycle among modules",
    "B": "a shared module imports no stage module and none of slmkit, slmkit.cli, slmkit.pipeline",
    "C": "a stage module never imports slmkit.cli or slmkit.pipeline",
    "D": "a stage imports another stage only through its package door slmkit.<stage>",
    "E": "no cycle between stage packages",
}
REPO = Path(__file__).resolve().parents[2]


def stage_of(mod: str) -> str | None:
    return next((s for s in LAYERS["stage"] if mod == s or mod.startswith(s + ".")), None)


def layer_of(mod: str) -> str:
    return "top" if mod in LAYERS["top"] else "stage" if stage_of(mod) else "shared"


def imports(root: Path) -> tuple[dict[str, Path], list[tuple[str, str, int, str]]]:
    """Modules of the package at `root` (name -> file) and its imports as (importer, file, line, imported)."""
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = (root.name, *f.relative_to(root).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    found = []
    for mod, f in mods.items():
        pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        rel = f.relative_to(root.parent).as_posix()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            ):
                targets = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            for t in dict.fromkeys(targets):
                if (t == root.name or t.startswith(root.name + ".")) and t != mod:
                    found.append((mod, rel, node.lineno, t))
    return mods, sorted(found, key=lambda x: (x[1], x[2], x[3]))


def _cycles(edges: dict[tuple[str, str], tuple[str, int, str]]) -> list[list[str]]:
    """One shortest cycle (a node list, first == last) per strongly connected component, in a stable order."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    out, done = [], set()
    for start in sorted(graph):
        if start not in done and (path := _path(graph, start, start)):
            done |= {n for n in graph if _path(graph, start, n) and _path(graph, n, start)}  # its component
            out.append(path)
    return out


def _path(graph: dict[str, list[str]], a: str, b: str) -> list[str] | None:
    """Shortest path of at least one edge from a to b (breadth first), or None."""
    prev, todo = {}, deque([a])
    while todo:
        n = todo.popleft()
        for m in graph.get(n, ()):
            if m not in prev:
                prev[m] = n
                if m == b:
                    path = [b]
                    while path[-1] != a or len(path) == 1:
                        path.append(prev[path[-1]])
                    return path[::-1]
                todo.append(m)
    return None


def _cycle_msg(rule: str, cycle: list[str], edges: dict) -> str:
    hops = [edges[a, b] for a, b in zip(cycle, cycle[1:])]
    rest = "; ".join(f"{f}:{line} imports {t}" for f, line, t in hops[1:])
    f, line, t = hops[0]
    return f"{f}:{line}: imports {t} -- Rule {rule} ({RULES[rule]}): {' -> '.join(cycle)}; {rest}"


def check(root: Path) -> list[str]:
    """Every violation of RULES in the package at `root`, one readable line each."""
    _, found = imports(root)
    bad, mod_edges, stage_edges = [], {}, {}
    for mod, f, line, t in found:
        mod_edges.setdefault((mod, t), (f, line, t))
        src, dst = layer_of(mod), layer_of(t)
        rule = None
        if src == "shared" and dst != "shared":
            rule = "B"
        elif src == "stage" and t in ("slmkit.cli", "slmkit.pipeline"):
            rule = "C"
        elif src == "stage" and dst == "stage" and stage_of(mod) != stage_of(t):
            stage_edges.setdefault((stage_of(mod), stage_of(t)), (f, line, t))
            if t != stage_of(t):
                rule = "D"
        if rule:
            bad.append(f"{f}:{line}: imports {t} -- Rule {rule} ({RULES[rule]})")
    bad += [_cycle_msg("A", c, mod_edges) for c in _cycles(mod_edges)]
    bad += [_cycle_msg("E", c, stage_edges) for c in _cycles(stage_edges)]
    return bad


def test_layers_hold():
    bad = check(REPO / "slmkit")
    assert bad == [], f"{len(bad)} import-contract violations:\n" + "\n".join(bad)


# The checker must be able to fail: plant one bad import in a copy of the tree, expect exactly its violation.


@pytest.fixture
def tree(tmp_path) -> Path:
    return Path(shutil.copytree(REPO / "slmkit", tmp_path / "slmkit", ignore=shutil.ignore_patterns("__pycache__")))


def plant(tree: Path, rel: str, stmt: str, in_function: bool = True) -> tuple[str, list[str]]:
    """Append `stmt` to slmkit/<rel> (inside a new function by default); its 'file:line' and the new violations."""
    before = set(check(tree))
    f = tree / rel
    text = f.read_text(encoding="utf-8").rstrip("\n") + "\n"
    text += f"\n\ndef _planted():\n    {stmt}\n" if in_function else f"\n{stmt}\n"
    f.write_text(text, encoding="utf-8")
    return f"slmkit/{rel}:{len(text.splitlines())}", [v for v in check(tree) if v not in before]


def first_file(tree: Path, stage: str) -> str:
    return sorted(tree.joinpath(stage).glob("*.py"))[0].relative_to(tree).as_posix()


def only(new: list[str], rule: str, expected: str) -> None:
    """`expected` is the one new violation of `rule`; others may only be the cycles the planted import closes."""
    assert [v for v in new if f"Rule {rule} " in v] == [v for v in new if v.startswith(expected)], new
    assert len([v for v in new if v.startswith(expected)]) == 1, new
    assert all(f"Rule {rule} " in v or "Rule A " in v for v in new), new


@pytest.mark.parametrize(
    "stmt, in_function",
    [
        ("from slmkit.pipeline import build", True),
        ("from slmkit.pipeline import build", False),  # module level too
        ("from . import pipeline", True),  # relative, and a submodule named in `from pkg import name`
        ("import importlib; importlib.import_module('slmkit.pipeline')", True),
    ],
)
def test_shared_importing_pipeline_is_caught(tree, stmt, in_function):
    where, new = plant(tree, "io.py", stmt, in_function)
    only(new, "B", f"{where}: imports slmkit.pipeline -- Rule B")


def test_shared_importing_a_stage_is_caught(tree):
    where, new = plant(tree, "errors.py", "import slmkit.serve")
    only(new, "B", f"{where}: imports slmkit.serve -- Rule B")


@pytest.mark.parametrize("stmt", ["from slmkit.cli import app", "from ..cli import app"])
def test_stage_importing_cli_is_caught(tree, stmt):
    where, new = plant(tree, first_file(tree, "eval"), stmt)
    only(new, "C", f"{where}: imports slmkit.cli -- Rule C")


def _stage_graph(tree: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    _, found = imports(tree)
    mods, stages = {}, {}
    for mod, _f, _line, t in found:
        mods.setdefault(mod, []).append(t)
        if stage_of(mod) and stage_of(t) and stage_of(mod) != stage_of(t):
            stages.setdefault(stage_of(mod), []).append(stage_of(t))
    return mods, stages


def test_stage_importing_another_stages_internals_is_caught(tree):
    # eval imports an internal module of a stage that cannot reach eval back, so no cycle is closed on the way.
    mods, stages = _stage_graph(tree)
    src = first_file(tree, "eval")
    src_mod = "slmkit." + src.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    others = [s for s in LAYERS["stage"] if s != "slmkit.eval" and not _path(stages, s, "slmkit.eval")]
    internals = [
        f"{s}.{f.stem}" for s in others for f in sorted(tree.joinpath(s[7:]).glob("*.py")) if f.stem != "__init__"
    ]
    target = next((m for m in internals if not _path(mods, m, src_mod)), None)
    if target is None:
        pytest.skip("every other stage's internals reach eval; no acyclic pair to plant in")
    where, new = plant(tree, src, f"from {target} import X")
    assert new == [f"{where}: imports {target} -- Rule D ({RULES['D']})"]


def test_module_cycle_is_caught(tree):
    plant(tree, "io.py", "from slmkit.errors import SlmError")  # io -> errors (whether or not it was there)
    where, new = plant(tree, "errors.py", "from slmkit.io import atomic_write")  # and back: a leaf closes a cycle
    assert len(new) == 1 and new[0].startswith(f"{where}: imports slmkit.io -- Rule A"), new
    assert "slmkit.errors -> slmkit.io -> slmkit.errors" in new[0]


def test_stage_cycle_is_caught(tree):
    # Two stages with no path between them import each other's doors: Rule D holds, the stage graph does not.
    _, stages = _stage_graph(tree)
    present = [s for s in LAYERS["stage"] if tree.joinpath(s.split(".")[1], "__init__.py").exists()]
    pairs = [(x, y) for x in present for y in present if x < y and not _path(stages, x, y) and not _path(stages, y, x)]
    if not pairs:
        pytest.skip("every pair of stages is already connected; no fresh pair to plant a stage cycle in")
    x, y = pairs[0]
    plant(tree, first_file(tree, x.split(".")[1]), f"import {y}")
    _, new = plant(tree, first_file(tree, y.split(".")[1]), f"import {x}")
    stage_new = [v for v in new if "Rule E " in v]
    assert len(stage_new) == 1 and f"{x} -> {y} -> {x}" in stage_new[0], new
    assert all("Rule A " in v for v in new if v not in stage_new), new
