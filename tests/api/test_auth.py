"""Logging in and bearer tokens (API.md, "Conventions: Auth")."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text

from asyncblog.security import password_stamp
from tests.fixtures.app import Api

WRONG = {"detail": "Incorrect username or password"}


async def login(api: Api, username: str, password: str = "password123") -> httpx.Response:
    return await api.client.post("/auth/token", data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return data


def flip(char: str) -> str:
    return "A" if char != "A" else "B"


async def assert_rejected(api: Api, headers: dict[str, str], path: str = "/users/me") -> None:
    response = await api.client.get(path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert isinstance(response.json()["detail"], str)


def now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


async def real_claims(api: Api, username: str) -> dict[str, Any]:
    """The claims of a genuine token for this user (to forge variants that differ in one way)."""
    token = (await api.login(username))["Authorization"].removeprefix("Bearer ")
    return unb64(token.split(".")[1])


# ------------------------------------------------------------------------------- POST /auth/token


async def test_login_returns_bearer_token(api: Api) -> None:
    user = await api.register()
    response = await login(api, user["username"])
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert data["token_type"] == "bearer"
    assert data["expires_in"] == 15 * 60  # the default
    assert isinstance(data["access_token"], str) and data["access_token"]
    assert isinstance(data["refresh_token"], str) and len(data["refresh_token"]) >= 40
    assert response.headers["cache-control"] == "no-store"
    me = await api.client.get("/users/me", headers=bearer(data["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]


async def test_login_wrong_password_and_unknown_user_look_the_same(api: Api) -> None:
    user = await api.register()
    wrong_password = await login(api, user["username"], "not-the-password")
    unknown_user = await login(api, "nobody_here", "password123")
    too_long_user = await login(api, "x" * 300, "password123")
    for response in (wrong_password, unknown_user, too_long_user):
        assert response.status_code == 401, response.text
        assert response.json() == WRONG
    assert wrong_password.content == unknown_user.content


async def test_login_is_json_not_accepted(api: Api) -> None:
    user = await api.register()
    response = await api.client.post(
        "/auth/token", json={"username": user["username"], "password": "password123"}
    )
    assert response.status_code == 422


async def test_login_missing_fields_is_422(api: Api) -> None:
    response = await api.client.post("/auth/token", data={"username": "someone"})
    assert response.status_code == 422
    response = await api.client.post("/auth/token", data={"password": "password123"})
    assert response.status_code == 422


async def test_login_username_is_case_insensitive(api: Api) -> None:
    user = await api.register("Carol")
    for name in ("carol", "CAROL", "Carol", "cArOl"):
        response = await login(api, name)
        assert response.status_code == 200, (name, response.text)
        me = await api.client.get("/users/me", headers=bearer(response.json()["access_token"]))
        assert me.json()["id"] == user["id"]
        assert me.json()["username"] == "Carol"


async def test_login_password_is_case_sensitive(api: Api) -> None:
    await api.register("dave", password="CaseSensitive1")
    response = await login(api, "dave", "casesensitive1")
    assert response.status_code == 401
    assert response.json() == WRONG
    assert (await login(api, "dave", "CaseSensitive1")).status_code == 200


async def test_login_inactive_user_is_400(api: Api) -> None:
    user = await api.register()
    _, admin_headers = await api.admin()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    response = await login(api, user["username"])
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "Inactive user"}


# ------------------------------------------------------------------------------- tokens


async def test_missing_token_is_401(api: Api) -> None:
    await assert_rejected(api, {})


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer ",
        "Bearer a.b.c",
        "Bearer " + "x" * 5000,
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
    ],
)
async def test_garbage_token_is_401(api: Api, authorization: str) -> None:
    await api.register()
    await assert_rejected(api, {"Authorization": authorization})


async def test_non_bearer_scheme_is_401(api: Api) -> None:
    user = await api.register()
    headers = await api.login(user["username"])
    token = headers["Authorization"].removeprefix("Bearer ")
    await assert_rejected(api, {"Authorization": f"Basic {token}"})
    await assert_rejected(api, {"Authorization": token})


async def test_tampered_signature_is_401(api: Api) -> None:
    user = await api.register()
    token = (await api.login(user["username"]))["Authorization"].removeprefix("Bearer ")
    header, payload, signature = token.split(".")
    # change a character in the middle (the last one carries unused padding bits)
    middle = len(signature) // 2
    forged = signature[:middle] + flip(signature[middle]) + signature[middle + 1 :]
    assert forged != signature
    await assert_rejected(api, bearer(f"{header}.{payload}.{forged}"))
    # a missing signature
    await assert_rejected(api, bearer(f"{header}.{payload}."))
    # the genuine token still works
    assert (await api.client.get("/users/me", headers=bearer(token))).status_code == 200


async def test_tampered_payload_is_401(api: Api) -> None:
    victim = await api.register()
    attacker = await api.register()
    token = (await api.login(attacker["username"]))["Authorization"].removeprefix("Bearer ")
    header, payload, signature = token.split(".")
    claims = unb64(payload)
    assert claims["sub"] == str(attacker["id"])
    claims["sub"] = str(victim["id"])
    await assert_rejected(api, bearer(f"{header}.{b64(claims)}.{signature}"))
    # one changed character of the payload
    middle = len(payload) // 2
    changed = payload[:middle] + flip(payload[middle]) + payload[middle + 1 :]
    await assert_rejected(api, bearer(f"{header}.{changed}.{signature}"))
    # a later expiry
    claims = unb64(payload)
    claims["exp"] = claims["exp"] + 3600 * 24 * 365
    await assert_rejected(api, bearer(f"{header}.{b64(claims)}.{signature}"))


async def test_token_signed_with_another_key_is_401(api: Api) -> None:
    user = await api.register()
    claims = await real_claims(api, user["username"])
    token = jwt.encode(claims, "another-secret-key-that-is-long-enough-xx", algorithm="HS256")
    await assert_rejected(api, bearer(token))
    # the same claims with the right key are accepted: the key is what made the difference
    good = jwt.encode(claims, api.state.tokens.secret, algorithm="HS256")
    me = await api.client.get("/users/me", headers=bearer(good))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["id"]


async def test_expired_token_is_401(api: Api) -> None:
    user = await api.register()
    claims = await real_claims(api, user["username"])
    past = now() - 3600
    token = jwt.encode(
        {**claims, "iat": past - 3600, "exp": past}, api.state.tokens.secret, algorithm="HS256"
    )
    await assert_rejected(api, bearer(token))
    # the same claims, unexpired, are accepted: the expiry is what made the difference
    fresh = jwt.encode({**claims, "exp": now() + 600}, api.state.tokens.secret, algorithm="HS256")
    assert (await api.client.get("/users/me", headers=bearer(fresh))).status_code == 200


async def test_token_without_token_version_is_401(api: Api) -> None:
    user = await api.register()
    claims = await real_claims(api, user["username"])
    del claims["ver"]
    token = jwt.encode(claims, api.state.tokens.secret, algorithm="HS256")
    await assert_rejected(api, bearer(token))


async def test_tokens_carry_the_password_stamp_unchecked(api: Api) -> None:
    """An access token carries `pwd`, the stamp of the user's password hash (for compare.sh's
    reference apps), and nothing here checks it: the same claims with another `pwd`, signed
    with the real key, act for the user on a route that checks the token in its own statement
    (`GET /users/me`, `POST /posts`) and on one that checks it first (`GET /transfers`)."""
    user = await api.register()
    claims = await real_claims(api, user["username"])
    async with api.state.db.session() as session:
        stored = await session.scalar(
            text("SELECT hashed_password FROM users WHERE id = :id"), {"id": user["id"]}
        )
    assert claims["pwd"] == password_stamp(stored)
    assert len(claims["pwd"]) == 16 and int(claims["pwd"], 16) >= 0

    other = "0" * 16 if claims["pwd"] != "0" * 16 else "1" * 16
    headers = bearer(jwt.encode({**claims, "pwd": other}, api.state.tokens.secret, "HS256"))
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["id"]
    post = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    assert post.status_code == 201, post.text
    assert post.json()["author_id"] == user["id"]
    assert (await api.client.get("/transfers", headers=headers)).status_code == 200


async def test_alg_none_token_is_401(api: Api) -> None:
    user = await api.register()
    claims = await real_claims(api, user["username"])
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    await assert_rejected(api, bearer(unsigned))
    none_upper = f"{b64({'alg': 'None', 'typ': 'JWT'})}.{b64(claims)}."
    await assert_rejected(api, bearer(none_upper))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_token_with_other_algorithm_is_401(api: Api) -> None:
    """HS512 with the server's own key is still not the algorithm the server issues."""
    user = await api.register()
    claims = await real_claims(api, user["username"])
    token = jwt.encode(claims, api.state.tokens.secret, algorithm="HS512")
    await assert_rejected(api, bearer(token))


