"""The `asyncblog` command line: serve, migrate, create-admin, seed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from asyncblog.config import Settings, SettingsError, load_settings
from asyncblog.errors import Unavailable

T = TypeVar("T")

cli = typer.Typer(
    name="asyncblog", help="Users, posts and money over async SQLAlchemy.", no_args_is_help=True
)
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]asyncblog:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _run_db(what: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run a database command; a database that is unreachable or not migrated is one line
    (exit 1), not a traceback."""
    try:
        return asyncio.run(coro)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        hint = (
            " (run `asyncblog migrate` first?)"
            if "no such table" in str(exc).lower()
            or ("doesn't exist" in str(exc).lower() or "does not exist" in str(exc).lower())
            else ""
        )
        _fail(f"{what} failed: {_one_line(exc)}{hint}", 1)
    except Unavailable as exc:  # translated by the data path; the driver's error is its cause
        _fail(f"{what} failed: {exc.detail}: {_one_line(exc.__cause__ or exc)}", 1)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(str(exc))


def _migrate(settings: Settings, revision: str = "head") -> None:
    from asyncblog import migrations

    path = settings.sqlite_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        migrations.upgrade(settings.url, revision)
    except Exception as exc:  # a database that cannot be reached is one line, not a traceback
        _fail(f"migration failed: {_one_line(exc)}", 1)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(envvar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
    workers: Annotated[int, typer.Option(min=1, envvar="WEB_CONCURRENCY")] = 1,
    migrate: Annotated[
        bool | None,
        typer.Option(help="Upgrade the schema first (default: yes for SQLite, no otherwise)."),
    ] = None,
) -> None:
    """Serve the API with uvicorn (uvloop, httptools)."""
    from asyncblog.log import configure_logging, console_wanted

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    with _metrics_for(settings, host, workers):  # first: before prometheus-client is imported
        if migrate if migrate is not None else settings.dialect == "sqlite":
            _migrate(settings)
        _check_connection_budget(settings, workers)
        if workers > 1 and settings.throttle_store == "auto" and not settings.redis_url:
            # the workers share the login and registration counts through the database
            os.environ["THROTTLE_STORE"] = "database"
        try:
            settings.resolved_secret_key()  # create the key file once, before the workers start
        except (OSError, ValueError) as exc:
            _fail(f"SECRET_KEY: {exc}")
        if console_wanted(settings.log_format):  # a person is watching: where to go from here
            shown = f"[{host}]" if ":" in host else host
            say = partial(err.print, markup=False, highlight=False, soft_wrap=True)
            say(f"asyncblog: the interactive docs are at http://{shown}:{port}/docs")
            if not settings.first_admin_username:
                say(
                    "create the first admin with `asyncblog create-admin` (it asks for the name, "
                    "email and password), or set FIRST_ADMIN_USERNAME, FIRST_ADMIN_EMAIL and "
                    "FIRST_ADMIN_PASSWORD"
                )
        _serve(host, port, workers, settings.shutdown_timeout)


def _check_connection_budget(settings: Settings, workers: int) -> None:
    """Refuse to start workers whose pools together could open more connections than the
    database server allows: under load the last ones would be refused, as 503s. An unreachable
    database is not a reason to refuse (the service answers 503 until it is back)."""
    from asyncblog.db.engine import connection_limit
    from asyncblog.db.errors import DATABASE_ERRORS

    try:
        found = asyncio.run(connection_limit(settings))
    except DATABASE_ERRORS as exc:  # the service starts anyway and answers 503 until it is back
        err.print(
            f"asyncblog: could not read max_connections ({_one_line(exc)}); not checked",
            markup=False,
            highlight=False,
        )
        return
    if found is None:
        return
    allowed, how = found
    per_worker = settings.pool_size + settings.pool_max_overflow
    if workers * per_worker > allowed:
        _fail(
            f"{workers} workers x {per_worker} connections (POOL_SIZE {settings.pool_size} + "
            f"POOL_MAX_OVERFLOW {settings.pool_max_overflow}) = {workers * per_worker}, more "
            f"than the database allows ({allowed}: {how}); lower them, or put PgBouncer in "
            "front (PGBOUNCER=true)"
        )


