"""Read-your-writes across requests, processes and hosts, by the primary's WAL position.

After a unit of work that wrote commits on the primary, the data path notes the primary's WAL
insert position (`written`); the API answers it to the client (`X-Consistent-After` and a
cookie). A later request that sends it back (`required`) may read from a replica only once that
replica has replayed past it (`pg_last_wal_replay_lsn()`); else the data path waits a bounded
time for one (REPLICA_WAIT_MS), else it reads from the primary. A request that wrote reads from
the primary for the rest of it.

Positions travel as PostgreSQL writes them (`16/B374D848`) and are compared as integers.
"""

from __future__ import annotations

import contextvars
import re

required: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "asyncblog_required_lsn", default=None
)
written: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "asyncblog_written_lsn", default=None
)

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse(text: str | None) -> int | None:
    """A position from a client, or None when absent or malformed (then it constrains nothing:
    a forged one can only make the reader wait its bound, then read the primary)."""
    if not text:
        return None
    match = _LSN.match(text.strip())
    if match is None:
        return None
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def render(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def note_written(position: int) -> None:
    """A unit of work of this request wrote up to `position`: the client gets the furthest."""
    _raise_to(written, position)


def require(position: int) -> None:
    """Reads of this request must see at least `position` (the client's token carries it)."""
    _raise_to(required, position)


def _raise_to(var: contextvars.ContextVar[int | None], position: int) -> None:
    current = var.get()
    if current is None or position > current:
        var.set(position)
