"""The money ledger and the balance arithmetic on users, over the data path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    case,
    func,
    insert,
    or_,
    select,
    update,
)

from asyncblog.db.database import Reader, Writer
from asyncblog.db.json import json_text, json_view
from asyncblog.db.statements import Statement
from asyncblog.db.types import Money
from asyncblog.models import Transfer, User
from asyncblog.repositories.base import param, touched, valid_id
from asyncblog.repositories.views import ViewQuery, columns_of, dump
from asyncblog.schemas import TransferView

# --------------------------------------------------------------------------- the data path

_users = cast(Table, User.__table__)
_transfers = cast(Table, Transfer.__table__)
_VIEW_FIELDS = list(TransferView.model_fields)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt of a transfer found or did."""

    caller_ok: bool
    recipient_ok: bool
    prior_fingerprint: str | None  # the Idempotency-Key was used before, with this request
    prior: bytes | None
    created: bytes | None


def _move_and_record() -> Any:
    """PostgreSQL: once both rows are locked, move the money and write the ledger row in one
    statement (data-modifying CTEs): the ledger row only when both balances moved."""
    sender_id, to_id, amount = (
        param("sender", Integer),
        param("to", Integer),
        param("amount", Money()),
    )
    moved = _move().returning(_users.c.id).cte("moved")
    entry = (
        insert(_transfers)
        .from_select(
            ["from_user_id", "to_user_id", "amount", "idempotency_key", "request_fingerprint"],
            select(
                sender_id, to_id, amount, param("key", String), param("fingerprint", String)
            ).where(select(func.count()).select_from(moved).scalar_subquery() == 2),
        )
        .returning(*[_transfers.c[n] for n in _VIEW_FIELDS])
        .cte("entry")
    )
    return select(json_text(json_view(TransferView, columns_of(TransferView, entry))))


# A transfer is one transaction: lock both rows in id order (on SQLite BEGIN IMMEDIATE took the
# write lock already) and check the caller's token, the recipient and the key with the same
# statement's rows; then move and record. A single statement cannot do the locking and the
# checks: its snapshot is older than the locks it waits for (tried: PostgreSQL then checked a
# balance that a concurrent transfer had already spent).
_LOCK = Statement(
    lambda: (
        select(
            _users.c.id,
            _users.c.balance,
            _users.c.is_active,
            _users.c.token_version,
        )
        .where(_users.c.id.in_([param("sender", Integer), param("to", Integer)]))
        .order_by(_users.c.id)
        # PostgreSQL: FOR NO KEY UPDATE, what the UPDATE of the balances takes anyway; unlike
        # FOR UPDATE it lets a login insert a refresh token for the user meanwhile (the
        # foreign key's KEY SHARE lock).
        .with_for_update(key_share=True)
    )
)
_PRIOR = Statement(
    lambda: select(
        _transfers.c.request_fingerprint, *[_transfers.c[n] for n in _VIEW_FIELDS]
    ).where(
        _transfers.c.from_user_id == param("sender", Integer),
        _transfers.c.idempotency_key == param("key", String),
    )
)


def _move() -> Any:
    sender_id, to_id, amount = (
        param("sender", Integer),
        param("to", Integer),
        param("amount", Money()),
    )
    is_sender = _users.c.id == sender_id
    return (
        update(_users)
        .where(_users.c.id.in_([sender_id, to_id]), or_(~is_sender, _users.c.balance >= amount))
        .values(
            balance=case((is_sender, _users.c.balance - amount), else_=_users.c.balance + amount),
            **touched(_users),
        )
    )


_MOVE = Statement(_move)
_MOVE_AND_RECORD = Statement(_move_and_record)
_ENTRY = Statement(
    lambda: (
        insert(_transfers)
        .values(
            from_user_id=param("sender", Integer),
            to_user_id=param("to", Integer),
            amount=param("amount", Money()),
            idempotency_key=param("key", String),
            request_fingerprint=param("fingerprint", String),
        )
        .returning(*[_transfers.c[n] for n in _VIEW_FIELDS])
    )
)


def _render(values: Sequence[Any]) -> bytes:
    return dump(TransferView, dict(zip(_VIEW_FIELDS, values, strict=True)))


async def transfer_once(
    link: Writer,
    *,
    sender_id: int,
    token_version: int,
    to_id: int,
    amount: Decimal,
    key: str | None,
    fingerprint: str | None,
) -> Outcome:
    """One attempt, one transaction: lock, check, move, record (see above). The key is looked
    up after the locks, so a concurrent twin is seen once it committed; if two still race to the
    INSERT, UniqueViolation, and nothing has moved."""
    params = {
        "sender": sender_id,
        "to": to_id,
        "amount": amount,
        "key": key,
        "fingerprint": fingerprint,
    }
    try:
        async with link.transaction():
            return await _locked_transfer(link, params, token_version, amount)
    except _NotBothMoved:
        return Outcome(True, True, None, None, None)


