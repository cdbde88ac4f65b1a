"""The library's import layers, read from the source with ``ast`` (no module is imported, but in one test).

api (the facade) -> catalog / rewards / zoo / pipelines; zoo -> rewards, pipelines; rewards -> nothing
of zoo or api. Only the CLI layer and the package facade import ``steer.api``; the test fixtures
(``tests/fixtures``) are never imported by the library.

No import cycles: the graph of ``steer`` modules has no strongly connected component of two or more
modules. Every import counts, lazy ones inside functions included (and those under ``if TYPE_CHECKING``):
a lazy import that closes a cycle works only because of when it runs, and still ties two layers
together. Each module also imports cleanly when it is the first ``steer`` module imported
(``test_every_module_imports_alone``, that one test, in a subprocess).
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

STEER = Path(__file__).resolve().parents[1] / "steer"
CLI_LAYER = {"steer", "steer.__main__", "steer.cli", "steer.run", "steer.finetune.command"}


def module_name(path: Path) -> str:
    parts = path.relative_to(STEER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(STEER.rglob("*.py"))}


def imports_of(source: str, name: str, is_package: bool = False, known=frozenset()) -> set[str]:
    """Every module that an ``import``, ``from ... import`` or ``importlib.import_module("...")`` in
    ``source`` (module ``name``) names, at any depth (inside functions too), as absolute names.
    ``from pkg import x`` names ``pkg.x`` when that is a module in ``known``, else ``pkg`` itself."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: strip level - 1 trailing parts of the package
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def imports(name: str) -> set[str]:
    path = MODULES[name]
    return imports_of(path.read_text(), name, path.name == "__init__.py", frozenset(MODULES))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(importer_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {m}" for name in MODULES if within(name, importer_prefix)
            for m in sorted(imports(name)) if any(within(m, f) for f in forbidden)]


def test_the_parser_sees_every_kind_of_import():
    source = ("import steer.zoo.shapes\nfrom . import base\nfrom ..api import generate\n"
              "def f():\n    from steer import api, chain\n    import importlib\n"
              "    importlib.import_module('steer.zoo.quiet')\n")
    found = imports_of(source, "steer.rewards.x", known=frozenset({"steer.api", "steer.chain", "steer.rewards.base"}))
    assert found == {"steer.zoo.shapes", "steer.rewards.base", "steer.api", "steer.chain", "importlib", "steer.zoo.quiet"}
    assert imports_of("from steer import generate", "steer.zoo.x", known=frozenset({"steer.api"})) == {"steer"}
    assert len(MODULES) > 40 and "steer.rewards.registry" in MODULES and "steer.zoo.shapes.evaluate" in MODULES


def test_rewards_import_nothing_of_zoo_or_api():
    assert violations("steer.rewards", ("steer.zoo", "steer.api")) == []


def test_zoo_does_not_import_the_facade():
    assert violations("steer.zoo", ("steer.api",)) == []


def test_only_the_cli_layer_imports_the_facade():
    """``steer.api`` by name, or the package facade itself (``import steer`` / ``from steer import generate``);
    the rest of the library imports steer.catalog / steer.rewards / steer.pipelines instead."""
    bad = [f"{name} imports {m}" for name in sorted(set(MODULES) - CLI_LAYER)
           for m in sorted(imports(name)) if within(m, "steer.api") or m == "steer"]
    assert bad == []


def test_the_library_does_not_import_the_test_fixtures():
    bad = [f"{name} imports {m}" for name in MODULES for m in imports(name) if m.split(".")[0] in ("tests", "fixtures")]
    assert bad == []
    assert not {"steer.zoo.tiny", "steer.rewards.tiny", "steer.zoo.grey"} & set(MODULES)  # now in tests/fixtures


def import_graph() -> dict[str, set[str]]:
    """``steer`` module -> the ``steer`` modules it imports (``imports``: every import at any depth, lazy
    ones inside functions included; a module's own name and names outside ``steer`` left out)."""
    return {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), each
    sorted; a module importing itself is not counted (``import_graph`` drops such edges)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_cycle_finder():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    chain = {str(i): {str(i + 1)} for i in range(5000)}  # deep: no recursion limit
    chain["5000"] = {"0"}
    assert cycles(chain) == [sorted(chain)]


def test_no_import_cycles():
    """No two ``steer`` modules import each other, directly or through others. Lazy imports (inside a
    function) count: one that closes a cycle works only by luck of the import order and still ties the two
    layers together; move the shared piece to the lower module instead. A package importing its own
    submodules is an ordinary edge (``steer.pipelines`` -> ``steer.pipelines.loading``); the implicit
    import of a submodule's parent package is not an edge."""
    graph = import_graph()
    found = [f"cycle of {', '.join(c)}: " + "; ".join(f"{a} imports {', '.join(sorted(graph[a] & set(c)))}" for a in c)
             for c in cycles(graph)]
    assert found == []


IMPORT_ALONE = r"""
import importlib, sys
top, failed = sys.argv[1], []
for name in sys.argv[2:]:
    for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001 - report every module
        failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def import_alone(root, top: str, names) -> subprocess.CompletedProcess:
    """Run ``IMPORT_ALONE`` on ``names`` (modules of the package ``top`` found in ``root``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", IMPORT_ALONE, top, *names], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)


def test_importing_alone_finds_an_order_dependent_cycle(tmp_path):
    """``a`` imported first fails (``b`` asks for ``a.A`` before it exists); ``b`` first works. Imported in
    the order b, a in one interpreter without clearing ``sys.modules`` both would pass."""
    (tmp_path / "cyc").mkdir()
    (tmp_path / "cyc" / "__init__.py").write_text("")
    (tmp_path / "cyc" / "a.py").write_text("import cyc.b\nA = 1\n")
    (tmp_path / "cyc" / "b.py").write_text("from cyc.a import A\nB = A\n")
    done = import_alone(tmp_path, "cyc", ["cyc.b", "cyc.a"])
    assert done.returncode == 1 and done.stdout.splitlines()[0].startswith("cyc.a: ImportError")
    assert "cyc.b" not in done.stdout


def test_every_module_imports_alone():
    """Each ``steer`` module imported first, with no ``steer`` module loaded before it (a partially
    initialized module in a cycle fails only in some orders). One interpreter for all: every ``steer*``
    entry of ``sys.modules`` is removed before each import; third-party modules (torch, diffusers) stay
    loaded, so this takes seconds, not one interpreter start per module."""
    done = import_alone(STEER.parent, "steer", sorted(MODULES))
    assert done.returncode == 0, f"modules that fail to import first:\n{done.stdout}{done.stderr[-2000:]}"
