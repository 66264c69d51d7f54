"""Transfers under real concurrency: many clients, real commits, a real pool (`live_api`).

Allowed answers are the contract's: 201, or 409 "Insufficient balance". A 503 (the service gave up
retrying under contention) or a 500 fails these tests: with rows locked in id order there is no
deadlock to retry, so neither should ever happen at this load.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from asyncblog.api.state import AppState
from asyncblog.models import Transfer, User
from asyncblog.schemas import TransferCreate
from asyncblog.services.transfers import fingerprint
from tests.fixtures.app import Api
from tests.fixtures.databases import Backend
from tests.fixtures.faults import (
    Member,
    bounded,
    transfer_call,
    unexpected,
    waits_for_another_transaction,
)
from tests.fixtures.faults import funded as members
from tests.fixtures.ledger import assert_ledger_invariants, watching_invariants
from tests.fixtures.metrics import counted

pytestmark = pytest.mark.concurrency

SEED = 20240611
INSUFFICIENT = {"detail": "Insufficient balance"}


async def test_random_concurrent_transfers_keep_every_invariant(live_api: Api) -> None:
    rng = random.Random(SEED)
    admin, users = await members(live_api, 6, "100.00")
    deposits = Decimal("600.00")

    calls: list[Callable[[], Awaitable[httpx.Response]]] = []
    sent: dict[int, tuple[Member, Member, Decimal]] = {}  # call index -> transfer asked for
    credited: dict[int, Member] = {}  # call index -> deposit asked for

    def add_transfer(sender: Member, to: Member, amount: Decimal) -> None:
        sent[len(calls)] = (sender, to, amount)
        calls.append(transfer_call(live_api, sender, to, amount))

    for i in range(300):
        a, b = rng.sample(users, 2)
        amount = Decimal(rng.randint(1, 6000)).scaleb(-2)  # 0.01 to 60.00: some must fail
        add_transfer(a, b, amount)
        if i % 10 == 0:  # A->B and B->A side by side
            add_transfer(b, a, amount)
        if i % 15 == 0:  # a deposit racing with the transfers
            to = rng.choice(users)
            credited[len(calls)] = to
            calls.append(
                functools.partial(
                    live_api.client.post,
                    f"/admin/users/{to.id}/deposit",
                    json={"amount": "5.00"},
                    headers=admin,
                )
            )
            deposits += Decimal("5.00")
    add_transfer(users[0], users[1], Decimal("600.01"))  # more money than exists

    async with watching_invariants(live_api.state) as snapshots:
        responses = await bounded(calls)
    assert snapshots, "the invariants were never checked while transfers ran"
    transfer_responses = [responses[i] for i in sent]
    deposit_responses = [responses[i] for i in credited]

    assert unexpected(deposit_responses, {201}) == []
    assert unexpected(transfer_responses, {201, 409}) == []
    assert all(r.json() == INSUFFICIENT for r in transfer_responses if r.status_code == 409), [
        r.text for r in transfer_responses if r.status_code == 409 and r.json() != INSUFFICIENT
    ]
    statuses = Counter(r.status_code for r in transfer_responses)
    assert statuses[201] > 0 and statuses[409] > 0, statuses
    assert transfer_responses[-1].status_code == 409

    # Each 201 names the transfer that was asked for; the ledger holds exactly those.
    created: dict[int, tuple[int, int, Decimal]] = {}
    for (sender, to, amount), response in zip(sent.values(), transfer_responses, strict=True):
        if response.status_code == 201:
            body = response.json()
            assert (body["from_user_id"], body["to_user_id"], body["amount"]) == (
                sender.id,
                to.id,
                str(amount),
            )
            created[body["id"]] = (sender.id, to.id, amount)
    assert len(created) == statuses[201]
    async with live_api.state.db.session() as session:
        ledger = {
            row.id: (row.from_user_id, row.to_user_id, row.amount)
            for row in await session.execute(
                select(
                    Transfer.id, Transfer.from_user_id, Transfer.to_user_id, Transfer.amount
                ).where(Transfer.from_user_id.is_not(None))
            )
        }
    assert ledger == created

    report = await assert_ledger_invariants(live_api.state)
    assert report.total_deposits == deposits == report.total_balances
    assert report.transfer_rows == statuses[201]
    # The balances follow from the 201 answers alone, and /users/me agrees.
    expected = {u.id: Decimal("100.00") for u in users}
    for to in credited.values():
        expected[to.id] += Decimal("5.00")
    for sender_id, to_id, amount in created.values():
        expected[sender_id] -= amount
        expected[to_id] += amount
    for user in users:
        assert report.rows[user.id].balance == expected[user.id]
        me = await live_api.client.get("/users/me", headers=user.headers)
        assert me.json()["balance"] == str(expected[user.id])


async def test_opposite_transfers_at_once_do_not_deadlock(live_api: Api) -> None:
    _, (a, b) = await members(live_api, 2, "100.00")
    calls = []
    for _ in range(40):  # 40 each way: enough funds whatever the order
        calls.append(transfer_call(live_api, a, b, Decimal("1.00")))
        calls.append(transfer_call(live_api, b, a, Decimal("1.00")))
    busy = counted("asyncblog_db_errors_total", kind="busy")
    retried = counted("asyncblog_transfers_total", outcome="retried")

    responses = await bounded(calls)

    assert unexpected(responses, {201}) == []
    # Not even a silent retry: the rows are locked in one order, so no deadlock ever happened.
    assert counted("asyncblog_db_errors_total", kind="busy") == busy
    assert counted("asyncblog_transfers_total", outcome="retried") == retried
    report = await assert_ledger_invariants(live_api.state)
    assert report.rows[a.id].balance == report.rows[b.id].balance == Decimal("100.00")
    assert report.transfer_rows == 80


async def test_concurrent_spending_cannot_overdraw(live_api: Api) -> None:
    """10 transfers of 30.00 at once from a balance of 100.00: exactly 3 can succeed."""
    _, users = await members(live_api, 6, "100.00")
    spender, others = users[0], users[1:]
    calls = [transfer_call(live_api, spender, others[i % 5], Decimal("30.00")) for i in range(10)]

    responses = await bounded(calls)

    assert unexpected(responses, {201, 409}) == []
    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 7
    report = await assert_ledger_invariants(live_api.state)
    assert report.rows[spender.id].balance == Decimal("10.00")
    assert report.transfer_rows == 3


async def count_with_key(api: Api, sender: Member, key: str) -> int:
    async with api.state.db.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Transfer)
            .where(Transfer.from_user_id == sender.id, Transfer.idempotency_key == key)
        )
    return int(count or 0)


async def test_concurrent_replays_of_one_key_move_money_once(live_api: Api) -> None:
    _, (sender, recipient) = await members(live_api, 2, "100.00")
    key = "pay-invoice-42"

    responses = await bounded(
        [transfer_call(live_api, sender, recipient, Decimal("12.34"), key) for _ in range(20)]
    )

    assert unexpected(responses, {201}) == []
    bodies: list[dict[str, Any]] = [r.json() for r in responses]
    assert len({body["id"] for body in bodies}) == 1
    assert all(body == bodies[0] for body in bodies)
    # the one that made it says nothing; the 19 others say they replayed it
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19
    assert await count_with_key(live_api, sender, key) == 1
    report = await assert_ledger_invariants(live_api.state)
    assert report.rows[sender.id].balance == Decimal("87.66")
    assert report.rows[recipient.id].balance == Decimal("112.34")
    assert report.transfer_rows == 1


async def test_concurrent_reuse_of_a_key_with_two_bodies_keeps_one(live_api: Api) -> None:
    """One body wins the key: its twins replay it (201, same id), the other body gets 409."""
    _, (sender, r1, r2) = await members(live_api, 3, "100.00")
    key = "one-key-two-bodies"
    targets = [r1 if i % 2 else r2 for i in range(20)]

    responses = await bounded(
        [transfer_call(live_api, sender, to, Decimal("10.00"), key) for to in targets]
    )

    assert unexpected(responses, {201, 409}) == []
    winners = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(winners) == 1
    winner_to = next(r.json()["to_user_id"] for r in responses if r.status_code == 201)
    for to, response in zip(targets, responses, strict=True):
        assert response.status_code == (201 if to.id == winner_to else 409), response.text
    assert await count_with_key(live_api, sender, key) == 1
    report = await assert_ledger_invariants(live_api.state)
    assert report.rows[sender.id].balance == Decimal("90.00")
    assert report.rows[winner_to].balance == Decimal("110.00")
    assert report.transfer_rows == 1


async def test_money_edits_and_deletions_at_once_keep_every_invariant(live_api: Api) -> None:
    """The Jepsen-style run with the rest of what changes a user at the same time: transfers,
    deposits, PATCHes with If-Match, and deletions of users who emptied their balance (one of
    them racing a payment into it). The ledger invariants hold at every sampled moment and at
    the end, no deleted user took money with it, and every surviving row's version counts
    exactly the changes made to it."""
    rng = random.Random(SEED + 1)
    admin, users = await members(live_api, 8, "20.00")
    leavers, stayers = users[:3], users[3:]
    seen_versions = {
        u.id: (await live_api.client.get("/users/me", headers=u.headers)).json()["version"]
        for u in users
    }
    calls: list[Callable[[], Awaitable[httpx.Response]]] = []
    kinds: list[tuple[str, Member]] = []

    def add(kind: str, who: Member, call: Callable[[], Awaitable[httpx.Response]]) -> None:
        kinds.append((kind, who))
        calls.append(call)

    for leaver in leavers:  # a leaver sends all it has away first
        for _ in range(4):
            add("pay", leaver, transfer_call(live_api, leaver, rng.choice(stayers), Decimal(5)))
    for i in range(120):
        a, b = rng.sample(stayers, 2)
        add("pay", a, transfer_call(live_api, a, b, Decimal(rng.randint(1, 900)).scaleb(-2)))
        if i % 12 == 0:
            to = rng.choice(stayers)
            add(
                "deposit",
                to,
                functools.partial(
                    live_api.client.post,
                    f"/admin/users/{to.id}/deposit",
                    json={"amount": "1.00"},
                    headers=admin,
                ),
            )
        if i % 9 == 0:  # an edit with the version seen at the start: only the first can hold
            who = rng.choice(stayers)
            add(
                "edit",
                who,
                functools.partial(
                    live_api.client.patch,
                    f"/users/{who.id}",
                    json={"username": f"edited_{who.id}_{i}"},
                    headers=who.headers | {"If-Match": f'"{seen_versions[who.id]}"'},
                ),
            )

    async def leave(leaver: Member) -> httpx.Response:
        """Once its own payouts went through (they may still queue behind the stayers' row
        locks when this call starts): the deletion then races only the payment into it."""
        for _ in range(200):  # at most 10 s
            me = await live_api.client.get("/users/me", headers=leaver.headers)
            if Decimal(me.json()["balance"]) <= Decimal("0.01"):  # paid out (0.01: paid in)
                break
            await asyncio.sleep(0.05)
        return await live_api.client.delete(f"/users/{leaver.id}", headers=leaver.headers)

    for leaver in leavers:
        add("delete", leaver, functools.partial(leave, leaver))
    add("pay in", leavers[0], transfer_call(live_api, stayers[0], leavers[0], Decimal("0.01")))

    async with watching_invariants(live_api.state) as snapshots:
        responses = await bounded(calls)
    assert len(snapshots) > 1, "the invariants were sampled only once while the run went on"

    allowed = {
        "pay": {201, 409},
        "deposit": {201},
        "edit": {200, 412},
        "delete": {204, 409},
        "pay in": {201, 404},
    }
    for (kind, who), response in zip(kinds, responses, strict=True):
        assert response.status_code in allowed[kind], (kind, who.id, response.text)
    deleted = {
        who.id for (kind, who), r in zip(kinds, responses, strict=True) if r.status_code == 204
    }
    assert len(deleted) >= 2, "the leavers that only paid out must have been deleted"

    report = await assert_ledger_invariants(live_api.state)
    assert report.total_balances == report.total_deposits
    for user_id in deleted:
        assert user_id not in report.rows
        assert (await live_api.client.get(f"/users/{user_id}")).status_code == 404
    # versions: 1 + every ledger row that moved the user's balance + every edit that was made
    edits = Counter(
        who.id
        for (kind, who), r in zip(kinds, responses, strict=True)
        if kind == "edit" and r.status_code == 200
    )
    assert all(n == 1 for n in edits.values()), edits  # one If-Match, one edit at most
    async with live_api.state.db.session() as session:
        moves = dict(
            (
                await session.execute(
                    select(User.id, func.count(Transfer.id))
                    .join(
                        Transfer,
                        (Transfer.to_user_id == User.id) | (Transfer.from_user_id == User.id),
                    )
                    .group_by(User.id)
                )
            ).all()
        )
        versions = dict((await session.execute(select(User.id, User.version))).all())
    for user in users:
        if user.id not in deleted:
            assert versions[user.id] == 1 + moves.get(user.id, 0) + edits[user.id], user.id


async def test_a_key_inserted_between_the_check_and_the_insert_is_replayed(
    live_api: Api, backend: Backend
) -> None:
    """The INSERT race of an Idempotency-Key, forced: another transaction inserts the sender's
    row with the key after the transfer looked the key up (it saw nothing: not committed yet)
    and before the transfer's own INSERT, which then waits for it. When it commits, the
    transfer's INSERT breaks the unique constraint, nothing the attempt did stays, and the
    answer is a replay of the other row, with `Idempotent-Replayed: true`. (SQLite has one
    writer: the transfer waits for the other transaction before it begins, then finds the key
    with its lookup; the same answer.)"""
    _, (sender, recipient) = await members(live_api, 2, "100.00")
    key, amount = "race-1", Decimal("7.00")
    print_ = fingerprint(TransferCreate(to_user_id=recipient.id, amount=amount))
    engine = backend.engine
    async with engine.connect() as other:
        await other.begin()
        inserted = await other.execute(
            insert(Transfer)
            .values(
                from_user_id=sender.id,
                to_user_id=recipient.id,
                amount=amount,
                idempotency_key=key,
                request_fingerprint=print_,
            )
            .returning(Transfer.id)
        )
        other_id = inserted.scalar_one()
        sent = asyncio.create_task(transfer_call(live_api, sender, recipient, amount, key)())
        await waits_for_another_transaction(backend, live_api.state, sent)
        await other.commit()
    response = await asyncio.wait_for(sent, 30)

    assert response.status_code == 201, response.text
    assert response.headers.get("idempotent-replayed") == "true"
    assert response.json()["id"] == other_id
    assert await count_with_key(live_api, sender, key) == 1
    # The transfer's attempt moved nothing (the other row is bookkeeping only: no money moved).
    rows = await balances(live_api.state, sender.id, recipient.id)
    assert rows == [Decimal("100.00"), Decimal("100.00")]


async def balances(state: AppState, *ids: int) -> list[Decimal]:
    async with state.db.session() as session:
        found = await session.execute(select(User.id, User.balance).where(User.id.in_(ids)))
        by_id = {row[0]: row[1] for row in found}
    return [by_id[i] for i in ids]
