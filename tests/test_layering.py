"""Imports inside infodec run one way, from low layers to high ones.

    cache -> results, batching, compilation -> data, models -> policies, sharding -> decoding -> eval
          -> daemon, theory -> smc -> infodec (the curated API) -> studies

A module may import its own component (``infodec.daemon.*`` from ``infodec.daemon.*``) and components of
LOWER layers, never a component of its own layer or a higher one; ``data`` depends only on the cache. The
imports are read from the source with ``ast`` (function-level imports included, since a late import is
still a dependency), so the test needs no import side effects. It also rejects a private name
(``_name``) taken from another module, and import cycles between modules.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "infodec"

# Low to high. A component is ``infodec.<name>`` (a subpackage or a top-level module); ``infodec`` alone is
# the package's __init__, the curated API, which may import every library layer but never the studies.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(f"infodec.{c}" if c else "infodec" for c in layer)
    for layer in (
        {"cache"},
        {"results", "batching", "compilation"},
        {"data", "models"},
        {"policies", "sharding"},
        {"decoding"},
        {"eval"},
        {"daemon", "theory"},
        {"smc"},
        {""},
        {"studies"},
    )
)
# Components allowed fewer dependencies than their layer would give them.
ONLY = {"infodec.data": {"infodec.cache"}}


def layer_of(component: str) -> int:
    for level, members in enumerate(LAYERS):
        if component in members:
            return level
    raise KeyError(component)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def component(module: str) -> str:
    return ".".join(module.split(".")[:2])


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    is_package = modules()[importer].name == "__init__.py"
    base = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, source: str | None = None) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every infodec import in ``module`` (its file, or ``source``);
    ``from pkg import sub`` counts as importing ``pkg.sub`` when ``sub`` is a submodule."""
    tree = ast.parse(source if source is not None else modules()[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "infodec"]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            if source.split(".")[0] != "infodec":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((node.lineno, sub, []) if sub in modules() else (node.lineno, source, [alias.name]))
    return found


def wrong_way_imports(replaced: dict[str, str] | None = None) -> list[str]:
    """Every import against the layering; ``replaced`` maps module names to source used instead of the file."""
    problems = []
    for module in modules():
        own = component(module)
        for line, target, _ in imports(module, (replaced or {}).get(module)):
            other = component(target) if target != "infodec" else "infodec"
            if other == own and not (own == "infodec" and module != "infodec"):
                continue
            allowed = ONLY.get(own)
            ok = other in allowed if allowed is not None else layer_of(other) < layer_of(own)
            if not ok:
                problems.append(
                    f"{modules()[module].relative_to(ROOT)}:{line}: {module} imports {target} "
                    f"(layer {layer_of(other)}) from layer {layer_of(own)}"
                )
    return problems


def private_imports(paths) -> list[str]:
    """``from infodec.x import _name`` and ``x_module._name`` where the name belongs to another module."""
    problems = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("infodec")
                or isinstance(node, ast.ImportFrom)
                and node.level
            ):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        problems.append(f"{_shown(path)}:{node.lineno}: imports private {alias.name}")
                    aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                aliases |= {
                    alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name.startswith("infodec")
                }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                problems.append(f"{_shown(path)}:{node.lineno}: uses private {node.value.id}.{node.attr}")
    return problems


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def import_cycles() -> list[list[str]]:
    graph = {m: sorted({t for _, t, _ in imports(m) if t in modules() and t != m}) for m in modules()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    return cycles


def test_every_component_has_a_layer():
    unplaced = sorted({component(m) for m in modules()} - set().union(*LAYERS))
    assert not unplaced, f"add these to LAYERS in tests/test_layering.py: {unplaced}"


def test_imports_run_from_low_layers_to_high():
    problems = wrong_way_imports()
    assert not problems, "wrong-way imports:\n" + "\n".join(problems)


def test_no_private_name_is_imported_from_another_module():
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "experiments").glob("*.py")]
    problems = private_imports(paths)
    assert not problems, "\n".join(problems)


def test_no_import_cycles_between_modules():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from infodec.daemon import metrics\n", "imports infodec.daemon.metrics (layer 6) from layer 4"),
        ("def late():\n    import infodec\n", "imports infodec (layer 8) from layer 4"),
        ("from infodec.eval.stats import mean_se\n", "imports infodec.eval.stats (layer 5) from layer 4"),
    ],
)
def test_a_wrong_way_import_is_reported(source, expected):
    """The checker itself can fail: a decoding module importing DAEMON, the whole package (even inside a
    function) or the evaluation layer is caught."""
    problems = wrong_way_imports({"infodec.decoding.engine": source})
    assert any(p.startswith("infodec/decoding/engine.py") and expected in p for p in problems), problems


def test_a_private_import_is_reported(tmp_path):
    (tmp_path / "bad.py").write_text(
        "from infodec.decoding.engine import _TRACES\nfrom infodec.daemon import fitting\nfitting._hidden()\n"
    )
    problems = private_imports([tmp_path / "bad.py"])
    assert len(problems) == 2 and "_TRACES" in problems[0] and "fitting._hidden" in problems[1], problems
