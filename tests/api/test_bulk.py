"""Admin bulk operations on users, and concurrent registration (API.md, "Users: Bulk")."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.fixtures.app import Api
from tests.fixtures.contract import PRIVATE_KEYS

PASSWORD = "password123"


def entry(username: str, email: str | None = None, password: str = PASSWORD) -> dict[str, str]:
    return {
        "username": username,
        "email": f"{username}@example.com" if email is None else email,
        "password": password,
    }


async def count(api: Api) -> int:
    response = await api.client.get("/users/count")
    assert response.status_code == 200, response.text
    value: int = response.json()["count"]
    return value


async def bulk_delete(api: Api, ids: list[Any], headers: dict[str, str]) -> httpx.Response:
    return await api.client.request("DELETE", "/users/bulk", json={"ids": ids}, headers=headers)


async def new_post(api: Api, headers: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post(
        "/posts", json={"title": "title", "content": "content"}, headers=headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def login_status(api: Api, username: str) -> httpx.Response:
    return await api.client.post("/auth/token", data={"username": username, "password": PASSWORD})


# ------------------------------------------------------------------------------- who may


async def test_bulk_routes_need_an_admin(api: Api) -> None:
    victim, victim_headers = await api.user()
    _, headers = await api.user()
    requests: list[tuple[str, dict[str, Any]]] = [
        ("POST", {"users": [entry("newbie")]}),
        ("PATCH", {"ids": [victim["id"]], "values": {"is_active": False}}),
        ("DELETE", {"ids": [victim["id"]]}),
    ]
    for method, payload in requests:
        anonymous = await api.client.request(method, "/users/bulk", json=payload)
        assert anonymous.status_code == 401, (method, anonymous.text)
        assert anonymous.headers.get("WWW-Authenticate") == "Bearer"
        normal = await api.client.request(method, "/users/bulk", json=payload, headers=headers)
        assert normal.status_code == 403, (method, normal.text)
        assert isinstance(normal.json()["detail"], str)
    # nothing happened
    assert await count(api) == 2
    me = await api.client.get("/users/me", headers=victim_headers)
    assert me.status_code == 200
    assert me.json()["is_active"] is True


# ------------------------------------------------------------------------------- POST /users/bulk


async def test_bulk_create_all(api: Api) -> None:
    admin, headers = await api.admin()
    users = [entry("bulk_a"), entry("bulk_b", "Bulk.B@Example.COM"), entry("bulk_c")]
    response = await api.client.post("/users/bulk", json={"users": users}, headers=headers)
    assert response.status_code == 201, response.text
    data = response.json()
    assert set(data) == {"created", "skipped"}
    assert data["skipped"] == []
    created = data["created"]
    assert [u["username"] for u in created] == ["bulk_a", "bulk_b", "bulk_c"]
    assert [u["email"] for u in created] == [
        "bulk_a@example.com",
        "bulk.b@example.com",
        "bulk_c@example.com",
    ]
    for user in created:
        assert set(user) == PRIVATE_KEYS
        assert user["balance"] == "0.00"
        assert user["is_admin"] is False
        assert user["is_active"] is True
        created_at = dt.datetime.fromisoformat(user["created_at"])
        assert created_at.utcoffset() == dt.timedelta(0)
    ids = [u["id"] for u in created]
    assert len(set(ids)) == 3
    assert await count(api) == 4

    # they are real users: they can log in and are listed
    for user in created:
        token = await login_status(api, user["username"])
        assert token.status_code == 200, token.text
    listed = (await api.client.get("/users", headers=headers)).json()
    assert [u["id"] for u in listed] == sorted([admin["id"], *ids])
    async with api.state.db.session() as session:
        hashes = (
            await session.scalars(
                text("SELECT hashed_password FROM users WHERE id IN (:a, :b, :c)"),
                dict(zip("abc", ids, strict=True)),
            )
        ).all()
    assert len(hashes) == 3
    assert all(h.startswith("$argon2") for h in hashes)
    assert len(set(hashes)) == 3  # salted


async def test_bulk_create_explicit_abort(api: Api) -> None:
    _, headers = await api.admin()
    response = await api.client.post(
        "/users/bulk", json={"users": [entry("one")], "on_conflict": "abort"}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert [u["username"] for u in response.json()["created"]] == ["one"]


def conflicting_batch() -> list[dict[str, str]]:
    """Index 1 takes an existing username (other case), index 3 repeats index 0's email."""
    return [
        entry("fresh0", "fresh0@example.com"),
        entry("ALICE", "notalice@example.com"),
        entry("fresh2"),
        entry("fresh3", "FRESH0@example.com"),
        entry("fresh4"),
    ]


