"""Sessions (API.md, "Sessions"): refresh tokens in families, logout, tokens that stay ended,
`current_password`, and `Cache-Control: no-store` on what carries a token or a private view.

Concurrent refreshes with one token are in tests/services/test_sessions_concurrency.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import httpx
from sqlalchemy import select, text

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.models import RefreshToken
from tests.fixtures.app import Api
from tests.fixtures.databases import Backend, settings_for

PASSWORD = "password123"
INVALID_REFRESH = {"detail": "Invalid or expired refresh token"}


async def login(api: Api, username: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await api.client.post(
        "/auth/token", data={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def refresh(api: Api, token: str) -> httpx.Response:
    return await api.client.post("/auth/refresh", json={"refresh_token": token})


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def me_status(api: Api, tokens: dict[str, Any]) -> int:
    return (await api.client.get("/users/me", headers=bearer(tokens))).status_code


# ------------------------------------------------------------------------------- refresh


async def test_refresh_spends_the_token_and_issues_the_next(api: Api) -> None:
    user = await api.register()
    first = await login(api, user["username"])

    response = await refresh(api, first["refresh_token"])

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["refresh_token"] != first["refresh_token"]
    assert await me_status(api, second) == 200
    third = await refresh(api, second["refresh_token"])
    assert third.status_code == 200


async def test_a_spent_token_presented_again_ends_the_whole_login(api: Api) -> None:
    user = await api.register()
    first = await login(api, user["username"])
    other_login = await login(api, user["username"])
    second = (await refresh(api, first["refresh_token"])).json()

    reused = await refresh(api, first["refresh_token"])  # a thief, or a replay

    assert reused.status_code == 401 and reused.json() == INVALID_REFRESH
    assert reused.headers.get("www-authenticate") == "Bearer"
    # the newest token of that login is ended too
    assert (await refresh(api, second["refresh_token"])).status_code == 401
    # another login of the same user is not
    assert (await refresh(api, other_login["refresh_token"])).status_code == 200


async def test_unknown_expired_and_malformed_refresh_tokens_are_401_or_422(api: Api) -> None:
    user = await api.register()
    tokens = await login(api, user["username"])
    assert (await refresh(api, "not-a-token")).status_code == 401
    async with api.state.db.write_session() as session:
        await session.execute(text("UPDATE refresh_tokens SET expires_at = '2000-01-01'"))
        await session.commit()
    expired = await refresh(api, tokens["refresh_token"])
    assert expired.status_code == 401 and expired.json() == INVALID_REFRESH
    for body in ({}, {"refresh_token": ""}, {"refresh_token": "x" * 201}, {"refresh_token": 5}):
        assert (await api.client.post("/auth/refresh", json=body)).status_code == 422


async def test_only_digests_of_refresh_tokens_are_stored(api: Api) -> None:
    user = await api.register()
    tokens = await login(api, user["username"])
    async with api.state.db.session() as session:
        rows = (await session.execute(text("SELECT digest FROM refresh_tokens"))).scalars().all()
    assert rows == [hashlib.sha256(tokens["refresh_token"].encode()).hexdigest()]


async def test_a_refresh_token_is_256_random_bits_stored_with_its_expiry_and_version(
    api: Api,
) -> None:
    """A login's refresh token is 32 random bytes (URL-safe base64), and its row keeps the
    login's time plus REFRESH_TOKEN_EXPIRE_DAYS (14 by default) and the user's token version
    at the login (2 here: a logout of every login moved it first)."""
    user = await api.register()
    first = await login(api, user["username"])
    ended = await api.client.post("/auth/logout", json={"all": True}, headers=bearer(first))
    assert ended.status_code == 204
    before = dt.datetime.now(dt.UTC)
    tokens = await login(api, user["username"])
    after = dt.datetime.now(dt.UTC)

    token = tokens["refresh_token"]
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 32
    digest = hashlib.sha256(token.encode()).hexdigest()
    async with api.state.db.session() as session:
        stored = (
            await session.execute(
                select(RefreshToken.expires_at, RefreshToken.token_version).where(
                    RefreshToken.digest == digest
                )
            )
        ).one()
    lifetime = dt.timedelta(days=14)
    slack = dt.timedelta(minutes=1)
    assert before + lifetime - slack <= stored.expires_at <= after + lifetime + slack
    assert stored.token_version == 2


# ------------------------------------------------------------------------------- logout


async def test_logout_ends_one_login(api: Api) -> None:
    user = await api.register()
    phone = await login(api, user["username"])
    laptop = await login(api, user["username"])

    response = await api.client.post(
        "/auth/logout", json={"refresh_token": phone["refresh_token"]}, headers=bearer(phone)
    )

    assert response.status_code == 204
    assert (await refresh(api, phone["refresh_token"])).status_code == 401
    assert (await refresh(api, laptop["refresh_token"])).status_code == 200


async def test_logout_all_ends_every_token_issued_before(api: Api) -> None:
    user = await api.register()
    phone = await login(api, user["username"])
    laptop = await login(api, user["username"])

    response = await api.client.post("/auth/logout", json={"all": True}, headers=bearer(laptop))

    assert response.status_code == 204
    for tokens in (phone, laptop):
        assert await me_status(api, tokens) == 401
        assert (await refresh(api, tokens["refresh_token"])).status_code == 401
    again = await login(api, user["username"])
    assert await me_status(api, again) == 200


async def test_logout_needs_a_bearer_and_says_what_to_end(api: Api) -> None:
    user = await api.register()
    tokens = await login(api, user["username"])
    anonymous = await api.client.post("/auth/logout", json={"all": True})
    assert anonymous.status_code == 401
    nothing = await api.client.post("/auth/logout", json={}, headers=bearer(tokens))
    assert nothing.status_code == 422
    # someone else's refresh token is not ended by my logout
    other = await api.register()
    theirs = await login(api, other["username"])
    response = await api.client.post(
        "/auth/logout", json={"refresh_token": theirs["refresh_token"]}, headers=bearer(tokens)
    )
    assert response.status_code == 204
    assert (await refresh(api, theirs["refresh_token"])).status_code == 200


# ------------------------------------------------------------------------------- ended for good


async def test_a_password_change_ends_access_and_refresh_tokens(api: Api) -> None:
    user = await api.register()
    before = await login(api, user["username"])
    changed = await api.client.patch(
        f"/users/{user['id']}",
        json={"password": "a-new-password", "current_password": PASSWORD},
        headers=bearer(before),
    )
    assert changed.status_code == 200, changed.text
    assert await me_status(api, before) == 401
    assert (await refresh(api, before["refresh_token"])).status_code == 401


async def test_reactivation_does_not_bring_old_tokens_back(api: Api) -> None:
    user = await api.register()
    tokens = await login(api, user["username"])
    _, admin = await api.admin()
    for active in (False, True):
        response = await api.client.patch(
            f"/users/{user['id']}", json={"is_active": active}, headers=admin
        )
        assert response.status_code == 200
    assert await me_status(api, tokens) == 401
    assert (await refresh(api, tokens["refresh_token"])).status_code == 401
    assert await me_status(api, await login(api, user["username"])) == 200


async def test_deleting_the_user_ends_its_refresh_tokens(api: Api) -> None:
    user = await api.register()
    tokens = await login(api, user["username"])
    assert (
        await api.client.delete(f"/users/{user['id']}", headers=bearer(tokens))
    ).status_code == 204
    assert (await refresh(api, tokens["refresh_token"])).status_code == 401
    async with api.state.db.session() as session:
        left = await session.scalar(text("SELECT COUNT(*) FROM refresh_tokens"))
    assert left == 0


# ------------------------------------------------------------------------------- current_password


async def test_own_password_or_email_change_needs_the_current_password(api: Api) -> None:
    user = await api.register()
    headers = bearer(await login(api, user["username"]))
    path = f"/users/{user['id']}"
    for change in ({"password": "another-password"}, {"email": "new@example.com"}):
        missing = await api.client.patch(path, json=change, headers=headers)
        assert missing.status_code == 422, missing.text
        wrong = await api.client.patch(
            path, json={**change, "current_password": "not-it"}, headers=headers
        )
        assert wrong.status_code == 403
        assert wrong.json() == {"detail": "Current password is incorrect"}
    me = (await api.client.get("/users/me", headers=headers)).json()
    assert me["email"] == user["email"] and me["version"] == 1  # nothing changed
    # other fields need no password
    renamed = await api.client.patch(path, json={"username": "plain_rename"}, headers=headers)
    assert renamed.status_code == 200
    ok = await api.client.patch(
        path, json={"email": "new@example.com", "current_password": PASSWORD}, headers=headers
    )
    assert ok.status_code == 200 and ok.json()["email"] == "new@example.com"


async def test_an_admin_changes_another_users_password_without_theirs(api: Api) -> None:
    user = await api.register()
    admin_user, admin = await api.admin()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"password": "set-by-admin"}, headers=admin
    )
    assert response.status_code == 200, response.text
    await login(api, user["username"], "set-by-admin")
    own = await api.client.patch(
        f"/users/{admin_user['id']}", json={"password": "admins-own-new"}, headers=admin
    )
    assert own.status_code == 422  # its own: like any user


# ------------------------------------------------------------------------------- no-store


async def test_answers_with_a_token_or_a_private_view_are_not_stored(api: Api) -> None:
    created = await api.client.post(
        "/users", json={"username": "nostore", "email": "ns@example.com", "password": PASSWORD}
    )
    user = created.json()
    tokens = await login(api, "nostore")
    headers = bearer(tokens)
    post = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    private = [
        created,
        await api.client.post("/auth/token", data={"username": "nostore", "password": PASSWORD}),
        await refresh(api, tokens["refresh_token"]),
        await api.client.get("/users/me", headers=headers),
        await api.client.get(f"/users/{user['id']}", headers=headers),
        await api.client.patch(f"/users/{user['id']}", json={"username": "ns2"}, headers=headers),
    ]
    for response in private:
        assert response.status_code in (200, 201), response.text
        assert response.headers.get("cache-control") == "no-store", response.request.url
    public = [post, await api.client.get(f"/posts/{post.json()['id']}")]
    for response in public:
        assert "cache-control" not in response.headers, response.request.url


# ------------------------------------------------------------------------------- rehash


async def test_login_rehashes_with_raised_argon2_parameters(backend: Backend, api: Api) -> None:
    user = await api.register()
    before = await login(api, user["username"])
    stronger = settings_for(
        backend.url, argon2_time_cost=2, argon2_memory_cost_kib=8192, argon2_parallelism=2
    )
    app = create_app(state=AppState.build(stronger, api.state.db))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/auth/token", data={"username": user["username"], "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        async with api.state.db.session() as session:
            stored = await session.scalar(
                text("SELECT hashed_password FROM users WHERE id = :id"), {"id": user["id"]}
            )
        assert stored.startswith("$argon2id$v=19$m=8192,t=2,p=2$"), stored  # the new cost
        again = await client.post(
            "/auth/token", data={"username": user["username"], "password": PASSWORD}
        )
        assert again.status_code == 200
        wrong = await client.post(
            "/auth/token", data={"username": user["username"], "password": "not-it"}
        )
        assert wrong.status_code == 401
    # the upgrade ends no session: tokens carry the token version, not the hash
    assert await me_status(api, before) == 200
    assert (await refresh(api, before["refresh_token"])).status_code == 200
