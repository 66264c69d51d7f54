"""Users: registration, listing, profiles, changes and deletion (API.md, "Users")."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.fixtures.app import Api
from tests.fixtures.contract import POST_KEYS, PRIVATE_KEYS, PUBLIC_KEYS

PASSWORD = "password123"


def body(username: str, email: str | None = None, password: str = PASSWORD) -> dict[str, str]:
    return {
        "username": username,
        "email": f"{username}@example.com" if email is None else email,
        "password": password,
    }


def assert_utc_timestamp(value: Any) -> None:
    assert isinstance(value, str)
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    assert parsed.utcoffset() == dt.timedelta(0), value


async def row_of(api: Api, user_id: int) -> Any:
    async with api.state.db.session() as session:
        result = await session.execute(
            text(
                "SELECT username, email, hashed_password, is_admin, balance"
                " FROM users WHERE id = :id"
            ),
            {"id": user_id},
        )
        return result.one_or_none()


async def count(api: Api) -> int:
    response = await api.client.get("/users/count")
    assert response.status_code == 200, response.text
    value: int = response.json()["count"]
    return value


async def new_post(api: Api, headers: dict[str, str], title: str = "A title") -> dict[str, Any]:
    response = await api.client.post(
        "/posts", json={"title": title, "content": f"content of {title}"}, headers=headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def token_for(api: Api, username: str, password: str = PASSWORD) -> httpx.Response:
    return await api.client.post("/auth/token", data={"username": username, "password": password})


# ------------------------------------------------------------------------------- POST /users


async def test_register_returns_private_view(api: Api) -> None:
    response = await api.client.post(
        "/users", json=body("alice", "Alice.Smith@Example.COM", "s3cret-password")
    )
    assert response.status_code == 201, response.text
    data = response.json()
    assert set(data) == PRIVATE_KEYS
    assert isinstance(data["id"], int) and data["id"] >= 1
    assert data["username"] == "alice"
    assert data["email"] == "alice.smith@example.com"
    assert data["balance"] == "0.00"
    assert data["is_admin"] is False
    assert data["is_active"] is True
    assert_utc_timestamp(data["created_at"])
    created = dt.datetime.fromisoformat(data["created_at"])
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(hours=1)

    row = await row_of(api, data["id"])
    assert row is not None
    assert row.email == "alice.smith@example.com"
    assert row.hashed_password.startswith("$argon2")
    assert "s3cret-password" not in row.hashed_password
    assert await count(api) == 1


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # 2 chars
        "a" * 51,
        "with space",
        "at@sign",
        "slash/no",
        "plus+no",
        "ümlaut",
        " abc",
        "abc\n",
        "",
    ],
)
async def test_register_rejects_bad_usernames(api: Api, username: str) -> None:
    response = await api.client.post("/users", json=body(username, "someone@example.com"))
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await count(api) == 0


@pytest.mark.parametrize("username", ["abc", "a" * 50, "A.b_c-9", "___", "..."])
async def test_register_accepts_username_bounds_and_charset(api: Api, username: str) -> None:
    response = await api.client.post("/users", json=body(username, "someone@example.com"))
    assert response.status_code == 201, response.text
    assert response.json()["username"] == username


@pytest.mark.parametrize("password", ["x" * 7, "x" * 129, ""])
async def test_register_rejects_bad_passwords(api: Api, password: str) -> None:
    response = await api.client.post("/users", json=body("alice", password=password))
    assert response.status_code == 422, response.text
    assert await count(api) == 0


@pytest.mark.parametrize("password", ["x" * 8, "y" * 128])
async def test_register_accepts_password_bounds(api: Api, password: str) -> None:
    response = await api.client.post("/users", json=body("alice", password=password))
    assert response.status_code == 201, response.text
    assert (await token_for(api, "alice", password)).status_code == 200


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@", "@example.com", "a b@example.com", "a@@example.com", ""]
)
async def test_register_rejects_invalid_email(api: Api, email: str) -> None:
    response = await api.client.post("/users", json=body("alice", email))
    assert response.status_code == 422, response.text
    assert await count(api) == 0


@pytest.mark.parametrize("missing", ["username", "email", "password"])
async def test_register_rejects_missing_fields(api: Api, missing: str) -> None:
    data = body("alice")
    del data[missing]
    response = await api.client.post("/users", json=data)
    assert response.status_code == 422, response.text
    assert any(missing in err["loc"] for err in response.json()["detail"])
    assert await count(api) == 0


async def test_register_rejects_wrong_types_and_non_json(api: Api) -> None:
    response = await api.client.post(
        "/users", json={"username": 12345, "email": "a@example.com", "password": PASSWORD}
    )
    assert response.status_code == 422
    response = await api.client.post("/users", json=[body("alice")])
    assert response.status_code == 422
    response = await api.client.post(
        "/users", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert await count(api) == 0


async def test_register_ignores_balance_and_is_admin(api: Api) -> None:
    response = await api.client.post(
        "/users", json={**body("mallory"), "balance": "1000000.00", "is_admin": True, "id": 777}
    )
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["is_admin"] is False
    assert data["balance"] == "0.00"
    row = await row_of(api, data["id"])
    assert not row.is_admin
    headers = await api.login("mallory")
    me = (await api.client.get("/users/me", headers=headers)).json()
    assert me["is_admin"] is False
    assert me["balance"] == "0.00"
    # not an admin: may not use admin routes
    response = await api.client.post(
        "/users/bulk", json={"users": [body("someone")]}, headers=headers
    )
    assert response.status_code == 403


async def test_register_duplicate_username_is_case_insensitive(api: Api) -> None:
    await api.register("alice")
    response = await api.client.post("/users", json=body("ALICE", "other@example.com"))
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "Username" in detail
    assert "Email" not in detail
    assert await count(api) == 1


async def test_register_duplicate_email_is_case_insensitive(api: Api) -> None:
    await api.register("alice", email="alice@example.com")
    response = await api.client.post("/users", json=body("bob", "ALICE@Example.com"))
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "Email" in detail
    assert "Username" not in detail
    assert await count(api) == 1


async def test_register_duplicate_email_named_even_when_value_looks_like_username(
    api: Api,
) -> None:
    """The 409 names the field that collided, whatever the colliding value looks like (MariaDB
    quotes the value in its message, PostgreSQL's detail too)."""
    for n, email in enumerate(("username@example.com", "uq_users_username@example.com")):
        await api.register(f"first{n}", email=email)
        response = await api.client.post("/users", json=body(f"second{n}", email))
        assert response.status_code == 409, response.text
        detail = response.json()["detail"]
        assert "Email" in detail, detail
        assert "Username" not in detail, detail


# ------------------------------------------------------------------------------- GET /users


async def test_list_users_public_for_anonymous_and_normal_user(api: Api) -> None:
    alice, alice_headers = await api.user()
    bob = await api.register()
    for headers in ({}, alice_headers):
        response = await api.client.get("/users", headers=headers)
        assert response.status_code == 200, response.text
        data = response.json()
        assert [u["id"] for u in data] == [alice["id"], bob["id"]]
        for item in data:
            assert set(item) == PUBLIC_KEYS
            assert_utc_timestamp(item["created_at"])
        assert data[0]["username"] == alice["username"]


async def test_list_users_private_for_admin(api: Api) -> None:
    alice = await api.register()
    admin, admin_headers = await api.admin()
    response = await api.client.get("/users", headers=admin_headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [u["id"] for u in data] == [alice["id"], admin["id"]]
    for item in data:
        assert set(item) == PRIVATE_KEYS
        assert item["balance"] == "0.00"
    assert data[0]["email"] == alice["email"]
    assert data[0]["is_admin"] is False
    assert data[1]["is_admin"] is True


async def test_list_users_empty_and_ordered_by_id(api: Api) -> None:
    response = await api.client.get("/users")
    assert response.status_code == 200
    assert response.json() == []
    # names in reverse alphabetical order so an ORDER BY username would show
    created = [await api.register(name) for name in ("zed", "yan", "xia", "wes")]
    data = (await api.client.get("/users")).json()
    ids = [u["id"] for u in data]
    assert ids == [u["id"] for u in created]
    assert ids == sorted(ids)


async def test_list_users_pagination(api: Api) -> None:
    ids = [(await api.register())["id"] for _ in range(6)]

    async def page(**params: Any) -> list[int]:
        response = await api.client.get("/users", params=params)
        assert response.status_code == 200, response.text
        return [u["id"] for u in response.json()]

    assert await page(skip=2, limit=2) == ids[2:4]
    assert await page(limit=3) == ids[:3]
    assert await page(skip=5) == ids[5:]
    assert await page(skip=6) == []
    assert await page(skip=1000) == []
    assert await page(after_id=ids[1]) == ids[2:]
    assert await page(after_id=ids[1], limit=2) == ids[2:4]
    assert await page(after_id=ids[-1]) == []
    assert await page(after_id=0) == ids
    assert await page(limit=100) == ids
    assert await page(limit=1) == ids[:1]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"skip": -1},
        {"limit": "ten"},
        {"skip": "x"},
        {"after_id": "x"},
    ],
)
async def test_list_users_pagination_out_of_range(api: Api, params: dict[str, Any]) -> None:
    await api.register()
    response = await api.client.get("/users", params=params)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