async def test_bulk_create_abort_writes_nothing(api: Api) -> None:
    await api.register("alice")
    _, headers = await api.admin()
    before = await count(api)
    response = await api.client.post(
        "/users/bulk", json={"users": conflicting_batch()}, headers=headers
    )
    assert response.status_code == 409, response.text
    data = response.json()
    assert set(data) == {"detail", "conflicts"}
    assert isinstance(data["detail"], str) and data["detail"]
    assert data["conflicts"] == [1, 3]
    assert await count(api) == before
    for name in ("fresh0", "fresh2", "fresh4"):
        assert (await login_status(api, name)).status_code == 401


async def test_bulk_create_abort_on_repeated_username_within_batch(api: Api) -> None:
    _, headers = await api.admin()
    users = [entry("twin", "a@example.com"), entry("other"), entry("TWIN", "b@example.com")]
    response = await api.client.post("/users/bulk", json={"users": users}, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["conflicts"] == [2]
    assert await count(api) == 1


async def test_bulk_create_abort_on_taken_email(api: Api) -> None:
    await api.register("alice", email="alice@example.com")
    _, headers = await api.admin()
    users = [entry("newone"), entry("newtwo", "Alice@Example.com")]
    response = await api.client.post("/users/bulk", json={"users": users}, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["conflicts"] == [1]
    assert await count(api) == 2


async def test_bulk_create_skip_creates_the_rest(api: Api) -> None:
    await api.register("alice")
    _, headers = await api.admin()
    before = await count(api)
    response = await api.client.post(
        "/users/bulk", json={"users": conflicting_batch(), "on_conflict": "skip"}, headers=headers
    )
    assert response.status_code == 201, response.text
    data = response.json()
    assert set(data) == {"created", "skipped"}
    assert data["skipped"] == [1, 3]
    assert [u["username"] for u in data["created"]] == ["fresh0", "fresh2", "fresh4"]
    assert data["created"][0]["email"] == "fresh0@example.com"
    for user in data["created"]:
        assert set(user) == PRIVATE_KEYS
        assert user["is_admin"] is False
        assert user["balance"] == "0.00"
    assert await count(api) == before + 3
    assert (await login_status(api, "fresh2")).status_code == 200
    assert (await login_status(api, "fresh3")).status_code == 401
    # the existing alice is untouched
    listed = (await api.client.get("/users", headers=headers)).json()
    alices = [u for u in listed if u["username"].lower() == "alice"]
    assert len(alices) == 1
    assert alices[0]["email"] == "alice@example.com"


async def test_bulk_create_skip_everything(api: Api) -> None:
    await api.register("alice")
    _, headers = await api.admin()
    response = await api.client.post(
        "/users/bulk",
        json={"users": [entry("Alice", "x@example.com")], "on_conflict": "skip"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"created": [], "skipped": [0]}
    assert await count(api) == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"users": []},
        {},
        {"users": [entry("ok_name")], "on_conflict": "replace"},
        {"users": [entry("ab")]},
        {"users": [entry("ok_name", password="short")]},
        {"users": [entry("ok_name", email="not-an-email")]},
        {"users": [entry("ok_name"), {"username": "no_email", "password": PASSWORD}]},
    ],
)
async def test_bulk_create_validation(api: Api, payload: dict[str, Any]) -> None:
    _, headers = await api.admin()
    response = await api.client.post("/users/bulk", json=payload, headers=headers)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await count(api) == 1


