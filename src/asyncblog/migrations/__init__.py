"""Alembic migrations (async `env.py`) and the functions that run them.

`upgrade()` / `downgrade()` are synchronous: Alembic's env runs its own event loop. From async code
call them through `asyncio.to_thread`.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL


def alembic_config(url: URL | str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "asyncblog:migrations")
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: URL | str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL | str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