async def test_list_users_skip_or_after_id_far_past_the_end(api: Api) -> None:
    """`skip` has no upper bound in the contract (>= 0) and `after_id` none at all: a value past
    every id or row is an empty page, not a validation error."""
    await api.register()
    for params in ({"skip": 10**10}, {"after_id": 10**10}, {"skip": 2**31 - 1}):
        response = await api.client.get("/users", params=params)
        assert response.status_code == 200, (params, response.text)
        assert response.json() == []


async def test_list_users_default_limit_is_100(api: Api) -> None:
    for _ in range(101):
        await api.register()
    response = await api.client.get("/users")
    assert response.status_code == 200
    first = [u["id"] for u in response.json()]
    assert len(first) == 100
    rest = (await api.client.get("/users", params={"after_id": first[-1]})).json()
    assert len(rest) == 1
    assert rest[0]["id"] > first[-1]
    assert len((await api.client.get("/users", params={"limit": 100})).json()) == 100
    assert (await api.client.get("/users/count")).json() == {"count": 101}


async def test_count_users(api: Api) -> None:
    response = await api.client.get("/users/count")
    assert response.status_code == 200
    assert response.json() == {"count": 0}
    for _ in range(3):
        await api.register()
    assert (await api.client.get("/users/count")).json() == {"count": 3}


