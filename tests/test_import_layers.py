"""Imports run one way, floor by floor: bot/ (plumbing) ← policies/ ← handlers/ ← handlers/wiring/
(the application's assembly and the `moko` command). Every module's imports are read with ast,
those inside functions included, so a lazy import cannot hide an upward one."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "policies", "handlers")
WIRING = "handlers.wiring"

# Imports under `if TYPE_CHECKING:` are never run; each one allowed to point upward is listed
# here with its reason, so that a new one is a decision and not an accident.
TYPE_CHECKING_ALLOWED = {
    # Services carries the policy engine the wiring installs; bot/ names its type for the
    # annotation only and never loads policy code.
    ("bot.context", "policies.engine"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int
    type_checking: bool
    # `from a import b` is read twice: as a, and as a.b in case b is a submodule.
    name_as_module: bool = False


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, module: str | None = None) -> list[Import]:
    """The imports in the file at path, read as the module named (by default, from its path)."""
    module = module or module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno, type_checking) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.append(Import(module, target, node.lineno, type_checking))
            # `from handlers import wiring` names a submodule, not a function of handlers.
            found.extend(Import(module, f"{target}.{alias.name}", node.lineno, type_checking, True)
                         for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def all_imports() -> list[Import]:
    return [found for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            for found in imports_of(path)]


def floor(module: str) -> int | None:
    """0 plumbing, 1 policies, 2 handlers, 3 the wiring; None for what is not Moko's."""
    if module == WIRING or module.startswith(WIRING + "."):
        return 3
    top = module.split(".")[0]
    return {"bot": 0, "policies": 1, "handlers": 2}.get(top)


def upward(found: Import) -> bool:
    here, there = floor(found.module), floor(found.target)
    return here is not None and there is not None and there > here


def test_the_floors_are_found_where_the_code_is() -> None:
    modules = {found.module for found in all_imports()}
    # A walk that found nothing would pass every rule below.
    assert {"bot.worker", "bot.store.sqlite", "policies.engine", "handlers.push",
            "handlers.wiring.cli", "handlers.wiring.app"} <= modules
    assert floor("handlers.wiring.cli") == 3 and floor("handlers.comments") == 2
    assert floor("policies.engine") == 1 and floor("bot.store.base") == 0 and floor("gidgethub") is None


def test_no_module_imports_a_floor_above_its_own() -> None:
    found_upward = [found for found in all_imports() if upward(found) and not found.type_checking]
    reported = {(found.module, found.line, found.target) for found in found_upward}
    wrong = [f"{found.module} (line {found.line}) imports {found.target}" for found in found_upward
             # `from policies.apply import x` is one finding, not two
             if not (found.name_as_module
                     and (found.module, found.line, found.target.rsplit(".", 1)[0]) in reported)]
    assert wrong == []


def test_upward_imports_for_annotations_only_are_the_listed_ones() -> None:
    seen = {(found.module, found.target) for found in all_imports()
            if upward(found) and found.type_checking and not found.name_as_module}
    # A pair listed but no longer seen is stale; one seen but not listed needs its reason.
    assert seen == TYPE_CHECKING_ALLOWED


def test_lazy_relative_and_annotation_imports_are_told_apart(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    import policies.engine\n"
                      "def f():\n    from handlers import wiring\n    from . import worker\n")
    found = {(item.target, item.type_checking) for item in imports_of(source, "bot.probe")}
    assert {("policies.engine", True), ("handlers.wiring", False), ("bot.worker", False)} <= found
    assert [item.target for item in imports_of(source, "bot.probe") if upward(item)] == [
        "policies.engine", "handlers", "handlers.wiring"]
