"""Abuse of the login and of tokens: user enumeration, password guessing, forged and stale tokens.

- No enumeration: a wrong password for an existing user and any password for an unknown one get
  the same status, headers and body, and do the same work (one Argon2 verification with the same
  cost parameters). Timing is not measured; the work is counted with a wrapper around the real
  hasher.
- Throttling (`asyncblog.throttle`: per (username, address) pair, per address across usernames,
  per username across addresses; counted before the password is checked), with the in-process
  counter and with Redis (REDIS_URL).
- Tokens: other algorithms are refused; a password change and a deactivation end tokens.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.models import User
from asyncblog.security import PasswordHasher
from asyncblog.throttle import Throttle
from tests.fixtures.app import Api, client_of
from tests.fixtures.databases import Backend, settings_for, unavailable

WRONG = {"detail": "Incorrect username or password"}
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_PREFIX = "asyncblog:throttle:"


# ------------------------------------------------------------------------------ helpers


class CountingHasher(PasswordHasher):
    """The real Argon2 hasher, counting what it is asked to do (not a mock: it does the work)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset()

    def reset(self) -> None:
        self.verify_calls = 0
        self.argon2_hashes: list[str] = []  # the stored hash each Argon2 verification used

    async def verify(self, password: str, hashed: str | None) -> bool:
        self.verify_calls += 1
        return await super().verify(password, hashed)

    async def _verify(self, password: str, hashed: str) -> bool:
        self.argon2_hashes.append(hashed)
        return await super()._verify(password, hashed)


def argon2_parameters(hashed: str) -> str:
    """`$argon2id$v=19$m=...,t=...,p=...`: the algorithm and cost of a stored hash."""
    algorithm, version, params = hashed.split("$")[1:4]
    return f"${algorithm}${version}${params}"