def _serve(host: str, port: int, workers: int, shutdown_timeout: int) -> None:
    import uvicorn

    uvicorn.run(
        "asyncblog.api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=shutdown_timeout,
    )


@contextmanager
def _metrics_for(settings: Settings, host: str, workers: int) -> Iterator[None]:
    """With METRICS=true: prometheus-client's multiprocess mode for several workers, in
    PROMETHEUS_MULTIPROC_DIR or else a directory of this run's own (removed at the end), which
    the workers inherit. A given directory is emptied first: a previous run's files would be
    summed into this one's numbers. Entered before anything imports prometheus-client, which
    opens its files at import. With METRICS_PORT: the numbers served on that port by this
    process (every worker's summed), not on the API's."""
    if not settings.metrics:
        yield
        return
    own_dir = None
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        _emptied(Path(given))
    elif workers > 1:
        own_dir = tempfile.mkdtemp(prefix="asyncblog-metrics-")
        os.environ[MULTIPROC_DIR] = own_dir
    try:
        if settings.metrics_port is not None:
            from asyncblog import metrics

            metrics.serve_on_port(settings.metrics_port, host)
        yield
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _emptied(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        _fail(f"PROMETHEUS_MULTIPROC_DIR: {exc}")


@cli.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the database schema (default: to the newest revision)."""
    settings = _settings()
    _migrate(settings, revision)
    err.print(f"database at {settings.url.render_as_string()} is at revision {revision}")


@cli.command()
def downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Downgrade the database schema to REVISION (`base` removes every table)."""
    from asyncblog import migrations

    settings = _settings()
    try:
        migrations.downgrade(settings.url, revision)
    except Exception as exc:
        _fail(f"downgrade failed: {_one_line(exc)}", 1)


@cli.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(prompt=True)],
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
) -> None:
    """Create an admin user."""
    from pydantic import ValidationError

    from asyncblog.errors import Conflict
    from asyncblog.schemas import UserCreate

    settings = _settings()
    try:
        data = UserCreate(username=username, email=email, password=password)
    except ValidationError as exc:
        _fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors()))

    async def run() -> int:
        from asyncblog.api.state import AppState
        from asyncblog.services.users import Users

        state = AppState.build(settings)
        try:
            view = await Users(state.db, state.hasher).register(data, is_admin=True)
            user_id: int = json.loads(view.body)["id"]
            return user_id
        finally:
            await state.db.dispose()

    try:
        user_id = _run_db("create-admin", run())
    except Conflict as exc:
        _fail(exc.detail, 1)
    err.print(f"created admin {data.username!r} with id {user_id}")


@cli.command()
def seed(
    users: Annotated[int, typer.Option("--users", min=0)] = 100,
    posts_per_user: Annotated[int, typer.Option("--posts-per-user", min=0)] = 3,
    password: Annotated[str, typer.Option(help="The password of every seeded user.")] = (
        "password123"
    ),
    batch: Annotated[int, typer.Option(min=1, max=50_000)] = 5000,
) -> None:
    """Fill the database with demo users (user1, user2, ...) and their posts, fast.

    Set-based inserts in batches; every seeded user shares ONE password hash (hashing 100,000
    passwords would take an hour of CPU), so all of them log in with --password.
    """
    from asyncblog.seeding import seed_database

    settings = _settings()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )
    started = time.perf_counter()
    with progress:
        user_task = progress.add_task("users", total=users)
        post_task = progress.add_task("posts", total=users * posts_per_user)
        _run_db(
            "seed",
            seed_database(
                settings,
                users=users,
                posts_per_user=posts_per_user,
                password=password,
                batch=batch,
                on_users=lambda n: progress.advance(user_task, n),
                on_posts=lambda n: progress.advance(post_task, n),
            ),
        )
    err.print(
        f"seeded {users} users and {users * posts_per_user} posts "
        f"in {time.perf_counter() - started:.1f}s"
    )


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
