"""Settings: defaults, what DATABASE_URL accepts, the first admin, and the generated secret key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from asyncblog.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the environment or from a `.env` file: each test sets what it needs."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------- defaults


def test_pool_size_is_2_on_sqlite_and_5_elsewhere_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POOL_SIZE's default depends on the database: two readers at once on SQLite (its reads
    run in threads that contend with the event loop for the GIL), five connections on a server;
    a POOL_SIZE given, in the environment or as an argument, is taken as it is everywhere."""
    assert Settings().pool_size == 2
    assert Settings(database_url="postgresql+asyncpg://u@h/db").pool_size == 5
    assert Settings(database_url="mysql+aiomysql://u@h/db").pool_size == 5
    assert Settings(pool_size=5).pool_size == 5
    monkeypatch.setenv("POOL_SIZE", "7")
    assert Settings().pool_size == 7
    assert Settings(database_url="postgresql+asyncpg://u@h/db").pool_size == 7


def test_defaults() -> None:
    """The README's settings table, default by default: with nothing in the environment and no
    `.env` file, every setting has the value the table gives it."""
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./asyncblog.db"
    assert settings.dialect == "sqlite"
    assert settings.secret_key is None
    assert settings.secret_key_file is None
    assert settings.access_token_expire_minutes == 15
    assert settings.refresh_token_expire_days == 14
    assert (settings.pool_size, settings.pool_max_overflow, settings.pool_timeout) == (2, 10, 10)
    assert settings.pool_recycle == 1800
    assert settings.pool_ping_after_idle == 2
    assert settings.statement_timeout_ms == 5000
    assert settings.database_replica_urls == "" and settings.replica_urls == []
    assert (
        settings.replica_wait_ms,
        settings.replica_down_seconds,
        settings.replica_max_lag_seconds,
    ) == (100, 5, 10)
    assert settings.throttle_store == "auto"
    assert settings.pgbouncer is False
    assert (settings.db_connect_timeout, settings.readiness_timeout) == (2, 1)
    assert settings.shutdown_timeout == 20
    assert settings.sqlite_busy_timeout_ms == 5000
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.cors_origins == []
    assert (settings.login_max_failures, settings.login_failure_window_seconds) == (5, 300)
    assert settings.login_max_failures_per_address == 100
    assert settings.login_max_failures_per_username == 20
    assert settings.login_username_window_seconds == 900
    assert settings.register_max_per_minute == 20
    assert settings.password_hash_max_waiting == 64
    assert settings.redis_url is None
    assert settings.first_admin_username is None
    assert settings.first_admin_email is None
    assert settings.first_admin_password is None
    assert (settings.log_level, settings.log_format) == ("INFO", "auto")
    assert settings.access_log is False
    assert settings.telemetry is False
    assert settings.metrics is False
    assert settings.metrics_token is None and settings.metrics_port is None
    assert (
        settings.argon2_time_cost,
        settings.argon2_memory_cost_kib,
        settings.argon2_parallelism,
    ) == (3, 65536, 4)
    assert settings.password_hash_threads == os.cpu_count()


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.example:5432/blog")
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://app@db.example:5432/blog"
    assert settings.dialect == "postgresql"
    assert settings.resolved_secret_key() == "k" * 40