async def test_bulk_create_more_than_1000_is_422(api: Api) -> None:
    _, headers = await api.admin()
    users = [entry(f"u{i:04d}") for i in range(1001)]
    response = await api.client.post("/users/bulk", json={"users": users}, headers=headers)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await count(api) == 1


# ------------------------------------------------------------------------------- PATCH /users/bulk


async def test_bulk_deactivate_and_reactivate(api: Api) -> None:
    a, a_headers = await api.user()
    b, _ = await api.user()
    c, c_headers = await api.user()
    _, headers = await api.admin()
    missing = c["id"] + 1000

    response = await api.client.patch(
        "/users/bulk",
        json={"ids": [a["id"], b["id"], missing], "values": {"is_active": False}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 2}

    for user in (a, b):
        login = await login_status(api, user["username"])
        assert login.status_code == 400, login.text
        assert login.json() == {"detail": "Inactive user"}
    assert (await api.client.get("/users/me", headers=a_headers)).status_code == 401
    # c is untouched
    assert (await login_status(api, c["username"])).status_code == 200
    assert (await api.client.get("/users/me", headers=c_headers)).json()["is_active"] is True
    listed = {u["id"]: u for u in (await api.client.get("/users")).json()}
    assert listed[a["id"]]["is_active"] is False
    assert listed[b["id"]]["is_active"] is False
    assert listed[c["id"]]["is_active"] is True

    response = await api.client.patch(
        "/users/bulk",
        json={"ids": [a["id"], b["id"]], "values": {"is_active": True}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 2}
    assert (await login_status(api, a["username"])).status_code == 200
    # reactivation does not bring the tokens of before back (API.md, "Sessions")
    assert (await api.client.get("/users/me", headers=a_headers)).status_code == 401


async def test_bulk_update_counts_only_existing_ids(api: Api) -> None:
    a = await api.register()
    _, headers = await api.admin()
    response = await api.client.patch(
        "/users/bulk",
        json={"ids": [a["id"] + 500, a["id"] + 501], "values": {"is_active": False}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 0}
    assert (await login_status(api, a["username"])).status_code == 200


async def test_bulk_update_repeated_id_counts_once(api: Api) -> None:
    a = await api.register()
    _, headers = await api.admin()
    response = await api.client.patch(
        "/users/bulk",
        json={"ids": [a["id"], a["id"]], "values": {"is_active": False}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 1}
    assert (await login_status(api, a["username"])).status_code == 400


@pytest.mark.parametrize(
    "payload",
    [
        {"ids": [], "values": {"is_active": False}},
        {"ids": [1], "values": {}},
        {"ids": [1], "values": {"is_active": None}},
        {"ids": [1], "values": {"is_admin": True}},
        {"ids": [1], "values": {"is_active": False, "balance": "5.00"}},
        {"ids": [0], "values": {"is_active": False}},
        {"ids": ["x"], "values": {"is_active": False}},
        {"values": {"is_active": False}},
    ],
)
async def test_bulk_update_validation(api: Api, payload: dict[str, Any]) -> None:
    user = await api.register()
    _, headers = await api.admin()
    payload = {**payload}
    if payload.get("ids") == [1]:
        payload["ids"] = [user["id"]]
    response = await api.client.patch("/users/bulk", json=payload, headers=headers)
    assert response.status_code == 422, response.text
    assert (await login_status(api, user["username"])).status_code == 200
    me = (await api.client.get(f"/users/{user['id']}", headers=headers)).json()
    assert me["is_admin"] is False
    assert me["balance"] == "0.00"


# ------------------------------------------------------------------------------- DELETE /users/bulk


async def test_bulk_delete(api: Api) -> None:
    a, a_headers = await api.user()
    b, b_headers = await api.user()
    c, c_headers = await api.user()
    _, headers = await api.admin()
    a_post = await new_post(api, a_headers)
    b_post = await new_post(api, b_headers)
    c_post = await new_post(api, c_headers)
    before = await count(api)

    response = await bulk_delete(api, [a["id"], b["id"], c["id"] + 1000], headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 2, "refused": []}
    assert await count(api) == before - 2

    for user, post in ((a, a_post), (b, b_post)):
        gone = await api.client.get(f"/users/{user['id']}")
        assert gone.status_code == 404
        assert gone.json() == {"detail": "User not found"}
        post_gone = await api.client.get(f"/posts/{post['id']}")
        assert post_gone.status_code == 404
        assert post_gone.json() == {"detail": "Post not found"}
    assert (await api.client.get("/users/me", headers=a_headers)).status_code == 401
    assert (await api.client.get(f"/users/{c['id']}")).json()["posts"] == [c_post]
    async with api.state.db.session() as session:
        orphans = await session.scalar(
            text("SELECT COUNT(*) FROM posts WHERE author_id IN (:a, :b)"),
            {"a": a["id"], "b": b["id"]},
        )
    assert orphans == 0

    # deleting them again deletes nothing
    response = await bulk_delete(api, [a["id"], b["id"]], headers)
    assert response.status_code == 200
    assert response.json() == {"deleted": 0, "refused": []}


async def test_bulk_delete_repeated_id_counts_once(api: Api) -> None:
    a = await api.register()
    _, headers = await api.admin()
    response = await bulk_delete(api, [a["id"], a["id"]], headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 1, "refused": []}
    assert await count(api) == 1


async def test_bulk_delete_refuses_users_holding_money_and_deletes_the_rest(api: Api) -> None:
    _, headers = await api.admin()
    rich, rich_headers = await api.user()
    poor, _ = await api.user()
    spent, spent_headers = await api.user()
    await api.deposit(headers, rich["id"], "10.00")
    await api.deposit(headers, spent["id"], "5.00")
    paid = await api.client.post(
        "/transfers", json={"to_user_id": rich["id"], "amount": "5.00"}, headers=spent_headers
    )
    assert paid.status_code == 201, paid.text

    response = await bulk_delete(api, [spent["id"], rich["id"], poor["id"], 10**6], headers)

    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 2, "refused": [rich["id"]]}
    me = await api.client.get("/users/me", headers=rich_headers)
    assert me.status_code == 200 and me.json()["balance"] == "15.00"
    for gone in (poor, spent):
        assert (await api.client.get(f"/users/{gone['id']}")).status_code == 404
    assert await count(api) == 2  # the admin and the one holding money


@pytest.mark.parametrize("ids", [[], [0], [-1], ["x"], None])
async def test_bulk_delete_validation(api: Api, ids: Any) -> None:
    await api.register()
    _, headers = await api.admin()
    response = await bulk_delete(api, ids, headers)
    assert response.status_code == 422, response.text
    assert await count(api) == 2


# ------------------------------------------------------------------------------- concurrency


@pytest.mark.concurrency
async def test_concurrent_registration_same_email(live_api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(10):
        email = f"race{i}_{tag}@example.com"
        first, second = await asyncio.gather(
            live_api.client.post("/users", json=entry(f"ra{i}_{tag}", email)),
            live_api.client.post("/users", json=entry(f"rb{i}_{tag}", email.upper())),
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [201, 409], (first.text, second.text)
        loser = first if first.status_code == 409 else second
        assert "Email" in loser.json()["detail"], loser.text
        winner = first if first.status_code == 201 else second
        assert winner.json()["email"] == email
    response = await live_api.client.get("/users/count")
    assert response.json() == {"count": 10}
    async with live_api.state.db.session() as session:
        rows = await session.scalar(
            text("SELECT COUNT(*) FROM users WHERE email LIKE :pattern"),
            {"pattern": f"%_{tag}@example.com"},
        )
    assert rows == 10


@pytest.mark.concurrency
async def test_concurrent_registration_same_username(live_api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(10):
        name = f"rn{i}_{tag}"
        first, second = await asyncio.gather(
            live_api.client.post("/users", json=entry(name, f"x{i}_{tag}@example.com")),
            live_api.client.post("/users", json=entry(name.upper(), f"y{i}_{tag}@example.com")),
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [201, 409], (first.text, second.text)
        loser = first if first.status_code == 409 else second
        assert "Username" in loser.json()["detail"], loser.text
    assert (await live_api.client.get("/users/count")).json() == {"count": 10}
