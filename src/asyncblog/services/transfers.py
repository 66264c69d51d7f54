"""Deposits and transfers: one transaction each, correct under any concurrency.

A transfer locks both users' rows in ascending id order (so A->B and B->A at once cannot
deadlock), checks, moves the money with SQL arithmetic and writes the ledger row, all in one
transaction. SQLite has no row locks: a writing request's transaction begins with
`BEGIN IMMEDIATE` (see `asyncblog.db`), which serialises writers. If the database still reports a
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

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.db.errors import translated
from asyncblog.errors import (
    Busy,
    Conflict,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    UniqueViolation,
)
from asyncblog.models import Transfer, User
from asyncblog.repositories import TransferRepository
from asyncblog.schemas import TransferCreate

MAX_ATTEMPTS = 5


def fingerprint(data: TransferCreate) -> str:
    return hashlib.sha256(f"{data.to_user_id}:{data.amount}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer: Transfer
    replayed: bool


class TransferService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.ledger = TransferRepository(session)

    async def transfer(
        self, sender: User, data: TransferCreate, idempotency_key: str | None = None
    ) -> TransferResult:
        sender_id = sender.id  # `sender` expires if an attempt rolls back
        if data.to_user_id == sender_id:
            raise Invalid("Cannot transfer to yourself")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with translated():
                    return await self._transfer_once(sender_id, data, idempotency_key)
            except UniqueViolation:
                await self.session.rollback()
                if idempotency_key is None:
                    raise
                # A concurrent request with the same key won the INSERT: replay it.
                return await self._replay(sender_id, data, idempotency_key)
            except Busy:
                await self.session.rollback()
                if attempt == MAX_ATTEMPTS:
                    raise Unavailable(
                        "The transfer could not be completed under contention; retry"
                    ) from None
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))  # noqa: S311
            except BaseException:
                await self.session.rollback()
                raise
        raise AssertionError("unreachable")

    async def _transfer_once(
        self, sender_id: int, data: TransferCreate, key: str | None
    ) -> TransferResult:
        locked = await self.ledger.lock_users([sender_id, data.to_user_id])
        if key is not None:
            existing = await self.ledger.by_key(sender_id, key)
            if existing is not None:
                await self.session.commit()
                return self._as_replay(existing, data)
        if sender_id not in locked or not locked[sender_id][1]:
            raise Unauthorized("Could not validate credentials")
        recipient = locked.get(data.to_user_id)
        if recipient is None or not recipient[1]:
            raise NotFound("Recipient not found")
        if locked[sender_id][0] < data.amount:
            raise Conflict("Insufficient balance")
        if not await self.ledger.move(sender_id, data.to_user_id, data.amount):
            raise Conflict("Insufficient balance")  # the CHECK would refuse it too
        transfer = await self.ledger.create(
            from_user_id=sender_id,
            to_user_id=data.to_user_id,
            amount=data.amount,
            idempotency_key=key,
            request_fingerprint=fingerprint(data) if key is not None else None,
        )
        await self.session.commit()
        return TransferResult(transfer, replayed=False)

    async def _replay(self, sender_id: int, data: TransferCreate, key: str) -> TransferResult:
        existing = await self.ledger.by_key(sender_id, key)
        await self.session.commit()
        if existing is None:  # the INSERT failed for another reason
            raise Unavailable("The transfer could not be completed; retry")
        return self._as_replay(existing, data)

    @staticmethod
    def _as_replay(existing: Transfer, data: TransferCreate) -> TransferResult:
        if existing.request_fingerprint != fingerprint(data):
            raise Conflict("Idempotency-Key was already used with a different request")
        return TransferResult(existing, replayed=True)

    async def deposit(self, user_id: int, amount: Decimal) -> Transfer:
        """Credit a user (an admin's deposit) and record it in the ledger."""
        if not await self.ledger.credit(user_id, amount):
            raise NotFound("User not found")
        transfer = await self.ledger.create(from_user_id=None, to_user_id=user_id, amount=amount)
        await self.session.commit()
        return transfer

    async def history(
        self, user: User, *, skip: int, limit: int, after_id: int | None
    ) -> list[Transfer]:
        return list(await self.ledger.of_user(user.id, skip=skip, limit=limit, after_id=after_id))