def test_dotenv_file_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "DATABASE_URL=mariadb+aiomysql://root@127.0.0.1:3306/blog\n", encoding="utf-8"
    )
    assert load_settings().database_url == "mariadb+aiomysql://root@127.0.0.1:3306/blog"


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("sqlite+aiosqlite:///./data/blog.db", "sqlite"),
        ("sqlite+aiosqlite:////var/lib/blog.db", "sqlite"),
        ("postgresql+asyncpg://user:pw@localhost:5432/blog", "postgresql"),
        ("mysql+aiomysql://user:pw@localhost:3306/blog", "mysql"),
        ("mariadb+aiomysql://user:pw@localhost:3306/blog", "mysql"),
    ],
)
def test_supported_database_urls(monkeypatch: pytest.MonkeyPatch, url: str, dialect: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    settings = load_settings()
    assert settings.database_url == url
    assert settings.dialect == dialect


# ---------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x",
        "oracle://",
        "oracle://scott@db/orcl",
        "sqlite:///blocking.db",  # the synchronous driver cannot serve an async app
        "postgresql://u@localhost/db",
        "postgresql+psycopg2://u@localhost/db",
        "not a url at all",
        "",
    ],
)
def test_unsupported_database_url_is_a_one_line_settings_error(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "DATABASE_URL" in message
    assert "\n" not in message
    assert message.strip() == message and message


def test_database_url_error_does_not_echo_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "oracle://scott:hunter2-secret@db.example/orcl")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "DATABASE_URL" in str(raised.value)
    assert "hunter2-secret" not in str(raised.value)


def test_database_url_override_is_checked_too() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(database_url="oracle://x")
    assert "DATABASE_URL" in str(raised.value)


@pytest.mark.parametrize(
    "given",
    [
        {"FIRST_ADMIN_USERNAME": "root"},
        {"FIRST_ADMIN_EMAIL": "root@example.com"},
        {"FIRST_ADMIN_PASSWORD": "adminpass1"},
        {"FIRST_ADMIN_USERNAME": "root", "FIRST_ADMIN_EMAIL": "root@example.com"},
        {"FIRST_ADMIN_USERNAME": "root", "FIRST_ADMIN_PASSWORD": "adminpass1"},
        {"FIRST_ADMIN_EMAIL": "root@example.com", "FIRST_ADMIN_PASSWORD": "adminpass1"},
    ],
)
def test_partial_first_admin_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str]
) -> None:
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "FIRST_ADMIN" in message
    assert "\n" not in message
    assert "adminpass1" not in message