class _NotBothMoved(Exception):
    """The move changed one balance, not both: the transaction must not commit. Under the locks
    and the checks before it this cannot happen; if it ever did, a commit would create money."""


async def _locked_transfer(
    link: Writer, params: dict[str, Any], token_version: int, amount: Decimal
) -> Outcome:
    """Lock, check, move, record: the body of `transfer_once`'s transaction."""
    sender_id, to_id, key = params["sender"], params["to"], params["key"]
    locked = {row[0]: row for row in await link.rows(_LOCK, **params)}
    if key is not None:
        found = await link.row(_PRIOR, **params)
        if found is not None:
            return Outcome(True, True, found[0], _render(found[1:]), None)
    sender, recipient = locked.get(sender_id), locked.get(to_id)
    caller_ok = sender is not None and bool(sender[2]) and sender[3] == token_version
    recipient_ok = recipient is not None and bool(recipient[2])
    if not (caller_ok and recipient_ok) or sender is None or sender[1] < amount:
        return Outcome(caller_ok, recipient_ok, None, None, None)
    if link.dialect.name == "postgresql":
        view = await link.value(_MOVE_AND_RECORD, **params)
        if view is None:  # no ledger row: the move did not change both balances
            raise _NotBothMoved
        return Outcome(True, True, None, None, view.encode())
    if await link.count(_MOVE, **params) != 2:
        raise _NotBothMoved
    created = await link.row(_ENTRY, **params)
    assert created is not None
    return Outcome(True, True, None, None, _render(created))


async def prior(link: Reader, *, sender_id: int, key: str) -> tuple[str | None, bytes] | None:
    """The ledger row a sender's Idempotency-Key names: (its request's fingerprint, its view)."""
    found = await link.row(_PRIOR, sender=sender_id, key=key)
    return (found[0], _render(found[1:])) if found is not None else None


def _deposit_once() -> Any:
    """PostgreSQL: credit the user and write the ledger row in one statement."""
    to_id, amount = param("to", Integer), param("amount", Money())
    credited = (
        update(_users)
        .where(_users.c.id == to_id)
        .values(balance=_users.c.balance + amount, **touched(_users))
        .returning(_users.c.id)
        .cte("credited")
    )
    entry = (
        insert(_transfers)
        .from_select(["to_user_id", "amount"], select(credited.c.id, amount))
        .returning(*[_transfers.c[n] for n in _VIEW_FIELDS])
        .cte("entry")
    )
    return select(json_text(json_view(TransferView, columns_of(TransferView, entry))))


_DEPOSIT_ONCE = Statement(_deposit_once)
_CREDIT = Statement(
    lambda: (
        update(_users)
        .where(_users.c.id == param("to", Integer))
        .values(
            balance=_users.c.balance + param("amount", Money()),
            **touched(_users),
        )
    )
)
_DEPOSIT_ENTRY = Statement(
    lambda: (
        insert(_transfers)
        .values(to_user_id=param("to", Integer), amount=param("amount", Money()))
        .returning(*[_transfers.c[n] for n in _VIEW_FIELDS])
    )
)


async def deposit(link: Writer, *, to_id: int, amount: Decimal) -> bytes | None:
    """Credit a user with SQL arithmetic and record it in the ledger; None: no such user."""
    if not valid_id(to_id):
        return None
    if link.dialect.name == "postgresql":
        view: str | None = await link.value(_DEPOSIT_ONCE, to=to_id, amount=amount)
        return view.encode() if view is not None else None
    async with link.transaction():
        if await link.count(_CREDIT, to=to_id, amount=amount) != 1:
            return None
        created = await link.row(_DEPOSIT_ENTRY, to=to_id, amount=amount)
        assert created is not None
        return _render(created)


_HISTORY = ViewQuery(
    TransferView,
    lambda: (
        select(*[_transfers.c[n] for n in _VIEW_FIELDS])
        .where(
            or_(
                _transfers.c.from_user_id == param("user_id", Integer),
                _transfers.c.to_user_id == param("user_id", Integer),
            ),
            _transfers.c.id > param("after_id", Integer),
        )
        .order_by(_transfers.c.id)
        .limit(param("limit", Integer))
        .offset(param("skip", Integer)),
        lambda sub: columns_of(TransferView, sub),
    ),
    many=True,
)


async def history(
    link: Reader, *, user_id: int, skip: int, limit: int, after_id: int | None
) -> bytes:
    """The user's transfers, sent and received, by id."""
    page = await _HISTORY.fetch(
        link, user_id=user_id, after_id=after_id or 0, skip=skip, limit=limit
    )
    assert page is not None
    return page
