"""FastAPI's `app.dependency_overrides` reaches every route (they are added to the app's own
route list, not included as nested routers): the caller (`optional_user`, `current_caller`,
`token_claims`), the page parameters and the bulk session, each on a route that uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from asyncblog.api.app import create_app
from asyncblog.api.deps import (
    Page,
    bulk_service,
    current_caller,
    optional_user,
    page_params,
    token_claims,
)
from asyncblog.api.state import AppState
from asyncblog.security import AccessClaims
from asyncblog.services.auth import Caller
from asyncblog.services.users import BulkUsers
from tests.fixtures.app import Api, client_of


async def test_an_override_reaches_the_spliced_routes(api: Api, state: AppState) -> None:
    user = await api.register()
    app = create_app(state=state)

    async def an_admin() -> Caller:
        return Caller(id=0, is_admin=True)

    async with client_of(app) as client:
        anonymous = await client.get(f"/users/{user['id']}")
        assert anonymous.status_code == 200
        assert "email" not in anonymous.json()

        app.dependency_overrides[optional_user] = an_admin
        as_admin = await client.get(f"/users/{user['id']}")
        assert as_admin.status_code == 200
        assert as_admin.json()["email"] == user["email"]  # the private view: the override ran

        app.dependency_overrides.clear()
        again = await client.get(f"/users/{user['id']}")
        assert "email" not in again.json()


async def test_an_override_of_the_token_claims_reaches_post_posts(
    api: Api, state: AppState
) -> None:
    """`token_claims` overridden with a user's claims: `POST /posts` without a token writes as
    that user (its INSERT checks the claims it was handed); without the override, 401."""
    user, auth = await api.user()
    claims = state.tokens.decode(auth["Authorization"].removeprefix("Bearer "))
    assert claims is not None
    app = create_app(state=state)

    async def as_user() -> AccessClaims:
        return claims

    body = {"title": "by override", "content": "c"}
    async with client_of(app) as client:
        assert (await client.post("/posts", json=body)).status_code == 401
        app.dependency_overrides[token_claims] = as_user
        created = await client.post("/posts", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["author_id"] == user["id"]


async def test_an_override_of_the_caller_reaches_get_transfers(api: Api, state: AppState) -> None:
    """`current_caller` overridden: `GET /transfers` without a token answers for the caller
    the override names (its deposit); without the override, 401."""
    _, admin = await api.admin()
    user = await api.register()
    await api.deposit(admin, user["id"], "3.00")
    app = create_app(state=state)

    async def as_user() -> Caller:
        return Caller(id=user["id"], is_admin=False)

    async with client_of(app) as client:
        assert (await client.get("/transfers")).status_code == 401
        app.dependency_overrides[current_caller] = as_user
        history = await client.get("/transfers")
        assert history.status_code == 200, history.text
        assert [(t["to_user_id"], t["amount"]) for t in history.json()] == [(user["id"], "3.00")]


async def test_an_override_of_the_page_parameters_reaches_get_posts(
    api: Api, state: AppState
) -> None:
    """`page_params` overridden with skip 1, limit 1: `GET /posts` without query parameters
    answers the second post only."""
    _, auth = await api.user()
    ids = []
    for n in range(3):
        created = await api.client.post(
            "/posts", json={"title": f"p{n}", "content": "c"}, headers=auth
        )
        ids.append(created.json()["id"])
    app = create_app(state=state)

    async def second_only() -> Page:
        return Page(skip=1, limit=1, after_id=None)

    async with client_of(app) as client:
        assert [p["id"] for p in (await client.get("/posts")).json()] == ids
        app.dependency_overrides[page_params] = second_only
        assert [p["id"] for p in (await client.get("/posts")).json()] == [ids[1]]


async def test_an_override_of_the_bulk_session_reaches_the_bulk_routes(
    api: Api, state: AppState
) -> None:
    """`bulk_service` overridden: `PATCH /users/bulk` runs on the session the override yields
    (the override ran, once) and the change is made."""
    _, admin = await api.admin()
    user = await api.register()
    app = create_app(state=state)
    yielded: list[BulkUsers] = []

    async def own_bulk() -> AsyncIterator[BulkUsers]:
        async with state.db.write_session() as session:
            yielded.append(BulkUsers(session, state.hasher))
            yield yielded[-1]

    app.dependency_overrides[bulk_service] = own_bulk
    body = {"ids": [user["id"]], "values": {"is_active": False}}
    async with client_of(app) as client:
        updated = await client.patch("/users/bulk", json=body, headers=admin)
        assert updated.status_code == 200, updated.text
        assert updated.json() == {"updated": 1}
        assert len(yielded) == 1
        assert (await client.get(f"/users/{user['id']}")).json()["is_active"] is False
