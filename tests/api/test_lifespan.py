"""The app's start-up, run through its lifespan (no server), on a SQLite file: an app that owns
its database freezes what start-up built out of the collector's sight (`gc.freeze()`); an app
handed its state (tests, embedding) leaves the process's collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.config import Settings
from tests.fixtures.databases import settings_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(f"sqlite+aiosqlite:///{tmp_path / 'blog.db'}")


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Start with nothing frozen, and leave nothing frozen for the tests after."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def test_an_app_that_owns_its_database_freezes_the_heap_after_start_up(
    settings: Settings, unfrozen: None
) -> None:
    """`create_app(settings)`: once its lifespan has started (engine, state, first admin), the
    objects alive are in the permanent generation, so a full collection no longer walks them."""
    app = create_app(settings)
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, frozen  # the app, its schemas, SQLAlchemy's metadata, ...
        assert isinstance(app.state.asyncblog, AppState)


async def test_an_app_given_its_state_does_not_freeze(settings: Settings, unfrozen: None) -> None:
    """`create_app(state=...)`: the caller owns the process (a test suite, an embedding app),
    so start-up neither collects nor freezes."""
    state = AppState.build(settings)
    try:
        app = create_app(state=state)
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() == 0
            assert app.state.asyncblog is state
    finally:
        await state.db.dispose()