async def login(
    client: httpx.AsyncClient, username: str, password: str = "password123"
) -> httpx.Response:
    return await client.post("/auth/token", data={"username": username, "password": password})


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, without what differs per request anyway."""
    headers = {k: v for k, v in response.headers.items() if k.lower() != "x-request-id"}
    return response.status_code, headers, response.content


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_claims(headers: dict[str, str]) -> dict[str, Any]:
    token = headers["Authorization"].removeprefix("Bearer ")
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None, digest: Any) -> str:
    """A JWT with any header, signed with HMAC-`digest` under `key` (or unsigned)."""
    signing_input = (
        b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = "" if key is None else b64(hmac.new(key, signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


async def assert_token_rejected(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401, (token, response.text)
    assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert isinstance(response.json()["detail"], str)


# ----------------------------------------------------------------------- user enumeration


@pytest.fixture
async def counted(backend: Backend, state: AppState) -> AsyncIterator[tuple[Api, CountingHasher]]:
    # Many failures from one client here: the throttle is not what these tests are about.
    settings = settings_for(backend.url, login_max_failures=1000)
    hasher = CountingHasher(settings)
    own = dataclasses.replace(AppState.build(settings, state.db), hasher=hasher)
    async with client_of(create_app(state=own)) as client:
        yield Api(client, own), hasher


async def test_wrong_password_and_unknown_user_answer_and_work_the_same(
    counted: tuple[Api, CountingHasher],
) -> None:
    api, hasher = counted
    user = await api.register()
    async with api.state.db.session() as session:
        stored = await session.scalar(select(User.hashed_password).where(User.id == user["id"]))
    assert stored is not None

    hasher.reset()
    reference = await login(api.client, user["username"], "not-the-password")
    assert reference.status_code == 401
    assert reference.json() == WRONG
    assert reference.headers["WWW-Authenticate"] == "Bearer"
    assert hasher.verify_calls == 1
    assert hasher.argon2_hashes == [stored]

    others = {
        "unknown user": "nobody_here",
        "unknown user, same length": "x" * len(user["username"]),
        "outside the username charset": "bad name!",
        "too long": "y" * 300,
        "NUL byte": user["username"] + "\x00",
        "SQL-looking": "' OR 1=1 --",
        "other case, wrong password": user["username"].upper(),
    }
    for label, username in others.items():
        hasher.reset()
        response = await login(api.client, username, "not-the-password")
        assert comparable(response) == comparable(reference), label
        # The same work: one Argon2 verification, with the same algorithm and cost.
        assert hasher.verify_calls == 1, label
        assert len(hasher.argon2_hashes) == 1, label
        assert argon2_parameters(hasher.argon2_hashes[0]) == argon2_parameters(stored), label

    # The right password still works (the dummy hash does not match anything real).
    assert (await login(api.client, user["username"])).status_code == 200


async def test_inactive_user_with_wrong_password_looks_like_any_wrong_password(
    counted: tuple[Api, CountingHasher],
) -> None:
    api, hasher = counted
    _, admin = await api.admin()
    user = await api.register()
    reference = await login(api.client, "nobody_here", "not-the-password")
    deactivated = await api.client.patch(
        f"/users/{user['id']}", json={"is_active": False}, headers=admin
    )
    assert deactivated.status_code == 200
    hasher.reset()
    response = await login(api.client, user["username"], "not-the-password")
    assert comparable(response) == comparable(reference)
    assert hasher.verify_calls == 1
    # Only the right password reveals the state (API.md: 400 "Inactive user").
    response = await login(api.client, user["username"])
    assert response.status_code == 400
    assert response.json() == {"detail": "Inactive user"}


# ------------------------------------------------------------------------------ throttling


@dataclasses.dataclass
class Throttled:
    """Apps sharing one throttle configuration, with clients at chosen addresses."""

    backend: Backend
    state: AppState
    kind: str
    prefix: str
    overrides: dict[str, Any]
    clients: dict[tuple[int, str], httpx.AsyncClient] = dataclasses.field(default_factory=dict)
    addresses: list[str] = dataclasses.field(default_factory=list)
    states: list[AppState] = dataclasses.field(default_factory=list)
    apps: list[FastAPI] = dataclasses.field(default_factory=list)

    @property
    def max_failures(self) -> int:
        return self.states[0].settings.login_max_failures

    @property
    def window(self) -> int:
        return self.states[0].settings.login_failure_window_seconds

    def new_app(self) -> int:
        """Another app instance (another worker process, as far as the throttle knows)."""
        settings = settings_for(self.backend.url, **self.overrides)
        own = AppState.build(settings, self.state.db)
        self.states.append(own)
        self.apps.append(create_app(state=own))
        return len(self.apps) - 1

    @property
    def network(self) -> str:
        """This test's own IPv6 /96 (from the random tag in the prefix): no other test or run
        shares its addresses, and its Redis keys can be found by pattern."""
        tag = self.prefix.removeprefix("thr").removesuffix("_")
        return f"fd00:{tag[:4]}:{tag[4:8]}::"

    def address(self) -> str:
        address = f"{self.network}{len(self.addresses) + 1:x}"
        self.addresses.append(address)
        return address

    def username(self, label: str) -> str:
        return f"{self.prefix}{label}"

    def client(self, address: str, app: int = 0) -> httpx.AsyncClient:
        key = (app, address)
        if key not in self.clients:
            transport = httpx.ASGITransport(
                app=self.apps[app], raise_app_exceptions=False, client=(address, 40000)
            )
            self.clients[key] = httpx.AsyncClient(transport=transport, base_url="http://test")
        return self.clients[key]

    async def register(self, label: str) -> dict[str, Any]:
        username = self.username(label)
        body = {"username": username, "email": f"{username}@example.com", "password": "password123"}
        response = await self.client("127.0.0.1").post("/users", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def fail(self, username: str, address: str, app: int = 0) -> None:
        response = await login(self.client(address, app), username, "wrong-password")
        assert response.status_code == 401, response.text
        assert response.json() == WRONG

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        for state in self.states:
            await state.throttle.close()


def assert_throttled(response: httpx.Response, window: int) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), response.headers
    assert 1 <= int(retry_after) <= window
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert "access_token" not in response.text


async def redis_keys(redis: Redis, throttled: Throttled) -> dict[str, int]:
    """Our keys in Redis and their remaining lifetimes (ms)."""
    found = {}
    patterns = (f"pair:{throttled.prefix}*", f"user:{throttled.prefix}*", f"*{throttled.network}*")
    for pattern in patterns:
        async for name in redis.scan_iter(match=REDIS_PREFIX + pattern, count=1000):
            ttl = await redis.pttl(name)
            if ttl != -2:  # -2: gone meanwhile
                found[name.decode()] = ttl
    return found


@pytest.fixture(params=["memory", "redis", "database"])
async def throttled(
    request: pytest.FixtureRequest, backend: Backend, state: AppState
) -> AsyncIterator[Throttled]:
    kind: str = request.param
    overrides: dict[str, Any] = {}
    redis: Redis | None = None
    if kind == "redis":
        redis = Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            await redis.ping()
        except Exception as exc:
            await redis.aclose()
            unavailable(f"Redis at {REDIS_URL}", f"{type(exc).__name__}: {exc}")
        overrides["redis_url"] = REDIS_URL
    if kind == "database":
        overrides["throttle_store"] = "database"
    prefix = f"thr{uuid.uuid4().hex[:8]}_"
    result = Throttled(backend, state, kind, prefix, overrides)
    result.new_app()
    if redis is not None:
        assert await redis_keys(redis, result) == {}, "keys of this test exist before it runs"
    try:
        yield result
    finally:
        await result.close()
        if redis is not None:
            try:
                keys = await redis_keys(redis, result)
                if keys:
                    await redis.delete(*keys)
                assert await redis_keys(redis, result) == {}
            finally:
                await redis.aclose()


async def test_a_pair_is_throttled_and_no_one_else(throttled: Throttled) -> None:
    """Five mistyped passwords lock that username at that address only: the same user from
    another address, and another user behind the same address, log in as usual."""
    victim = await throttled.register("victim")
    neighbour = await throttled.register("neighbour")
    shared = throttled.address()
    for _ in range(throttled.max_failures):
        await throttled.fail(victim["username"], shared)

    right = await login(throttled.client(shared), victim["username"])  # even the right password
    assert_throttled(right, throttled.window)
    for variant in (victim["username"].upper(), victim["username"].capitalize()):
        assert_throttled(await login(throttled.client(shared), variant), throttled.window)
    elsewhere = await login(throttled.client(throttled.address()), victim["username"])
    assert elsewhere.status_code == 200, elsewhere.text
    behind_the_same = await login(throttled.client(shared), neighbour["username"])
    assert behind_the_same.status_code == 200, behind_the_same.text


async def test_unknown_username_is_throttled_like_a_real_one(throttled: Throttled) -> None:
    """Otherwise the 429 itself would tell which usernames exist."""
    real = await throttled.register("real")
    ghost = throttled.username("ghost")
    address = throttled.address()
    for username in (real["username"], ghost):
        for _ in range(throttled.max_failures):
            await throttled.fail(username, address)
    answers = [
        await login(throttled.client(address), username, "wrong-password")
        for username in (real["username"], ghost)
    ]
    for response in answers:
        assert_throttled(response, throttled.window)
    assert answers[0].json() == answers[1].json()


async def test_an_address_is_throttled_after_many_failures_over_many_usernames(
    throttled: Throttled,
) -> None:
    user = await throttled.register("target")
    attacker = throttled.address()
    limit = throttled.states[0].settings.login_max_failures_per_address
    for n in range(limit):  # one failure per username: no pair reaches its limit
        await throttled.fail(throttled.username(f"guess{n}"), attacker)

    assert_throttled(await login(throttled.client(attacker), user["username"]), throttled.window)
    # The same user from another address is fine: the address, not the user, is blocked.
    response = await login(throttled.client(throttled.address()), user["username"])
    assert response.status_code == 200, response.text


async def test_a_username_is_throttled_after_failures_from_many_addresses(
    throttled: Throttled,
) -> None:
    victim = await throttled.register("wanted")
    other = await throttled.register("bystander")
    limit = throttled.states[0].settings.login_max_failures_per_username
    for _ in range(limit):  # one failure per address: no pair, no address reaches its limit
        await throttled.fail(victim["username"], throttled.address())
    window = throttled.states[0].settings.login_username_window_seconds
    assert_throttled(await login(throttled.client(throttled.address()), victim["username"]), window)
    response = await login(throttled.client(throttled.address()), other["username"])
    assert response.status_code == 200, response.text


async def test_success_clears_the_pairs_count(throttled: Throttled) -> None:
    user = await throttled.register("forgetful")
    address = throttled.address()
    for _ in range(2):
        for _ in range(throttled.max_failures - 1):
            await throttled.fail(user["username"], address)
        response = await login(throttled.client(address), user["username"])
        assert response.status_code == 200, response.text
    # Without the clear it would now stand at 2 * (max - 1); it is at 0: max more still pass.
    for _ in range(throttled.max_failures):
        await throttled.fail(user["username"], address)
    assert_throttled(await login(throttled.client(address), user["username"]), throttled.window)


async def test_counts_are_shared_between_app_instances_with_redis(throttled: Throttled) -> None:
    """With REDIS_URL or THROTTLE_STORE=database every worker sees the same counts; in memory
    each process counts alone."""
    user = await throttled.register("shared")
    second = throttled.new_app()
    address = throttled.address()
    for _ in range(throttled.max_failures):
        await throttled.fail(user["username"], address, app=0)
    response = await login(throttled.client(address, app=second), user["username"])
    if throttled.kind in ("redis", "database"):
        assert_throttled(response, throttled.window)
    else:
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("throttled", ["redis"], indirect=True)
async def test_redis_holds_the_counts_with_an_expiry(throttled: Throttled) -> None:
    user = await throttled.register("inspected")
    address = throttled.address()
    await throttled.fail(user["username"], address)
    redis = Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    name = user["username"].lower()
    pair_key = f"{REDIS_PREFIX}pair:{name}:{address}"
    addr_key = f"{REDIS_PREFIX}addr:{address}"
    user_key = f"{REDIS_PREFIX}user:{name}"
    try:
        for key in (pair_key, addr_key, user_key):
            assert int(await redis.get(key) or 0) == 1, key
            ttl = await redis.pttl(key)
            assert 0 < ttl <= 900 * 1000, (key, ttl)
        await throttled.fail(user["username"], address)
        assert int(await redis.get(pair_key) or 0) == 2
        # A success deletes the pair's key; the address and the username keep their failures.
        response = await login(throttled.client(address), user["username"])
        assert response.status_code == 200
        assert await redis.exists(pair_key) == 0
        assert int(await redis.get(addr_key) or 0) == 2
        assert int(await redis.get(user_key) or 0) == 2
    finally:
        await redis.aclose()


# ----------------------------------------------------------------------------------- tokens


async def test_tokens_with_other_algorithms_are_rejected(api: Api) -> None:
    user, headers = await api.user()
    claims = token_claims(headers)
    secret = api.state.tokens.secret.encode()

    # Control: the forging helper makes a token the server accepts when everything is right.
    good = forge({"alg": "HS256", "typ": "JWT"}, claims, secret, hashlib.sha256)
    me = await api.client.get("/users/me", headers=bearer(good))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["id"]

    forged = {
        "alg none": forge({"alg": "none", "typ": "JWT"}, claims, None, None),
        "alg None": forge({"alg": "None", "typ": "JWT"}, claims, None, None),
        "alg NONE, HS256 signature": forge({"alg": "NONE"}, claims, secret, hashlib.sha256),
        "no alg": forge({"typ": "JWT"}, claims, secret, hashlib.sha256),
        "HS384 with the secret": forge(
            {"alg": "HS384", "typ": "JWT"}, claims, secret, hashlib.sha384
        ),
        "HS512 with the secret": forge(
            {"alg": "HS512", "typ": "JWT"}, claims, secret, hashlib.sha512
        ),
        "RS256 header, HMAC signature": forge({"alg": "RS256"}, claims, secret, hashlib.sha256),
        "RS256 header, junk signature": forge(
            {"alg": "RS256"}, claims, b"public key", hashlib.sha256
        ),
        "ES256 header": forge({"alg": "ES256"}, claims, secret, hashlib.sha256),
        "PS256 header": forge({"alg": "PS256"}, claims, secret, hashlib.sha256),
        "jwk in header": forge(
            {"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"attacker")}},
            claims,
            b"attacker",
            hashlib.sha256,
        ),
    }
    for label, token in forged.items():
        response = await api.client.get("/users/me", headers=bearer(token))
        assert response.status_code == 401, (label, response.text)
        assert response.headers.get("WWW-Authenticate") == "Bearer", label
    # PyJWT's own encoder agrees: HS512 with the real secret is still not accepted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        hs512 = jwt.encode(claims, api.state.tokens.secret, algorithm="HS512")
    await assert_token_rejected(api.client, hs512)


async def test_password_change_ends_existing_tokens(api: Api) -> None:
    user, first = await api.user()
    second = await api.login(user["username"])
    response = await api.client.patch(
        f"/users/{user['id']}",
        json={"password": "a-new-password", "current_password": "password123"},
        headers=first,
    )
    assert response.status_code == 200, response.text
    for headers in (first, second):
        await assert_token_rejected(api.client, headers["Authorization"].removeprefix("Bearer "))
    old = await login(api.client, user["username"], "password123")
    assert old.status_code == 401
    assert old.json() == WRONG
    fresh = await api.login(user["username"], "a-new-password")
    me = await api.client.get("/users/me", headers=fresh)
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]


async def test_password_change_by_an_admin_ends_the_users_tokens(api: Api) -> None:
    _, admin = await api.admin()
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"password": "set-by-admin"}, headers=admin
    )
    assert response.status_code == 200, response.text
    await assert_token_rejected(api.client, headers["Authorization"].removeprefix("Bearer "))
    await api.login(user["username"], "set-by-admin")
    # The admin's own token is untouched.
    assert (await api.client.get("/users/me", headers=admin)).status_code == 200


@pytest.mark.parametrize("how", ["patch", "bulk"])
async def test_deactivation_ends_tokens(api: Api, how: str) -> None:
    _, admin = await api.admin()
    user, headers = await api.user()
    bystander, bystander_headers = await api.user()
    if how == "patch":
        response = await api.client.patch(
            f"/users/{user['id']}", json={"is_active": False}, headers=admin
        )
    else:
        response = await api.client.patch(
            "/users/bulk", json={"ids": [user["id"]], "values": {"is_active": False}}, headers=admin
        )
    assert response.status_code == 200, response.text
    await assert_token_rejected(api.client, headers["Authorization"].removeprefix("Bearer "))
    refused = await login(api.client, user["username"])
    assert refused.status_code == 400
    assert refused.json() == {"detail": "Inactive user"}
    # A deactivated user can do nothing with the old token, not even change its own password.
    patch = await api.client.patch(
        f"/users/{user['id']}", json={"password": "sneaky-new-one"}, headers=headers
    )
    assert patch.status_code == 401
    async with api.state.db.session() as session:
        rows = await session.execute(
            select(User.id, User.is_active).where(User.id.in_([user["id"], bystander["id"]]))
        )
        active = {row.id: row.is_active for row in rows}
    assert active == {user["id"]: False, bystander["id"]: True}
    assert (await api.client.get("/users/me", headers=bystander_headers)).status_code == 200


async def test_an_unreachable_redis_does_not_stop_logins(api: Api, backend: Backend) -> None:
    """The throttle's store being down is a warning in the log, not a 500 for every login."""
    dead = settings_for(backend.url, redis_url="redis://127.0.0.1:1/0")
    api.state.throttle = Throttle.from_settings(dead)
    try:
        user = await api.register()
        wrong = await api.client.post(
            "/auth/token", data={"username": user["username"], "password": "not-the-pw"}
        )
        assert wrong.status_code == 401, wrong.text
        right = await api.client.post(
            "/auth/token", data={"username": user["username"], "password": "password123"}
        )
        assert right.status_code == 200, right.text
    finally:
        await api.state.throttle.close()


