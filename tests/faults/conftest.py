"""Fault injection: outages, stalls, timeouts, exhausted pools, cancelled clients and shutdown.

Most of these tests are PostgreSQL-specific and run on a throwaway cluster that they may stop
and restart (`tests.fixtures.cluster`), behind a TCP proxy that cuts or stalls the network
(`tests.fixtures.proxy`), against in-process apps or real `asyncblog serve` processes
(`tests.fixtures.servers`); their helpers are in `tests.fixtures.faults`. The few faults that
also apply to SQLite and MariaDB run on all three through `tests.fixtures.databases.backend`.

What stays here applies to this directory only.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_expected_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """An outage makes the app log a WARNING with a traceback per refused request, as it
    should; keep a failing test's captured log to the ERRORs (unhandled errors, i.e. 500s)."""
    caplog.set_level(logging.ERROR, logger="asyncblog.error")
