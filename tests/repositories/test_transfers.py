"""The transfer's transaction never commits half a move, on every backend.

Under the row locks the balance check in Python and the conditional UPDATE see the same balance,
so over HTTP the UPDATE never refuses the debit. Here the check is handed a smaller amount than
the statements get, so that it passes while the UPDATE refuses the debit (and still credits the
recipient: the statement changes one row): the attempt must stop (`_NotBothMoved`, which
`transfer_once` answers as a refusal) and its transaction roll back, with no balance changed and
no ledger row.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from asyncblog.api.state import AppState
from asyncblog.models import Transfer, User
from asyncblog.repositories import transfers
from tests.fixtures.app import Api


async def test_a_move_that_cannot_debit_commits_nothing(api: Api, state: AppState) -> None:
    _, admin = await api.admin()
    sender, _auth = await api.user()
    recipient = await api.register()
    await api.deposit(admin, sender["id"], "10.00")
    params = {
        "sender": sender["id"],
        "to": recipient["id"],
        "amount": Decimal("1000.00"),  # what the UPDATE gets: more than the balance
        "key": None,
        "fingerprint": None,
    }
    async with state.db.session() as session:
        version = await session.scalar(select(User.token_version).where(User.id == sender["id"]))
    assert version is not None
    refused = False
    async with state.db.writer() as link:
        try:
            async with link.transaction():  # as transfer_once runs it
                await transfers._locked_transfer(link, params, version, Decimal("1.00"))
        except transfers._NotBothMoved:
            refused = True
    assert refused, "the move credited without debiting and the attempt went on"

    async with state.db.session() as session:
        rows = await session.execute(
            select(User.id, User.balance).where(User.id.in_([sender["id"], recipient["id"]]))
        )
        found = {row[0]: row[1] for row in rows}
        ledger = await session.scalar(
            select(func.count()).select_from(Transfer).where(Transfer.from_user_id == sender["id"])
        )
    assert found == {sender["id"]: Decimal("10.00"), recipient["id"]: Decimal("0.00")}
    assert ledger == 0
