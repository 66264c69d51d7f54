"""Deposits and transfers: one transaction each, correct under any concurrency.

A transfer locks both users' rows in ascending id order (so A->B and B->A at once cannot
deadlock), checks the caller, the recipient and the balance, moves the money with SQL arithmetic
and writes the ledger row, all in one transaction: on PostgreSQL one statement
(`repositories.transfers`). SQLite has no row locks: its transaction begins with
`BEGIN IMMEDIATE`, which serialises writers. If the database still reports a
deadlock or a serialization failure, the whole transaction is retried a bounded number of times
with jittered backoff; after that the client gets a 503. A lock wait that outlasts the statement
timeout is a 503 at once (it already took long).

`Idempotency-Key`: the key is stored on the ledger row, unique per sender, with a fingerprint of
the request. The key is checked after the rows are locked, so a concurrent twin waits for the
first and then sees its row; if two still race to the INSERT, the unique constraint picks one
and the other rolls back (no money moved) and replays the winner.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass
from decimal import Decimal

from asyncblog.db.database import Database
from asyncblog.errors import (
    Busy,
    Conflict,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    UniqueViolation,
)
from asyncblog.metrics import TRANSFERS
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.transfers import Outcome, deposit, history, prior, transfer_once
from asyncblog.schemas import TransferCreate
from asyncblog.security import AccessClaims

MAX_ATTEMPTS = 5
CREATED = TRANSFERS.labels(outcome="created")  # bound once: the hot path's label lookup


def fingerprint(data: TransferCreate) -> str:
    return hashlib.sha256(f"{data.to_user_id}:{data.amount}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TransferResult:
    view: bytes  # the transfer's JSON
    replayed: bool


INVALID_CALLER = "Could not validate credentials"


class TransferService:
    """Transfers, deposits and the ledger over the data path: each attempt one unit of work on
    one connection (on PostgreSQL one statement)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def transfer(
        self, claims: AccessClaims | None, data: TransferCreate, key: str | None = None
    ) -> TransferResult:
        if claims is None or not valid_id(claims.user_id):
            raise Unauthorized(INVALID_CALLER)
        sender_id = claims.user_id
        if data.to_user_id == sender_id:
            raise Invalid("Cannot transfer to yourself")
        request = fingerprint(data) if key is not None else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.db.writer() as link:
                    outcome = await transfer_once(
                        link,
                        sender_id=sender_id,
                        token_version=claims.token_version,
                        to_id=data.to_user_id,
                        amount=data.amount,
                        key=key,
                        fingerprint=request,
                    )
            except UniqueViolation:
                if key is None:
                    raise
                # A concurrent request with the same key won the INSERT: replay it.
                async with self.db.reader() as link:
                    found = await prior(link, sender_id=sender_id, key=key)
                if found is None:  # the INSERT failed for another reason
                    raise Unavailable("The transfer could not be completed; retry") from None
                return self._replay(*found, request)
            except Busy:
                if attempt == MAX_ATTEMPTS:
                    TRANSFERS.labels(outcome="given_up").inc()
                    raise Unavailable(
                        "The transfer could not be completed under contention; retry"
                    ) from None
                TRANSFERS.labels(outcome="retried").inc()
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))  # noqa: S311
                continue
            return self._result(outcome, request)
        raise AssertionError("unreachable")

    def _result(self, outcome: Outcome, request: str | None) -> TransferResult:
        if outcome.prior is not None:
            return self._replay(outcome.prior_fingerprint, outcome.prior, request)
        if not outcome.caller_ok:
            raise Unauthorized(INVALID_CALLER)
        if not outcome.recipient_ok:
            raise NotFound("Recipient not found")
        if outcome.created is None:
            TRANSFERS.labels(outcome="insufficient_balance").inc()
            raise Conflict("Insufficient balance")
        CREATED.inc()
        return TransferResult(outcome.created, replayed=False)

    @staticmethod
    def _replay(found: str | None, view: bytes, request: str | None) -> TransferResult:
        if found != request:
            raise Conflict("Idempotency-Key was already used with a different request")
        TRANSFERS.labels(outcome="replayed").inc()
        return TransferResult(view, replayed=True)

    async def deposit(self, user_id: int, amount: Decimal) -> bytes:
        """Credit a user (an admin's deposit) and record it in the ledger."""
        async with self.db.writer() as link:
            view = await deposit(link, to_id=user_id, amount=amount)
        if view is None:
            raise NotFound("User not found")
        return view

    async def history(self, user_id: int, *, skip: int, limit: int, after_id: int | None) -> bytes:
        async with self.db.reader() as link:
            return await history(link, user_id=user_id, skip=skip, limit=limit, after_id=after_id)
