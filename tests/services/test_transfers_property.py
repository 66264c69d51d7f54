"""A property test: random deposits and transfers through TransferService agree with a model.

The model is a dict of balances: a deposit always succeeds; a transfer fails with Invalid when
sender and recipient are the same user, with Conflict("Insufficient balance") when the sender has
less than the amount, and otherwise moves exactly the amount. Every example runs in its own
SAVEPOINT on the test's connection, rolled back at its end, so examples do not see each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncblog.api.state import AppState
from asyncblog.errors import Conflict, Invalid, ServiceError
from asyncblog.models import User
from asyncblog.repositories import UserRepository
from asyncblog.schemas import TransferCreate
from asyncblog.security import AccessClaims
from asyncblog.services.transfers import TransferService
from tests.fixtures.ledger import assert_ledger_invariants

USERS = 4
HASH = "not-a-real-hash"
MAX_EXAMPLES = 25

Deposit = tuple[Literal["deposit"], int, Decimal]
Send = tuple[Literal["transfer"], int, int, Decimal]
Op = Deposit | Send
# A transfer of the sender's balance (per the model) plus an offset: right at the boundary.
SendBalance = tuple[Literal["send_balance"], int, int, Decimal]
CENT = Decimal("0.01")
Outcome = Literal["ok", "insufficient", "self"]

user_index = st.integers(min_value=0, max_value=USERS - 1)
# Round amounts often make a balance exactly equal to an amount (the boundary that must pass).
amounts = st.one_of(
    st.sampled_from([Decimal(v) for v in ("0.01", "10.00", "25.00", "50.00", "100.00")]),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("150.00"), places=2),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), user_index, amounts),
        st.tuples(st.just("transfer"), user_index, user_index, amounts),
        st.tuples(
            st.just("send_balance"),
            user_index,
            user_index,
            st.sampled_from([-CENT, 0 * CENT, CENT]),
        ),
    ),
    min_size=5,
    max_size=30,
)


@pytest.fixture
def examples_run() -> Iterator[list[int]]:
    """Proves that hypothesis really ran the async test body many times (not once, not zero)."""
    runs: list[int] = []
    yield runs
    assert len(runs) >= MAX_EXAMPLES // 2, f"only {len(runs)} examples ran"


async def create_users(state: AppState, tag: int) -> list[int]:
    async with state.db.write_session() as session:
        repo = UserRepository(session)
        users = [
            await repo.create(
                username=f"prop{tag}_{i}",
                email=f"prop{tag}_{i}@example.com",
                hashed_password=HASH,
            )
            for i in range(USERS)
        ]
        await session.commit()
        return [user.id for user in users]


async def apply(state: AppState, op: Op, ids: list[int]) -> Outcome:
    """One operation as one request would do it: one unit of work of the data path."""
    service = TransferService(state.db)
    if op[0] == "deposit":
        _, to, amount = op
        transfer = json.loads(await service.deposit(ids[to], amount))
        assert (transfer["from_user_id"], transfer["to_user_id"]) == (None, ids[to])
        assert Decimal(transfer["amount"]) == amount
        return "ok"
    _, sender_index, to, amount = op
    claims = AccessClaims(ids[sender_index], token_version=1)
    try:
        result = await service.transfer(claims, TransferCreate(to_user_id=ids[to], amount=amount))
    except Invalid:
        return "self"
    except Conflict as exc:
        assert exc.detail == "Insufficient balance"
        return "insufficient"
    except ServiceError as exc:  # pragma: no cover - reported with its detail
        raise AssertionError(f"{op}: unexpected {type(exc).__name__}({exc.detail})") from exc
    assert not result.replayed
    transfer = json.loads(result.view)
    assert (transfer["from_user_id"], transfer["to_user_id"]) == (ids[sender_index], ids[to])
    assert Decimal(transfer["amount"]) == amount
    return "ok"


def concrete(op: Op | SendBalance, balances: list[Decimal]) -> Op:
    if op[0] != "send_balance":
        return op
    _, a, b, offset = op
    return ("transfer", a, b, max(balances[a] + offset, CENT))


def model_step(balances: list[Decimal], op: Op) -> Outcome:
    if op[0] == "deposit":
        balances[op[1]] += op[2]
        return "ok"
    _, a, b, amount = op
    if a == b:
        return "self"
    if balances[a] < amount:
        return "insufficient"
    balances[a] -= amount
    balances[b] += amount
    return "ok"


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
async def test_transfer_service_matches_the_balance_model(
    state: AppState,
    connection: AsyncConnection,
    examples_run: list[int],
    ops: list[Op | SendBalance],
) -> None:
    examples_run.append(len(ops))
    savepoint = await connection.begin_nested()
    try:
        ids = await create_users(state, len(examples_run))
        model = [Decimal("0.00")] * USERS
        for step, drawn in enumerate(ops):
            op = concrete(drawn, model)
            expected = model_step(model, op)
            actual = await apply(state, op, ids)
            assert actual == expected, f"step {step}: {op}"

        async with state.db.session() as session:
            result = await session.execute(select(User.id, User.balance).where(User.id.in_(ids)))
            rows = {user_id: balance for user_id, balance in result}
        assert [rows[i] for i in ids] == model
        report = await assert_ledger_invariants(state)
        assert report.total_deposits == sum(
            (op[2] for op in ops if op[0] == "deposit"), Decimal("0.00")
        )
    finally:
        await savepoint.rollback()
