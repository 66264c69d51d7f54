"""The layers' one-way imports (README, "How it is built"), checked on the source: `api/`
reaches the database only through services (no SQLAlchemy, no repository), and only `db/`
imports a database driver."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "asyncblog"
DRIVERS = ("asyncpg", "aiosqlite", "aiomysql", "pymysql", "sqlite3")


def imported(path: Path) -> set[str]:
    """Every module a file imports (absolute names), wherever in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: Path) -> list[Path]:
    found = sorted(folder.rglob("*.py"))
    assert found, folder
    return found


@pytest.mark.parametrize("path", modules(PACKAGE / "api"), ids=lambda p: p.name)
def test_api_reaches_the_database_only_through_services(path: Path) -> None:
    wrong = {
        name
        for name in imported(path)
        if name.split(".")[0] == "sqlalchemy" or name.startswith("asyncblog.repositories")
    }
    assert wrong == set(), f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_only_db_imports_a_driver() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imported(path) if name.split(".")[0] in DRIVERS
        )
        for path in modules(PACKAGE)
        if path.relative_to(PACKAGE).parts[0] != "db"
    }
    assert {path: names for path, names in offenders.items() if names} == {}