# ------------------------------------------------------------------------------- GET /users/me


async def test_me_requires_token(api: Api) -> None:
    response = await api.client.get("/users/me")
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert isinstance(response.json()["detail"], str)


async def test_me_returns_private_view(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.get("/users/me", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == user
    assert set(response.json()) == PRIVATE_KEYS


# ------------------------------------------------------------------------------- GET /users/{id}


async def test_get_user_public_view_with_posts(api: Api) -> None:
    author, headers = await api.user()
    _, other_headers = await api.user()
    posts = [await new_post(api, headers, f"post {i}") for i in range(3)]
    await new_post(api, other_headers, "not alice's")

    for caller in ({}, other_headers):
        response = await api.client.get(f"/users/{author['id']}", headers=caller)
        assert response.status_code == 200, response.text
        data = response.json()
        assert set(data) == PUBLIC_KEYS | {"posts", "posts_total"}
        assert data["id"] == author["id"]
        assert data["username"] == author["username"]
        assert [p["id"] for p in data["posts"]] == [p["id"] for p in posts]
        assert [p["id"] for p in data["posts"]] == sorted(p["id"] for p in posts)
        for post, expected in zip(data["posts"], posts, strict=True):
            assert set(post) == POST_KEYS
            assert "author" not in post
            assert post == expected
            assert post["author_id"] == author["id"]


async def test_get_user_without_posts(api: Api) -> None:
    user = await api.register()
    response = await api.client.get(f"/users/{user['id']}")
    assert response.status_code == 200
    assert response.json()["posts"] == []
    assert set(response.json()) == PUBLIC_KEYS | {"posts", "posts_total"}


async def test_get_user_private_view_for_self_and_admin(api: Api) -> None:
    user, headers = await api.user()
    post = await new_post(api, headers)
    _, admin_headers = await api.admin()
    for caller in (headers, admin_headers):
        response = await api.client.get(f"/users/{user['id']}", headers=caller)
        assert response.status_code == 200, response.text
        data = response.json()
        assert set(data) == PRIVATE_KEYS | {"posts", "posts_total"}
        assert data["email"] == user["email"]
        assert data["balance"] == "0.00"
        assert data["is_admin"] is False
        assert data["posts"] == [post]


@pytest.mark.parametrize("user_id", ["999999", "0", "-1", "99999999999", "2147483648"])
async def test_get_user_not_found(api: Api, user_id: str) -> None:
    await api.register()
    response = await api.client.get(f"/users/{user_id}")
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("user_id", ["abc", "1.5", "1e3"])
async def test_get_user_non_integer_id(api: Api, user_id: str) -> None:
    response = await api.client.get(f"/users/{user_id}")
    assert response.status_code == 422, response.text


# ------------------------------------------------------------------------------- PATCH /users/{id}


async def test_patch_self_username_email_password(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}",
        json={
            "username": "renamed",
            "email": "New.Mail@Example.com",
            "password": "brand-new-pw",
            "current_password": PASSWORD,
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == PRIVATE_KEYS
    assert data["id"] == user["id"]
    assert data["username"] == "renamed"
    assert data["email"] == "new.mail@example.com"
    assert data["balance"] == "0.00"
    assert data["is_admin"] is False

    old = await token_for(api, user["username"], PASSWORD)
    assert old.status_code == 401
    old = await token_for(api, "renamed", PASSWORD)
    assert old.status_code == 401
    assert old.json() == {"detail": "Incorrect username or password"}
    new = await token_for(api, "renamed", "brand-new-pw")
    assert new.status_code == 200, new.text

    row = await row_of(api, user["id"])
    assert row.username == "renamed"
    assert row.email == "new.mail@example.com"
    assert row.hashed_password.startswith("$argon2")
    # A password change ends the tokens issued before it; a new login works.
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 401
    fresh = {"Authorization": f"Bearer {new.json()['access_token']}"}
    me = await api.client.get("/users/me", headers=fresh)
    assert me.json()["username"] == "renamed"


async def test_patch_username_keeps_tokens_valid(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"username": "still-me"}, headers=headers
    )
    assert response.status_code == 200
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["username"] == "still-me"


async def test_patch_empty_body_changes_nothing(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(f"/users/{user['id']}", json={}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == user


async def test_patch_taken_username_or_email_is_409(api: Api) -> None:
    await api.register("taken", email="taken@example.com")
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"username": "TAKEN"}, headers=headers
    )
    assert response.status_code == 409, response.text
    assert "Username" in response.json()["detail"]
    response = await api.client.patch(
        f"/users/{user['id']}",
        json={"email": "Taken@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert response.status_code == 409, response.text
    assert "Email" in response.json()["detail"]
    # nothing changed
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json() == user
    row = await row_of(api, user["id"])
    assert row.username == user["username"]


async def test_patch_to_own_current_values_is_not_a_conflict(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}",
        json={
            "username": user["username"],
            "email": user["email"].upper(),
            "current_password": PASSWORD,
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == user


async def test_patch_own_username_case_change_is_allowed(api: Api) -> None:
    user, headers = await api.user(username="casey")
    response = await api.client.patch(
        f"/users/{user['id']}", json={"username": "Casey"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "Casey"


async def test_patch_another_user_is_403(api: Api) -> None:
    victim = await api.register()
    _, headers = await api.user()
    response = await api.client.patch(
        f"/users/{victim['id']}", json={"username": "hijacked"}, headers=headers
    )
    assert response.status_code == 403, response.text
    assert isinstance(response.json()["detail"], str)
    row = await row_of(api, victim["id"])
    assert row.username == victim["username"]


async def test_patch_requires_token(api: Api) -> None:
    user = await api.register()
    response = await api.client.patch(f"/users/{user['id']}", json={"username": "anon"})
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate") == "Bearer"


async def test_normal_user_cannot_set_is_active_even_on_self(api: Api) -> None:
    user, headers = await api.user()
    for value in (False, True):
        response = await api.client.patch(
            f"/users/{user['id']}", json={"is_active": value}, headers=headers
        )
        assert response.status_code == 403, response.text
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["is_active"] is True


async def test_admin_deactivates_user(api: Api) -> None:
    user, headers = await api.user()
    _, admin_headers = await api.admin()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == PRIVATE_KEYS
    assert data["id"] == user["id"]
    assert data["is_active"] is False
    assert data["username"] == user["username"]

    login = await token_for(api, user["username"])
    assert login.status_code == 400
    assert login.json() == {"detail": "Inactive user"}
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 401
    assert me.headers.get("WWW-Authenticate") == "Bearer"

    # and back
    response = await api.client.patch(
        f"/users/{user['id']}", json={"is_active": True}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["is_active"] is True
    # reactivation does not bring the tokens of before back; a new login works
    assert (await api.client.get("/users/me", headers=headers)).status_code == 401
    assert (await token_for(api, user["username"])).status_code == 200


async def test_admin_can_change_another_users_profile(api: Api) -> None:
    user = await api.register()
    _, admin_headers = await api.admin()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"username": "by_admin"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "by_admin"
    assert response.json()["email"] == user["email"]
    assert response.json()["is_admin"] is False


@pytest.mark.parametrize("field", ["username", "email", "password", "is_active"])
async def test_patch_explicit_null_is_422(api: Api, field: str) -> None:
    user, headers = await api.user()
    _, admin_headers = await api.admin()
    caller = admin_headers if field == "is_active" else headers
    response = await api.client.patch(f"/users/{user['id']}", json={field: None}, headers=caller)
    assert response.status_code == 422, response.text
    row = await row_of(api, user["id"])
    assert row.username == user["username"]
    assert row.email == user["email"]


@pytest.mark.parametrize(
    "change",
    [{"username": "ab"}, {"username": "bad name"}, {"email": "nope"}, {"password": "short"}],
)
async def test_patch_validates_like_registration(api: Api, change: dict[str, str]) -> None:
    user, headers = await api.user()
    response = await api.client.patch(f"/users/{user['id']}", json=change, headers=headers)
    assert response.status_code == 422, response.text


async def test_patch_balance_and_is_admin_are_ignored(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"balance": "500.00", "is_admin": True}, headers=headers
    )
    assert response.status_code in (200, 422), response.text
    row = await row_of(api, user["id"])
    assert not row.is_admin
    me = (await api.client.get("/users/me", headers=headers)).json()
    assert me["balance"] == "0.00"
    assert me["is_admin"] is False


async def test_admin_patch_missing_user_is_404(api: Api) -> None:
    _, admin_headers = await api.admin()
    for user_id in (999999, 99999999999):
        response = await api.client.patch(
            f"/users/{user_id}", json={"is_active": False}, headers=admin_headers
        )
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "User not found"}


# ------------------------------------------------------------------------------- DELETE /users/{id}


async def test_delete_self_cascades_posts(api: Api) -> None:
    user, headers = await api.user()
    other, other_headers = await api.user()
    posts = [await new_post(api, headers, f"p{i}") for i in range(2)]
    kept = await new_post(api, other_headers, "kept")

    response = await api.client.delete(f"/users/{user['id']}", headers=headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    response = await api.client.get(f"/users/{user['id']}")
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}
    for post in posts:
        response = await api.client.get(f"/posts/{post['id']}")
        assert response.status_code == 404
        assert response.json() == {"detail": "Post not found"}
    assert (await api.client.get(f"/posts/{kept['id']}")).status_code == 200
    assert await count(api) == 1
    async with api.state.db.session() as session:
        left = await session.scalar(
            text("SELECT COUNT(*) FROM posts WHERE author_id = :id"), {"id": user["id"]}
        )
    assert left == 0
    # the deleted user's token is dead; the other user is untouched
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 401
    assert me.headers.get("WWW-Authenticate") == "Bearer"
    assert (await api.client.get("/users/me", headers=other_headers)).json()["id"] == other["id"]
    assert (await token_for(api, user["username"])).status_code == 401


async def test_admin_deletes_another_user(api: Api) -> None:
    user, headers = await api.user()
    post = await new_post(api, headers)
    _, admin_headers = await api.admin()
    response = await api.client.delete(f"/users/{user['id']}", headers=admin_headers)
    assert response.status_code == 204, response.text
    assert (await api.client.get(f"/users/{user['id']}")).status_code == 404
    assert (await api.client.get(f"/posts/{post['id']}")).status_code == 404
    assert (await api.client.get("/users/me", headers=headers)).status_code == 401
    assert await count(api) == 1


async def test_normal_user_cannot_delete_another(api: Api) -> None:
    victim = await api.register()
    _, headers = await api.user()
    response = await api.client.delete(f"/users/{victim['id']}", headers=headers)
    assert response.status_code == 403, response.text
    assert isinstance(response.json()["detail"], str)
    assert (await api.client.get(f"/users/{victim['id']}")).status_code == 200
    assert await count(api) == 2


async def test_delete_requires_token(api: Api) -> None:
    user = await api.register()
    response = await api.client.delete(f"/users/{user['id']}")
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert await count(api) == 1


async def test_admin_delete_missing_user_is_404(api: Api) -> None:
    _, admin_headers = await api.admin()
    response = await api.client.delete("/users/999999", headers=admin_headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


# ------------------------------------------------------------------------------- no hash leaks


async def test_no_response_or_log_line_contains_password_or_hash(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncblog")
    secret = "Very-Secret-Passw0rd!"
    new_secret = "Another-Secret-Passw0rd?"
    bulk_secret = "Bulk-Secret-Passw0rd#"
    texts: list[str] = []

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await api.client.request(method, url, **kwargs)
        assert response.status_code < 500, response.text
        texts.append(response.text)
        texts.extend(f"{k}: {v}" for k, v in response.headers.items())
        return response

    r = await call("POST", "/users", json=body("leaky", password=secret))
    user_id = r.json()["id"]
    await call("POST", "/users", json=body("leaky", "dupe@example.com", secret))  # 409
    await call("POST", "/users", json=body("leaky2", "leaky@example.com", secret))  # 409
    r = await call("POST", "/auth/token", data={"username": "leaky", "password": secret})
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    await call("POST", "/auth/token", data={"username": "leaky", "password": secret + "x"})
    await call("GET", "/users/me", headers=headers)
    await call("POST", "/posts", json={"title": "t", "content": "c"}, headers=headers)
    await call("GET", f"/users/{user_id}", headers=headers)
    await call("GET", f"/users/{user_id}")
    await call("GET", "/users", headers=headers)
    _, admin_headers = await api.admin()
    await call("GET", "/users", headers=admin_headers)
    await call("GET", f"/users/{user_id}", headers=admin_headers)
    await call(
        "POST",
        "/users/bulk",
        json={"users": [body("bulk1", password=bulk_secret), body("bulk2", password=bulk_secret)]},
        headers=admin_headers,
    )
    await call(
        "POST",
        "/users/bulk",
        json={"users": [body("bulk1", password=bulk_secret)], "on_conflict": "skip"},
        headers=admin_headers,
    )
    await call(
        "POST",
        "/users/bulk",
        json={"users": [body("bulk1", password=bulk_secret)]},
        headers=admin_headers,
    )  # 409
    r = await call(
        "PATCH",
        f"/users/{user_id}",
        json={"password": new_secret, "current_password": secret},
        headers=headers,
    )
    assert r.status_code == 200
    await call("PATCH", f"/users/{user_id}", json={"username": "bulk1"}, headers=headers)  # 409
    await call("PATCH", f"/users/{user_id}", json={"is_active": True}, headers=admin_headers)
    await call("GET", "/users", headers=admin_headers)
    await call("GET", "/openapi.json")

    everything = "\n".join(texts)
    assert "$argon2" not in everything
    assert "hashed_password" not in everything
    for literal in (secret, new_secret, bulk_secret):
        assert literal not in everything
    assert "$argon2" not in caplog.text
    for literal in (secret, new_secret, bulk_secret):
        assert literal not in caplog.text


async def test_a_user_with_many_posts_gets_a_bounded_document(api: Api) -> None:
    """GET /users/{id} embeds the first 100 posts and says how many there are; the rest come
    page by page from GET /posts?author_id=...&after_id=...  On PostgreSQL the user has
    20,000 posts, the first 200 of 100,000 characters (the embedded ones are the longest the
    contract allows; writing 2 GB for all of them would take the suite minutes); elsewhere 150
    short ones."""
    user, _ = await api.user()
    backend = api.state.db.dialect
    count = 20_000 if backend == "postgresql" else 150
    async with api.state.db.write_session() as session:
        if backend == "postgresql":
            await session.execute(
                text(
                    "INSERT INTO posts (title, content, author_id) "
                    "SELECT 'post ' || n, repeat(chr(97 + n % 26), "
                    "CASE WHEN n <= 200 THEN 100000 ELSE 100 END), :author "
                    "FROM generate_series(1, :count) AS n"
                ),
                {"author": user["id"], "count": count},
            )
        else:
            await session.execute(
                text("INSERT INTO posts (title, content, author_id) VALUES (:t, :c, :a)"),
                [{"t": f"post {n}", "c": "x" * 100, "a": user["id"]} for n in range(count)],
            )
        await session.commit()

    response = await api.client.get(f"/users/{user['id']}")
    assert response.status_code == 200, response.text[:200]
    assert len(response.content) < 100 * 100_500 + 1_000
    document = response.json()
    assert document["posts_total"] == count
    embedded = [p["id"] for p in document["posts"]]
    assert len(embedded) == 100 and embedded == sorted(embedded)

    following = await api.client.get(
        "/posts", params={"author_id": user["id"], "after_id": embedded[-1], "limit": 100}
    )
    assert following.status_code == 200
    next_ids = [p["id"] for p in following.json()]
    assert len(next_ids) == min(100, count - 100) and next_ids[0] > embedded[-1]
    assert all(p["author_id"] == user["id"] for p in following.json())


async def test_ids_are_never_reused(api: Api) -> None:
    """API.md: a user registered after the newest one was deleted never gets its id (nor its
    ledger history or idempotency keys); nor does a post."""
    first, _ = await api.user()
    newest, headers = await api.user()
    post = await new_post(api, headers)
    assert (await api.client.delete(f"/users/{newest['id']}", headers=headers)).status_code == 204

    after, after_headers = await api.user()
    assert after["id"] > newest["id"] > first["id"]
    assert (await api.client.get("/transfers", headers=after_headers)).json() == []
    assert (await new_post(api, after_headers))["id"] > post["id"]
