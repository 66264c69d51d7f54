"""Versions (API.md, "Versions"): `version` on users and posts, the ETag of single-row answers,
If-Match on both PATCH routes; and the deletion rule that keeps money in the system.

Concurrent requests (two PATCHes with one If-Match, a transfer racing a PATCH or a deletion)
are in `tests/services/test_versions_concurrency.py`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.fixtures.app import Api
from tests.fixtures.contract import CHANGED

NOT_EMPTY = {"detail": "Balance must be zero to delete the account"}


async def versions(api: Api) -> dict[tuple[str, int], tuple[int, str]]:
    """Every users and posts row's (version, updated_at) as the database has them."""
    out: dict[tuple[str, int], tuple[int, str]] = {}
    async with api.state.db.session() as session:
        for table in ("users", "posts"):
            rows = await session.execute(text(f"SELECT id, version, updated_at FROM {table}"))
            for row_id, version, updated_at in rows:
                out[(table, row_id)] = (version, str(updated_at))
    return out


def moved(
    before: dict[tuple[str, int], tuple[int, str]], after: dict[tuple[str, int], tuple[int, str]]
) -> dict[tuple[str, int], int]:
    """Rows whose version changed, and by how much (rows that came or went are not listed)."""
    return {
        key: after[key][0] - before[key][0]
        for key in before.keys() & after.keys()
        if after[key][0] != before[key][0]
    }