@pytest.mark.parametrize("sub", ["999999", "0", "-1", "99999999999999999999", "abc", ""])
async def test_token_for_unknown_or_malformed_subject_is_401(api: Api, sub: str) -> None:
    user = await api.register()
    claims = await real_claims(api, user["username"])
    token = jwt.encode({**claims, "sub": sub}, api.state.tokens.secret, algorithm="HS256")
    await assert_rejected(api, bearer(token))


async def test_token_of_deleted_user_is_401(api: Api) -> None:
    user, headers = await api.user()
    assert (await api.client.get("/users/me", headers=headers)).status_code == 200
    response = await api.client.delete(f"/users/{user['id']}", headers=headers)
    assert response.status_code == 204
    await assert_rejected(api, headers)
    await assert_rejected(api, headers, f"/users/{user['id']}")


async def test_token_of_deactivated_user_is_401(api: Api) -> None:
    user, headers = await api.user()
    _, admin_headers = await api.admin()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    await assert_rejected(api, headers)
    # writing routes too
    response = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate") == "Bearer"


async def test_optional_auth_route_rejects_invalid_token(api: Api) -> None:
    user = await api.register()
    # anonymous is fine
    response = await api.client.get(f"/users/{user['id']}")
    assert response.status_code == 200
    t = now()
    claims = await real_claims(api, user["username"])
    expired = jwt.encode(
        {**claims, "iat": t - 7200, "exp": t - 3600}, api.state.tokens.secret, algorithm="HS256"
    )
    for token in ("garbage", expired):
        await assert_rejected(api, bearer(token), f"/users/{user['id']}")
        await assert_rejected(api, bearer(token), "/users")
