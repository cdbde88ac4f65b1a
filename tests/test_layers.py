"""The library's import layers, read from the source with ``ast`` (no module is imported).

api (the facade) -> catalog / rewards / zoo / pipelines; zoo -> rewards, pipelines; rewards -> nothing
of zoo or api. Only the CLI layer and the package facade import ``steer.api``; the test fixtures
(``tests/fixtures``) are never imported by the library.
"""
import ast
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