# ------------------------------------------------------------------------------ registrations


async def test_registrations_are_limited_per_address(backend: Backend, state: AppState) -> None:
    settings = settings_for(backend.url, register_max_per_minute=3)
    own = AppState.build(settings, state.db)
    app = create_app(state=own)

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    def body(name: str) -> dict[str, str]:
        return {"username": name, "email": f"{name}@example.com", "password": "password123"}

    try:
        async with client("192.0.2.1") as first, client("192.0.2.2") as second:
            for n in range(3):
                assert (await first.post("/users", json=body(f"reg{n}"))).status_code == 201
            refused = await first.post("/users", json=body("reg3"))
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.json() == {"detail": "Too many registrations; try again later"}
            assert (await second.post("/users", json=body("reg3"))).status_code == 201
    finally:
        await own.throttle.close()


REGISTER_LIMIT = 3  # REGISTER_MAX_PER_MINUTE in the next test


def registration(name: str) -> dict[str, str]:
    return {"username": name, "email": f"{name}@example.com", "password": "password123"}


async def test_registration_limits_are_shared_between_app_instances(
    throttled: Throttled,
) -> None:
    """The registration limit across app instances (as across `serve`'s worker processes).
    REGISTER_MAX_PER_MINUTE=3 on two app instances: three registrations from one address
    through the first, then a fourth through the second is 429 with Redis or the database
    holding the counts, and 201 with each instance counting in its memory. A fifth through the
    first is 429 either way: the limit is on, and what the second answered was its counts."""
    throttled.overrides["register_max_per_minute"] = REGISTER_LIMIT
    first, second = throttled.new_app(), throttled.new_app()
    address = throttled.address()
    for n in range(REGISTER_LIMIT):
        created = await throttled.client(address, app=first).post(
            "/users", json=registration(throttled.username(f"reg{n}"))
        )
        assert created.status_code == 201, created.text

    fourth = await throttled.client(address, app=second).post(
        "/users", json=registration(throttled.username("reg_second"))
    )
    if throttled.kind in ("redis", "database"):
        assert fourth.status_code == 429, fourth.text
        assert fourth.json() == {"detail": "Too many registrations; try again later"}
        assert 1 <= int(fourth.headers["retry-after"]) <= 60
    else:
        assert fourth.status_code == 201, fourth.text

    fifth = await throttled.client(address, app=first).post(
        "/users", json=registration(throttled.username("reg_first"))
    )
    assert fifth.status_code == 429, fifth.text
