"""The import rule of docs/DESIGN: node, registry and webapp never import each other.

Checked twice, independently: by import-linter with the contracts in
pyproject.toml, and by a small AST walk over every product module (which also
sees imports inside functions and ``importlib.import_module("...")``). Each
checker is first shown a tree that breaks the rule, so that a silent checker
cannot pass for a clean tree.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PARTS = ("node", "registry", "webapp")
CORE = "priv_network"
PRODUCT = (CORE, *PARTS, "migrations")
COMPOSITION_ROOT = "priv_network/server.py"
NO_SQL_IN = "webapp"
SQL_PACKAGES = ("sqlalchemy", "alembic", "asyncpg", "aiosqlite", "sqlite3", "psycopg", "psycopg2")


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root, with forward slashes
    line: int
    module: str  # absolute dotted name


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every module a file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    rel = path.relative_to(root).as_posix()
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(rel, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append(Import(rel, node.lineno, target))
            found.extend(Import(rel, node.lineno, f"{target}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            found.append(Import(rel, node.lineno, node.args[0].value))
    return found


def product_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PRODUCT if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py"))


def import_rule_violations(root: Path) -> list[str]:
    problems = []
    for path in product_files(root):
        rel = path.relative_to(root).as_posix()
        owner = rel.split("/")[0]
        for imp in imports_of(root, path):
            top = imp.module.split(".")[0]
            where = f"{imp.file}:{imp.line} imports {imp.module}"
            if owner in PARTS and top in PARTS and top != owner:
                problems.append(f"{where}: the parts never import each other")
            if owner == CORE and top in PARTS and rel != COMPOSITION_ROOT:
                problems.append(f"{where}: only {COMPOSITION_ROOT} may import the parts")
            if owner == NO_SQL_IN and top in SQL_PACKAGES:
                problems.append(f"{where}: the web app does no SQL")
    return problems


def create_all_calls(root: Path) -> list[str]:
    found = []
    for path in product_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            hit = (
                (isinstance(node, ast.Attribute) and node.attr == "create_all")
                or (isinstance(node, ast.Name) and node.id == "create_all")
                or (isinstance(node, ast.alias) and node.name.split(".")[-1] == "create_all")
                or (isinstance(node, ast.Constant) and node.value == "create_all")
            )
            if hit:
                found.append(f"{path.relative_to(root).as_posix()}:{getattr(node, 'lineno', '?')}")
    return found


def write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    """A miniature product that breaks every rule once, in the ways code actually does."""
    root = tmp_path / "broken"
    for pkg in PRODUCT:
        write(root, f"{pkg}/__init__.py")
    write(root, "node/service.py", "from registry.service import Registry\n")
    write(root, "registry/api.py", "def lazy():\n    import webapp.views  # dodging a cycle\n")
    write(root, "webapp/views.py", "from ..node import store\n")
    write(root, "webapp/pages.py", "import sqlalchemy as sa\n")
    write(root, "webapp/more.py", "import importlib\nimportlib.import_module('registry.search')\n")
    write(root, "priv_network/wire.py", "from node.models import items\n")
    write(root, "priv_network/server.py", "import node\nimport registry\nimport webapp\n")
    write(root, "migrations/env.py", "from node.models import metadata\nmetadata.create_all(bind=None)\n")
    write(root, "node/ok.py", "from . import service\nfrom .service import Registry\nfrom priv_network import wire\n")
    return root


def test_ast_checker_sees_every_kind_of_violation(broken_tree: Path) -> None:
    problems = import_rule_violations(broken_tree)
    text = "\n".join(problems)
    assert "node/service.py:1 imports registry.service" in text
    assert "registry/api.py:2 imports webapp.views" in text
    assert "webapp/views.py:1 imports node" in text
    assert "webapp/pages.py:1 imports sqlalchemy: the web app does no SQL" in text
    assert "webapp/more.py:2 imports registry.search" in text
    assert "priv_network/wire.py:1 imports node.models: only priv_network/server.py" in text
    assert not [p for p in problems if p.startswith(("priv_network/server.py", "node/ok.py", "migrations/"))]
    assert create_all_calls(broken_tree) == ["migrations/env.py:2"]


def test_parts_never_import_each_other_and_the_core_only_in_the_composition_root() -> None:
    assert import_rule_violations(REPO) == []


def test_the_composition_root_does_wire_the_parts() -> None:
    """Guards the checker itself: if this finds nothing, the walk is broken, not the code clean."""
    imported = {i.module.split(".")[0] for i in imports_of(REPO, REPO / COMPOSITION_ROOT)}
    assert set(PARTS) <= imported
    cli_imports = {i.module for i in imports_of(REPO, REPO / "priv_network" / "cli.py")}
    assert not {m for m in cli_imports if m.split(".")[0] in PARTS}
    assert len(product_files(REPO)) > 20


def test_no_create_all_in_product_code() -> None:
    assert create_all_calls(REPO) == [], "the schema belongs to alembic migrations"


# -- import-linter, with the contracts from pyproject.toml ---------------------------


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def contracts() -> list[dict[str, Any]]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["tool"]["importlinter"]["contracts"])


def lintable_tree(root: Path) -> None:
    """The modules pyproject's contracts name, clean."""
    for pkg in (CORE, *PARTS):
        write(root, f"{pkg}/__init__.py")
    for contract in contracts():
        for module in contract.get("source_modules", []):
            write(root, module.replace(".", "/") + ".py")


def test_pyproject_has_both_contracts() -> None:
    kinds = {(c["type"], tuple(c.get("modules", c.get("forbidden_modules", [])))) for c in contracts()}
    assert ("independence", PARTS) in kinds
    assert ("forbidden", PARTS) in kinds


def test_import_linter_catches_a_broken_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    lintable_tree(root)
    clean = lint_imports(root, pythonpath=root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    write(root, "registry/leak.py", "import webapp\n")
    write(root, "priv_network/wire.py", "from node import models\n")
    write(root, "node/models.py")
    broken = lint_imports(root, pythonpath=root)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "BROKEN" in broken.stdout
    assert "registry.leak -> webapp" in broken.stdout
    assert "priv_network.wire -> node" in broken.stdout


def test_import_linter_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