async def new_post(api: Api, headers: dict[str, str]) -> httpx.Response:
    response = await api.client.post(
        "/posts", json={"title": "first", "content": "words"}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response


def etag(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("etag")
    return value


# ------------------------------------------------------------------------ versions and ETags


async def test_new_rows_start_at_version_1_with_their_etag(api: Api) -> None:
    created = await api.client.post(
        "/users", json={"username": "vera", "email": "vera@example.com", "password": "password123"}
    )
    assert created.status_code == 201
    assert created.json()["version"] == 1
    assert etag(created) == '"1"'
    headers = await api.login("vera")
    me = await api.client.get("/users/me", headers=headers)
    assert me.json()["version"] == 1 and etag(me) == '"1"'

    post = await new_post(api, headers)
    assert post.json()["version"] == 1
    assert etag(post) == '"1"'


async def test_etag_only_on_answers_that_show_one_row(api: Api) -> None:
    admin, admin_headers = await api.admin()
    user, headers = await api.user()
    post = (await new_post(api, headers)).json()
    await api.deposit(admin_headers, user["id"], "3.00")
    without = [
        await api.client.get(f"/users/{user['id']}"),
        await api.client.get(f"/users/{user['id']}", headers=headers),
        await api.client.get("/users"),
        await api.client.get("/users/count"),
        await api.client.get(f"/posts/{post['id']}"),
        await api.client.get("/posts"),
        await api.client.get("/transfers", headers=headers),
        await api.client.post(
            "/transfers", json={"to_user_id": admin["id"], "amount": "1.00"}, headers=headers
        ),
        await api.client.post(
            f"/admin/users/{user['id']}/deposit", json={"amount": "1.00"}, headers=admin_headers
        ),
    ]
    for response in without:
        assert response.status_code in (200, 201), response.text
        assert etag(response) is None, response.request.url


async def test_every_write_moves_the_versions_of_exactly_the_rows_it_changes(api: Api) -> None:
    """Walks every route that writes and compares every row's version before and after."""
    _, admin_headers = await api.admin()
    ann, ann_headers = await api.user()
    bob, bob_headers = await api.user()
    post = (await new_post(api, ann_headers)).json()
    users = ("users", ann["id"]), ("users", bob["id"])
    steps: list[tuple[str, Any, dict[tuple[str, int], int]]] = [
        (
            "deposit",
            lambda: api.client.post(
                f"/admin/users/{ann['id']}/deposit", json={"amount": "9.00"}, headers=admin_headers
            ),
            {users[0]: 1},
        ),
        (
            "transfer",
            lambda: api.client.post(
                "/transfers", json={"to_user_id": bob["id"], "amount": "2.00"}, headers=ann_headers
            ),
            {users[0]: 1, users[1]: 1},
        ),
        (
            "transfer refused: insufficient balance",
            lambda: api.client.post(
                "/transfers", json={"to_user_id": ann["id"], "amount": "50.00"}, headers=bob_headers
            ),
            {},
        ),
        (
            "patch a user",
            lambda: api.client.patch(
                f"/users/{ann['id']}", json={"username": "ann_renamed"}, headers=ann_headers
            ),
            {users[0]: 1},
        ),
        (
            "patch a user's name to another case (the row changes)",
            lambda: api.client.patch(
                f"/users/{ann['id']}", json={"username": "Ann_Renamed"}, headers=ann_headers
            ),
            {users[0]: 1},
        ),
        (
            "patch a user to the values it has",
            lambda: api.client.patch(
                f"/users/{ann['id']}",
                json={
                    "username": "Ann_Renamed",
                    "email": ann["email"],
                    "current_password": "password123",
                },
                headers=ann_headers,
            ),
            {},
        ),
        (
            "patch a password",
            lambda: api.client.patch(
                f"/users/{bob['id']}",
                json={"password": "another-secret", "current_password": "password123"},
                headers=bob_headers,
            ),
            {users[1]: 1},
        ),
        (
            "an admin deactivates",
            lambda: api.client.patch(
                f"/users/{bob['id']}", json={"is_active": False}, headers=admin_headers
            ),
            {users[1]: 1},
        ),
        (
            "bulk activation",
            lambda: api.client.patch(
                "/users/bulk",
                json={"ids": [bob["id"]], "values": {"is_active": True}},
                headers=admin_headers,
            ),
            {users[1]: 1},
        ),
        (
            "patch a post",
            lambda: api.client.patch(
                f"/posts/{post['id']}", json={"title": "second"}, headers=ann_headers
            ),
            {("posts", post["id"]): 1},
        ),
        (
            "patch a post to the values it has",
            lambda: api.client.patch(
                f"/posts/{post['id']}",
                json={"title": "second", "content": post["content"]},
                headers=ann_headers,
            ),
            {},
        ),
        (
            "write another post",
            lambda: api.client.post(
                "/posts", json={"title": "t", "content": "c"}, headers=bob_headers
            ),
            {},
        ),
    ]
    for name, call, expected in steps:
        before = await versions(api)
        response = await call()
        assert response.status_code < 500, (name, response.text)
        after = await versions(api)
        assert moved(before, after) == expected, name
        if not expected:  # nothing changed: not even the time of the last change
            assert {k: after[k] for k in before} == before, name


async def test_patch_answers_the_new_version_as_etag(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}",
        json={"email": "new@example.com", "current_password": "password123"},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2 and etag(response) == '"2"'
    post = (await new_post(api, headers)).json()
    edited = await api.client.patch(
        f"/posts/{post['id']}", json={"content": "changed"}, headers=headers
    )
    assert edited.status_code == 200
    assert edited.json()["version"] == 2 and etag(edited) == '"2"'
    assert (await api.client.get(f"/posts/{post['id']}")).json()["version"] == 2


# ------------------------------------------------------------------------------- If-Match


@pytest.mark.parametrize("if_match", ['"1"', "1", " 1 ", "*"])
async def test_if_match_that_holds_lets_the_change_through(api: Api, if_match: str) -> None:
    user, headers = await api.user()
    post = (await new_post(api, headers)).json()
    for path, change in (
        (f"/users/{user['id']}", {"username": "ifm"}),
        (f"/posts/{post['id']}", {"title": "ifm"}),
    ):
        response = await api.client.patch(
            path, json=change, headers=headers | {"If-Match": if_match}
        )
        assert response.status_code == 200, response.text
        assert etag(response) == '"2"'


@pytest.mark.parametrize("if_match", ['"2"', "0", 'W/"1"', '"one"', "", "99999999999999"])
async def test_if_match_that_fails_is_412_and_changes_nothing(api: Api, if_match: str) -> None:
    user, headers = await api.user()
    post = (await new_post(api, headers)).json()
    before = await versions(api)
    for path, change in (
        (f"/users/{user['id']}", {"username": "never"}),
        (f"/posts/{post['id']}", {"title": "never"}),
        (f"/posts/{post['id']}", {}),  # an empty change is checked too
    ):
        response = await api.client.patch(
            path, json=change, headers=headers | {"If-Match": if_match}
        )
        assert response.status_code == 412, (path, change, response.text)
        assert response.json() == CHANGED
    assert await versions(api) == before
    assert (await api.client.get(f"/posts/{post['id']}")).json()["title"] == "first"
    assert (await api.client.get("/users/me", headers=headers)).json()["username"] == user[
        "username"
    ]


async def test_a_stale_version_is_refused_after_someone_else_changed_the_row(api: Api) -> None:
    user, headers = await api.user()
    _, admin_headers = await api.admin()
    seen = etag(await api.client.get("/users/me", headers=headers))
    assert seen == '"1"'
    await api.deposit(admin_headers, user["id"], "1.00")  # money moved: the row changed
    stale = await api.client.patch(
        f"/users/{user['id']}", json={"username": "late"}, headers=headers | {"If-Match": seen}
    )
    assert stale.status_code == 412 and stale.json() == CHANGED
    fresh = etag(await api.client.get("/users/me", headers=headers))
    assert fresh == '"2"'
    ok = await api.client.patch(
        f"/users/{user['id']}", json={"username": "late"}, headers=headers | {"If-Match": fresh}
    )
    assert ok.status_code == 200 and ok.json()["username"] == "late"


async def test_if_match_with_several_versions_is_400(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.patch(
        f"/users/{user['id']}", json={"username": "two"}, headers=headers | {"If-Match": '"1", "2"'}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "If-Match may name one version only"}


async def test_who_may_and_what_exists_come_before_the_version(api: Api) -> None:
    _, headers = await api.user()
    other, other_headers = await api.user()
    post = (await new_post(api, other_headers)).json()
    stale = {"If-Match": '"7"'}
    missing = await api.client.patch("/posts/999999", json={"title": "x"}, headers=headers | stale)
    assert missing.status_code == 404
    not_author = await api.client.patch(
        f"/posts/{post['id']}", json={"title": "x"}, headers=headers | stale
    )
    assert not_author.status_code == 403
    not_self = await api.client.patch(
        f"/users/{other['id']}", json={"username": "xx_x"}, headers=headers | stale
    )
    assert not_self.status_code == 403


# ------------------------------------------------------------------------------- deletion


async def test_delete_with_money_is_409_and_deletes_nothing(api: Api) -> None:
    _, admin_headers = await api.admin()
    user, headers = await api.user()
    friend, _ = await api.user()
    post = (await new_post(api, headers)).json()
    await api.deposit(admin_headers, user["id"], "0.01")

    for who in (headers, admin_headers):
        response = await api.client.delete(f"/users/{user['id']}", headers=who)
        assert response.status_code == 409, response.text
        assert response.json() == NOT_EMPTY
    assert (await api.client.get(f"/posts/{post['id']}")).status_code == 200
    assert (await api.client.get("/users/me", headers=headers)).json()["balance"] == "0.01"

    paid = await api.client.post(
        "/transfers", json={"to_user_id": friend["id"], "amount": "0.01"}, headers=headers
    )
    assert paid.status_code == 201
    response = await api.client.delete(f"/users/{user['id']}", headers=headers)
    assert response.status_code == 204
    assert (await api.client.get(f"/users/{user['id']}")).status_code == 404
    assert (await api.client.get(f"/posts/{post['id']}")).status_code == 404
    # its transfers stay in the ledger, for the other side
    history = await api.client.get("/transfers", headers=await api.login(friend["username"]))
    assert [t["from_user_id"] for t in history.json()] == [user["id"]]
