"""The core is pure: no storage, no broker, no CLI, no ledger layer (checked on the AST)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import streamledger.core

CORE_DIR = Path(streamledger.core.__file__).parent
CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))

FORBIDDEN = (
    "sqlite3",
    "confluent_kafka",
    "streamledger.backends",
    "streamledger.cli",
    "streamledger.ledger",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE_DIR.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, package: str | None = None) -> list[str]:
    """Every module name imported by ``path``, relative imports resolved against
    ``package`` (default: the package the file sits in)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = _module_name(path)
        if path.name != "__init__.py":
            package = package.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in (
                "import_module",
                "__import__",
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_core_modules_found() -> None:
    names = {p.stem for p in CORE_MODULES}
    assert {"entry", "merkle", "note", "checkpoint", "verify"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(path: Path) -> None:
    importlib.import_module(_module_name(path))  # it imports cleanly on its own
    bad = sorted({name for name in _imported(path) if _forbidden(name)})
    assert not bad, f"{_module_name(path)} imports {bad}: streamledger.core must stay pure"


def test_the_checker_catches_violations(tmp_path: Path) -> None:
    assert "streamledger.core.entry" in _imported(CORE_DIR / "verify.py")
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import sqlite3\n"
        "from confluent_kafka import Producer\n"
        "from streamledger.backends.memory import MemoryBackend\n"
        "from ..ledger import Ledger\n"
        "from .. import cli\n"
        "importlib.import_module('streamledger.backends.sqlite')\n",
        encoding="utf-8",
    )
    bad = {n for n in _imported(fake, "streamledger.core") if _forbidden(n)}
    assert {
        "sqlite3",
        "confluent_kafka",
        "streamledger.backends.memory",
        "streamledger.ledger",
        "streamledger.cli",
        "streamledger.backends.sqlite",
    } <= bad
    assert not _forbidden("streamledger.core.entry")
    assert not _forbidden("streamledger.ledgerish")