def test_cors_origins_is_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORS_ORIGINS in the environment is read as a JSON list of origins."""
    monkeypatch.setenv("CORS_ORIGINS", '["https://app.example", "http://localhost:3000"]')
    assert load_settings().cors_origins == ["https://app.example", "http://localhost:3000"]


def test_complete_first_admin_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRST_ADMIN_USERNAME", "root")
    monkeypatch.setenv("FIRST_ADMIN_EMAIL", "root@example.com")
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "adminpass1")
    settings = load_settings()
    assert settings.first_admin_username == "root"
    assert settings.first_admin_email == "root@example.com"
    assert settings.first_admin_password is not None
    assert settings.first_admin_password.get_secret_value() == "adminpass1"
    assert "adminpass1" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "soon"),
        ("POOL_SIZE", "0"),
        ("LOG_LEVEL", "CHATTY"),
        ("POOL_TIMEOUT", "0"),
        ("METRICS_PORT", "0"),
        ("LOG_FORMAT", "xml"),
        ("CORS_ORIGINS", "not-json"),
        ("CORS_ORIGINS", '{"origin": "https://app.example"}'),
        ("TELEMETRY", "maybe"),
    ],
)
def test_other_bad_values_are_a_settings_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad value of a bounded setting is one line naming it (`SettingsError`, which the
    command line prints as it is), not a traceback: CORS_ORIGINS that is not JSON was one,
    raised by pydantic-settings' own decoding."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert name in str(raised.value)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------------------- secret key


def test_secret_key_generated_once_next_to_the_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./data/blog.db")
    key_file = clean_env / "data" / "blog.db.secret"
    assert not key_file.exists()

    first = Settings().resolved_secret_key()
    assert len(first) >= 32  # enough for HS256
    assert key_file.read_text(encoding="utf-8").strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) & 0o077 == 0, "the key file is private"

    # Another process (a restart, a second worker) reads the same key.
    second = Settings().resolved_secret_key()
    assert second == first
    assert Settings().resolved_secret_key() == first
    assert key_file.read_text(encoding="utf-8").strip() == first


def test_secret_key_for_the_default_database(clean_env: Path) -> None:
    key = Settings().resolved_secret_key()
    assert (clean_env / "asyncblog.db.secret").read_text(encoding="utf-8").strip() == key
    assert Settings().resolved_secret_key() == key


def test_each_sqlite_database_gets_its_own_key(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{clean_env / 'one.db'}")
    one = Settings().resolved_secret_key()
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{clean_env / 'two.db'}")
    two = Settings().resolved_secret_key()
    assert one != two
    assert (clean_env / "one.db.secret").read_text(encoding="utf-8").strip() == one
    assert (clean_env / "two.db.secret").read_text(encoding="utf-8").strip() == two


def test_an_explicit_secret_key_is_used_and_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("SECRET_KEY", "an-explicit-secret-key-of-sufficient-length")
    assert Settings().resolved_secret_key() == "an-explicit-secret-key-of-sufficient-length"
    assert list(clean_env.iterdir()) == []
    assert "an-explicit-secret-key" not in repr(Settings())


def test_secret_key_file_holds_the_generated_key(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    """SECRET_KEY_FILE: the generated key is kept there (private, read back by every later
    start), not next to the SQLite file."""
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./blog.db")
    key_file = clean_env / "keys" / "asyncblog.key"
    monkeypatch.setenv("SECRET_KEY_FILE", str(key_file))
    key = Settings().resolved_secret_key()
    assert len(key) >= 32
    assert key_file.read_text(encoding="utf-8").strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) & 0o077 == 0, "the key file is private"
    assert not (clean_env / "blog.db.secret").exists()
    assert Settings().resolved_secret_key() == key


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://app@db.example/blog", "mariadb+aiomysql://app@db.example/blog"]
)
def test_a_server_database_keeps_its_key_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path, url: str
) -> None:
    """With a server database and neither SECRET_KEY nor SECRET_KEY_FILE, the key is generated
    once into `./.asyncblog-secret` (private), and a second start reads the same key. No
    server is needed: the key never touches the database."""
    monkeypatch.setenv("DATABASE_URL", url)
    key = Settings().resolved_secret_key()
    key_file = clean_env / ".asyncblog-secret"
    assert os.listdir(clean_env) == [".asyncblog-secret"]
    assert key_file.read_text(encoding="utf-8").strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) & 0o077 == 0, "the key file is private"
    assert Settings().resolved_secret_key() == key


def test_an_existing_key_file_is_kept(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///./blog.db")
    (clean_env / "blog.db.secret").write_text("pre-existing-key-" + "x" * 40 + "\n")
    assert Settings().resolved_secret_key() == "pre-existing-key-" + "x" * 40
    assert os.listdir(clean_env) == ["blog.db.secret"]


def test_racing_processes_agree_on_one_generated_key(clean_env: Path) -> None:
    """Workers started together all create the key at once: each must end up with the same,
    complete key (never an empty or half-written file)."""
    import subprocess
    import sys

    db = clean_env / "race.db"
    script = (
        "from asyncblog.config import Settings; "
        f"print(Settings(database_url='sqlite+aiosqlite:///{db}').resolved_secret_key())"
    )
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
        )
        for _ in range(8)
    ]
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(keys) == 1
    key = keys.pop()
    assert len(key) >= 32
    assert (clean_env / "race.db.secret").read_text(encoding="utf-8").strip() == key
    assert not [p for p in clean_env.iterdir() if p.name.startswith(".race.db.secret")]


def test_the_tests_settings_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`settings_for` (every test's settings) takes nothing from the machine: an exported
    REDIS_URL or LOGIN_MAX_FAILURES, or a .env file, must not change what a test runs with."""
    from tests.fixtures.databases import settings_for

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("LOGIN_MAX_FAILURES", "77")
    Path(".env").write_text("ACCESS_LOG=true\n", encoding="utf-8")
    settings = settings_for("sqlite+aiosqlite:///:memory:")
    assert settings.redis_url is None
    assert settings.login_max_failures == 5
    assert settings.access_log is False
