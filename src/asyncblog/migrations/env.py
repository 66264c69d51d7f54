"""Alembic environment, async.

The URL comes from the settings (DATABASE_URL) unless the caller put one in
`config.attributes["url"]`. Migrations run on a connection of their own, so that on SQLite foreign
keys can be switched off while batch mode copies a table (with them on, dropping the old `users`
would cascade to `posts`).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from asyncblog.config import load_settings
from asyncblog.db.engine import create_engine
from asyncblog.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # Must happen outside a transaction; this connection is thrown away afterwards.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    settings = load_settings()
    engine = create_engine(settings, config.attributes.get("url"), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _run_offline() -> None:
    url = config.attributes.get("url") or load_settings().database_url
    context.configure(url=str(url), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
