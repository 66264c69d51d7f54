"""Test fixtures, as plugins in `tests/fixtures/` (one module per concern; see its docstring).

Every backend test runs on SQLite, PostgreSQL and MariaDB (`tests.fixtures.databases.backend`);
`pytest -m sqlite` (or postgres, mariadb) runs one backend's tests. The fault tests' throwaway
PostgreSQL cluster, proxy and servers are in `tests.fixtures.cluster`, `.proxy` and `.servers`.

The modules are listed in dependency order: a plugin's assertions are rewritten only if it is
not imported (by another plugin) before it is registered.
"""

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.app",
    "tests.fixtures.cluster",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.replica",
    "tests.fixtures.proxy",
    "tests.fixtures.servers",
    "tests.fixtures.faults",
]
