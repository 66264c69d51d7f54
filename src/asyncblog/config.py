"""Settings, read from the environment and an optional `.env` file."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIN_SECRET_BYTES = 32
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./asyncblog.db"
# POOL_SIZE when not given: readers at once on SQLite (see `Settings._sqlite_readers`), else
# connections to the database server
POOL_SIZE = 5
SQLITE_POOL_SIZE = 2
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg", "mysql+aiomysql", "mariadb+aiomysql")


def dialect_of(url: URL | str) -> str:
    """`sqlite`, `postgresql` or `mysql` (MariaDB counts as mysql): the one normalisation."""
    name = make_url(url).get_backend_name()
    return "mysql" if name == "mariadb" else name


class Settings(BaseSettings):
    """Every knob of the service. Names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    access_token_expire_minutes: int = Field(default=15, ge=1, le=60 * 24 * 30)
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365)

    pool_size: int = Field(default=POOL_SIZE, ge=1, le=1000)
    pool_max_overflow: int = Field(default=10, ge=0, le=1000)
    pool_timeout: float = Field(default=10.0, gt=0, le=600)
    pool_recycle: int = Field(default=1800, ge=-1)
    pool_ping_after_idle: float = Field(default=2.0, ge=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    # A statement running longer is cancelled by the database (503 for the client); 0: no limit.
    statement_timeout_ms: int = Field(default=5000, ge=0)
    db_connect_timeout: float = Field(default=2.0, gt=0, le=120)
    # DATABASE_URL points at PgBouncer in transaction mode: nothing session-level is sent (no
    # statement_timeout at connect time: the client bounds statements instead), and no
    # prepared statement outlives its transaction (db.engine.driver_connect_args).
    pgbouncer: bool = False
    # Read replicas (PostgreSQL streaming replicas), comma-separated URLs: reads go to them, every
    # write and every read of a request that wrote to the primary; read-your-writes by WAL
    # position (asyncblog.db.consistency). REPLICA_WAIT_MS: how long a read waits for a replica
    # to replay a client's last write before it reads the primary; a replica that failed is
    # skipped for REPLICA_DOWN_SECONDS, one lagging more than REPLICA_MAX_LAG_SECONDS too.
    database_replica_urls: str = ""
    replica_wait_ms: int = Field(default=100, ge=0, le=10_000)
    replica_down_seconds: float = Field(default=5.0, ge=0)
    # A replica further behind than this takes no reads (how far: the age of the last
    # transaction it replayed, while it has more to replay; checked at most once a second);
    # 0: no bound.
    replica_max_lag_seconds: float = Field(default=10.0, ge=0)
    readiness_timeout: float = Field(default=1.0, gt=0, le=60)
    # SIGTERM: requests in flight get this long to finish before `serve` closes them.
    shutdown_timeout: int = Field(default=20, ge=0, le=3600)  # seconds

    # 1 MiB holds the longest post (100,000 characters) in UTF-8, and with JSON's \uXXXX
    # escapes for characters of the BMP; 100,000 escaped emoji (1.2 MB) need a larger limit.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A JSON list; decoded by `_json_list` (not by pydantic-settings, whose error on a value
    # that is not JSON would be a traceback naming no setting).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Failed logins: after this many for one username or one client address within the
    # window, further attempts get 429 until the window passes. REDIS_URL shares the counts
    # between processes; without it they are per process.
    # Failed logins: per (username, client address) pair, per address across usernames, per
    # username across addresses (asyncblog.throttle).
    login_max_failures: int = Field(default=5, ge=1)
    login_failure_window_seconds: int = Field(default=300, ge=1)
    login_max_failures_per_address: int = Field(default=100, ge=1)
    login_max_failures_per_username: int = Field(default=20, ge=1)
    login_username_window_seconds: int = Field(default=900, ge=1)
    register_max_per_minute: int = Field(default=20, ge=0)  # per client address; 0: no limit
    redis_url: str | None = None
    # Where the counts live: `auto` is Redis with REDIS_URL, else this process's memory;
    # `database` shares them through the database (what `serve --workers N` uses with no Redis).
    throttle_store: Literal["auto", "memory", "redis", "database"] = "auto"

    first_admin_username: str | None = None
    first_admin_email: str | None = None
    first_admin_password: SecretStr | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # JSON lines for log shippers; readable lines for a person at a terminal. `auto`: console
    # when stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    # One line per request. Off by default (as gunicorn's is): a proxy in front usually logs
    # requests, and this costs about a seventh of the hot read's throughput. Errors are logged
    # either way.
    access_log: bool = False
    # Traces: a span per request (FastAPI's native OpenTelemetry) and per database statement,
    # to the global OpenTelemetry providers (FASTAPI_OTEL_AUTO_CONFIGURE=true and
    # OTEL_EXPORTER_OTLP_ENDPOINT export them over OTLP). Off: they cost every request.
    telemetry: bool = False
    # Prometheus: GET /metrics (asyncblog.metrics). METRICS_TOKEN: scrapes of the API's port
    # must send it as a bearer token. METRICS_PORT: `asyncblog serve` answers them on that port
    # of its --host instead, with no token: bind to a private interface or firewall it.
    metrics: bool = False
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # Argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile.
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8, le=4 * 1024 * 1024)
    argon2_parallelism: int = Field(default=4, ge=1, le=64)
    password_hash_threads: int = Field(default=max(os.cpu_count() or 1, 1), ge=1, le=256)
    # Hashes allowed to wait for a thread; past it a request is answered 503 at once.
    password_hash_max_waiting: int = Field(default=64, ge=0)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError("not a database URL (expected dialect+driver://...)") from exc
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"unsupported driver {url.drivername!r}; use one of {', '.join(SUPPORTED_DRIVERS)}"
            )
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _check_replicas(cls, value: str) -> str:
        for url in _split(value):
            if not url.startswith("postgresql+asyncpg://"):
                raise ValueError("read replicas are PostgreSQL (postgresql+asyncpg://...) URLs")
        return value

    @property
    def replica_urls(self) -> list[str]:
        return _split(self.database_replica_urls)

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 with a short key is guessable offline from one token (RFC 7518: >= 256 bits)
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _json_list(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('not a JSON list (e.g. ["https://app.example"])') from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sqlite_readers(self) -> Settings:
        """On SQLite, two readers at once unless POOL_SIZE says otherwise. Its reads run in
        aiosqlite's threads, one per connection, which contend with the event loop for the GIL:
        measured with wrk (`GET /posts/{id}`, c=64), 5 readers served about 2,900 requests/s,
        3 about 3,500, 2 about 3,600; `GET /users` gained 10 %, `GET /users/{id}` as before."""
        if "pool_size" not in self.model_fields_set and dialect_of(self.database_url) == "sqlite":
            self.pool_size = SQLITE_POOL_SIZE
        return self

    @model_validator(mode="after")
    def _first_admin_complete(self) -> Settings:
        given = [self.first_admin_username, self.first_admin_email, self.first_admin_password]
        if any(given) and not all(given):
            raise ValueError(
                "FIRST_ADMIN_USERNAME, FIRST_ADMIN_EMAIL and FIRST_ADMIN_PASSWORD go together"
            )
        return self

    @property
    def url(self) -> URL:
        return make_url(self.database_url)

    @property
    def dialect(self) -> str:
        """`sqlite`, `postgresql` or `mysql` (MariaDB counts as mysql)."""
        return dialect_of(self.url)

    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for other backends and in-memory databases."""
        if self.dialect != "sqlite":
            return None
        database = self.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database)

    def resolved_secret_key(self) -> str:
        """SECRET_KEY, or one generated once and kept in a file so restarts and workers agree."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.secret_key_file
        if path is None:
            db_file = self.sqlite_path()
            if db_file is None and self.dialect == "sqlite":  # in-memory: nothing to share
                return _process_secret()
            path = (
                db_file.with_name(db_file.name + ".secret")
                if db_file
                else Path(".asyncblog-secret")
            )
        return _load_or_create_secret(path)


def _split(urls: str) -> list[str]:
    return [url.strip() for url in urls.split(",") if url.strip()]


@lru_cache(maxsize=1)
def _process_secret() -> str:
    return secrets.token_urlsafe(48)


def _load_or_create_secret(path: Path) -> str:
    """Read the key file, or create it if absent so that racing processes agree: the key is
    written to a private temporary file first and then published with a hard link, which fails
    if another process published first. The file is never seen half-written."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(48))
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> str:
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"{path} is empty; delete it to have a new key generated")
    return key


class SettingsError(Exception):
    """A setting is invalid; the message is one human line."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
