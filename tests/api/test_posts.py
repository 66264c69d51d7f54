"""Posts: create, read, list, change and delete, on every backend.

Every test checks the HTTP answer and, where something is (or must not be) written, the rows in
the database itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import text

from tests.fixtures.app import Api
from tests.fixtures.contract import POST_KEYS, PUBLIC_USER_KEYS

# ---------------------------------------------------------------------------- helpers


async def db_posts(api: Api) -> list[dict[str, Any]]:
    """Every row of `posts`, read with SQL (not through the API), ordered by id."""
    async with api.state.db.session() as session:
        result = await session.execute(
            text("SELECT id, title, content, author_id FROM posts ORDER BY id")
        )
        return [dict(row._mapping) for row in result]


async def db_post(api: Api, post_id: int) -> dict[str, Any] | None:
    rows = [row for row in await db_posts(api) if row["id"] == post_id]
    return rows[0] if rows else None


async def create_post(
    api: Api, headers: dict[str, str], title: str = "A title", content: str = "Some content"
) -> dict[str, Any]:
    response = await api.client.post(
        "/posts", json={"title": title, "content": content}, headers=headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def parse_time(value: str) -> dt.datetime:
    """An ISO 8601 time that must carry a UTC offset (the contract's convention)."""
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


async def deactivate(api: Api, user_id: int) -> None:
    async with api.state.db.write_session() as session:
        await session.execute(
            text("UPDATE users SET is_active = :no WHERE id = :id"), {"no": False, "id": user_id}
        )
        await session.commit()


# ---------------------------------------------------------------------------- POST /posts


async def test_create_post_returns_post_view_authored_by_caller(api: Api) -> None:
    user, headers = await api.user()
    response = await api.client.post(
        "/posts", json={"title": "Hello", "content": "World"}, headers=headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == POST_KEYS
    assert isinstance(body["id"], int) and body["id"] >= 1
    assert body["title"] == "Hello"
    assert body["content"] == "World"
    assert body["author_id"] == user["id"]
    created = parse_time(body["created_at"])
    updated = parse_time(body["updated_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert updated >= created

    assert await db_posts(api) == [
        {"id": body["id"], "title": "Hello", "content": "World", "author_id": user["id"]}
    ]


async def test_create_post_ignores_client_supplied_author_and_id(api: Api) -> None:
    user, headers = await api.user()
    other = await api.register()
    response = await api.client.post(
        "/posts",
        json={"title": "t", "content": "c", "author_id": other["id"], "id": 424242},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["author_id"] == user["id"]
    assert response.json()["id"] != 424242
    rows = await db_posts(api)
    assert [row["author_id"] for row in rows] == [user["id"]]


async def test_create_post_anonymous_is_401(api: Api) -> None:
    response = await api.client.post("/posts", json={"title": "t", "content": "c"})
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert isinstance(response.json()["detail"], str)
    assert await db_posts(api) == []


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
async def test_create_post_with_invalid_token_is_401(api: Api, token: str) -> None:
    response = await api.client.post(
        "/posts",
        json={"title": "t", "content": "c"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert await db_posts(api) == []


async def test_create_post_with_inactive_users_token_is_401(api: Api) -> None:
    user, headers = await api.user()
    await create_post(api, headers)  # the token works while the user is active
    await deactivate(api, user["id"])

    response = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    assert response.status_code == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert len(await db_posts(api)) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"title": "", "content": "c"},
        {"title": "x" * 201, "content": "c"},
        {"title": "t", "content": ""},
        {"title": "t", "content": "x" * 100_001},
        {"title": "t"},
        {"content": "c"},
        {"title": None, "content": "c"},
        {"title": "t", "content": None},
        {"title": 5, "content": "c"},
    ],
    ids=[
        "title-empty",
        "title-201",
        "content-empty",
        "content-100001",
        "content-missing",
        "title-missing",
        "title-null",
        "content-null",
        "title-number",
    ],
)
async def test_create_post_invalid_body_is_422(api: Api, body: dict[str, Any]) -> None:
    _, headers = await api.user()
    response = await api.client.post("/posts", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await db_posts(api) == []


@pytest.mark.parametrize(
    ("title", "content"),
    [
        ("x", "y"),
        ("x" * 200, "c"),
        ("😀" * 200, "c"),  # 200 characters of 4 bytes each
        ("t", "x" * 100_000),
        ("t", "😀" * 100_000),  # 400,000 bytes: more than MariaDB's TEXT holds
        ("t", "漢字かな" * 25_000),
    ],
    ids=["min", "title-200", "title-200-emoji", "content-100000", "content-100000-emoji", "cjk"],
)
async def test_create_post_at_the_bounds_stores_exactly(api: Api, title: str, content: str) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers, title, content)
    assert created["title"] == title
    assert created["content"] == content

    response = await api.client.get(f"/posts/{created['id']}")
    assert response.status_code == 200
    assert response.json()["title"] == title
    assert response.json()["content"] == content

    row = await db_post(api, created["id"])
    assert row is not None
    assert row["title"] == title
    assert row["content"] == content
    assert len(row["content"]) == len(content)


@pytest.mark.parametrize(
    "value",
    [
        "'); DROP TABLE posts;--",
        "Robert'); DELETE FROM users; --",
        "100% %s %(name)s ? :name $1 \\ \\' \" `backtick`",
        "emoji 🎉🚀👩‍👩‍👧 CJK 中文 日本語 한국어 RTL עברית combining é",
    ],
    ids=["drop-table", "delete-users", "placeholders", "unicode"],
)
async def test_create_post_stores_awkward_text_literally(api: Api, value: str) -> None:
    user, headers = await api.user()
    created = await create_post(api, headers, value[:200], value)
    assert created["title"] == value[:200]
    assert created["content"] == value

    # Nothing was executed: the tables and their rows are still there.
    assert (await api.client.get("/users/count")).json() == {"count": 1}
    rows = await db_posts(api)
    assert rows == [
        {"id": created["id"], "title": value[:200], "content": value, "author_id": user["id"]}
    ]
    response = await api.client.get(f"/posts/{created['id']}")
    assert response.json()["content"] == value


@pytest.mark.parametrize(
    "body",
    [{"title": "a\x00b", "content": "c"}, {"title": "t", "content": "before\x00after"}],
    ids=["title", "content"],
)
async def test_nul_character_is_refused_or_stored_never_a_500(
    api: Api, body: dict[str, str]
) -> None:
    """PostgreSQL cannot store U+0000 in text; whatever the app decides, a client must not be
    able to cause a 500 with it, and what is accepted is stored exactly."""
    _, headers = await api.user()
    response = await api.client.post("/posts", json=body, headers=headers)
    assert response.status_code in (201, 422), response.text
    if response.status_code == 201:
        fetched = (await api.client.get(f"/posts/{response.json()['id']}")).json()
        assert (fetched["title"], fetched["content"]) == (body["title"], body["content"])
    else:
        assert await db_posts(api) == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"title": "\\ud800", "content": "c"}',
        b'{"title": "t", "content": "x\\udfffy"}',
    ],
    ids=["title", "content"],
)
async def test_lone_surrogate_in_json_is_422(api: Api, raw: bytes) -> None:
    """A JSON escape of half a surrogate pair is not a character: a 422 (not a 500 while
    echoing the invalid input back in the error body)."""
    _, headers = await api.user()
    json_headers = {**headers, "Content-Type": "application/json"}
    response = await api.client.post("/posts", content=raw, headers=json_headers)
    assert response.status_code == 422, response.text
    assert await db_posts(api) == []

    created = await create_post(api, headers, "Keep", "Keep this")
    response = await api.client.patch(f"/posts/{created['id']}", content=raw, headers=json_headers)
    assert response.status_code == 422, response.text
    row = await db_post(api, created["id"])
    assert row is not None and (row["title"], row["content"]) == ("Keep", "Keep this")


# ---------------------------------------------------------------------------- GET /posts


async def test_list_posts_empty(api: Api) -> None:
    response = await api.client.get("/posts")
    assert response.status_code == 200
    assert response.json() == []


async def test_list_posts_ordered_by_id_with_post_views(api: Api) -> None:
    _, alice_h = await api.user()
    _, bob_h = await api.user()
    made = [
        await create_post(api, alice_h, "a1"),
        await create_post(api, bob_h, "b1"),
        await create_post(api, alice_h, "a2"),
        await create_post(api, bob_h, "b2"),
    ]
    response = await api.client.get("/posts")
    assert response.status_code == 200
    listed = response.json()
    assert [p["id"] for p in listed] == sorted(p["id"] for p in made)
    assert [p["title"] for p in listed] == ["a1", "b1", "a2", "b2"]
    for post in listed:
        assert set(post) == POST_KEYS
    assert listed == made  # the list shows exactly what creation returned


async def test_list_posts_filtered_by_author(api: Api) -> None:
    alice, alice_h = await api.user()
    bob, bob_h = await api.user()
    a1 = await create_post(api, alice_h, "a1")
    await create_post(api, bob_h, "b1")
    a2 = await create_post(api, alice_h, "a2")

    response = await api.client.get("/posts", params={"author_id": alice["id"]})
    assert response.status_code == 200
    assert [p["id"] for p in response.json()] == [a1["id"], a2["id"]]
    assert {p["author_id"] for p in response.json()} == {alice["id"]}

    response = await api.client.get("/posts", params={"author_id": bob["id"]})
    assert [p["title"] for p in response.json()] == ["b1"]

    response = await api.client.get("/posts", params={"author_id": 2_000_000_000})
    assert response.status_code == 200
    assert response.json() == []


async def test_list_posts_pagination(api: Api) -> None:
    _, headers = await api.user()
    ids = [(await create_post(api, headers, f"p{i}"))["id"] for i in range(7)]

    async def page(**params: Any) -> list[int]:
        response = await api.client.get("/posts", params=params)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()]

    assert await page() == ids
    assert await page(limit=3) == ids[:3]
    assert await page(skip=2, limit=3) == ids[2:5]
    assert await page(skip=6) == ids[6:]
    assert await page(skip=7) == []
    assert await page(limit=100) == ids
    assert await page(limit=1) == ids[:1]
    assert await page(after_id=ids[2]) == ids[3:]
    assert await page(after_id=ids[2], limit=2) == ids[3:5]
    assert await page(after_id=ids[-1]) == []
    assert await page(after_id=0) == ids

    # Walking the whole list with keyset pages sees every post once, in order.
    seen: list[int] = []
    cursor = 0
    while chunk := await page(after_id=cursor, limit=3):
        seen += chunk
        cursor = chunk[-1]
    assert seen == ids


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"skip": -1},
        {"limit": "ten"},
        {"author_id": "abc"},
        {"after_id": -1},
    ],
    ids=["limit-0", "limit-101", "limit-neg", "skip-neg", "limit-text", "author-text", "after-neg"],
)
async def test_list_posts_bad_query_is_422(api: Api, params: dict[str, Any]) -> None:
    response = await api.client.get("/posts", params=params)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


# ---------------------------------------------------------------------------- GET /posts/{id}


async def test_get_post_includes_public_author(api: Api) -> None:
    user, headers = await api.user()
    created = await create_post(api, headers, "Title", "Body")

    response = await api.client.get(f"/posts/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == POST_KEYS | {"author"}
    assert {k: body[k] for k in POST_KEYS} == created
    author = body["author"]
    assert set(author) == PUBLIC_USER_KEYS  # public view: no email, balance, is_admin, hash
    assert author["id"] == user["id"]
    assert author["username"] == user["username"]
    assert author["is_active"] is True
    assert parse_time(author["created_at"]) == parse_time(user["created_at"])
    assert "email" not in response.text
    assert "hashed_password" not in response.text
    assert "$argon2" not in response.text


async def test_get_post_is_the_same_for_the_author_and_anonymous(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers)
    anonymous = await api.client.get(f"/posts/{created['id']}")
    as_author = await api.client.get(f"/posts/{created['id']}", headers=headers)
    assert anonymous.status_code == as_author.status_code == 200
    assert anonymous.json() == as_author.json()
    assert "email" not in as_author.json()["author"]


@pytest.mark.parametrize("post_id", ["999999", "0", "2147483647", "2147483648", "1" + "0" * 30])
async def test_get_missing_post_is_404(api: Api, post_id: str) -> None:
    response = await api.client.get(f"/posts/{post_id}")
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Post not found"}


async def test_get_post_with_non_integer_id_is_422(api: Api) -> None:
    response = await api.client.get("/posts/abc")
    assert response.status_code == 422


async def test_get_deleted_post_is_404(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers)
    assert (await api.client.delete(f"/posts/{created['id']}", headers=headers)).status_code == 204
    response = await api.client.get(f"/posts/{created['id']}")
    assert response.status_code == 404
    assert response.json() == {"detail": "Post not found"}


# ---------------------------------------------------------------------------- PATCH


async def test_patch_by_author_changes_the_post(api: Api) -> None:
    user, headers = await api.user()
    created = await create_post(api, headers, "Old title", "Old content")

    response = await api.client.patch(
        f"/posts/{created['id']}", json={"title": "New title"}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == POST_KEYS
    assert body["id"] == created["id"]
    assert body["author_id"] == user["id"]
    assert body["title"] == "New title"
    assert body["content"] == "Old content"  # not sent: unchanged
    assert body["created_at"] == created["created_at"]
    assert parse_time(body["updated_at"]) >= parse_time(body["created_at"])
    assert parse_time(body["updated_at"]) >= parse_time(created["updated_at"])
    assert await db_post(api, created["id"]) == {
        "id": created["id"],
        "title": "New title",
        "content": "Old content",
        "author_id": user["id"],
    }

    response = await api.client.patch(
        f"/posts/{created['id']}",
        json={"title": "Third", "content": "漢字 🎉 '); DROP TABLE posts;--"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Third"
    assert response.json()["content"] == "漢字 🎉 '); DROP TABLE posts;--"
    fetched = (await api.client.get(f"/posts/{created['id']}")).json()
    assert fetched["title"] == "Third"
    assert fetched["content"] == "漢字 🎉 '); DROP TABLE posts;--"
    assert fetched["updated_at"] == response.json()["updated_at"]


async def test_patch_with_empty_body_changes_nothing(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers, "Same", "Same content")
    response = await api.client.patch(f"/posts/{created['id']}", json={}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Same"
    assert response.json()["content"] == "Same content"
    row = await db_post(api, created["id"])
    assert row is not None and row["title"] == "Same"


async def test_patch_by_another_user_is_403_and_changes_nothing(api: Api) -> None:
    _, author_h = await api.user()
    _, other_h = await api.user()
    created = await create_post(api, author_h, "Mine", "Mine too")
    response = await api.client.patch(
        f"/posts/{created['id']}", json={"title": "Stolen"}, headers=other_h
    )
    assert response.status_code == 403
    assert isinstance(response.json()["detail"], str)
    row = await db_post(api, created["id"])
    assert row is not None and row["title"] == "Mine"


async def test_patch_by_an_admin_who_is_not_the_author_is_403(api: Api) -> None:
    _, author_h = await api.user()
    _, admin_h = await api.admin()
    created = await create_post(api, author_h, "Mine")
    response = await api.client.patch(
        f"/posts/{created['id']}", json={"title": "Edited by admin"}, headers=admin_h
    )
    assert response.status_code == 403
    row = await db_post(api, created["id"])
    assert row is not None and row["title"] == "Mine"


async def test_patch_anonymous_is_401(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers, "Mine")
    response = await api.client.patch(f"/posts/{created['id']}", json={"title": "x"})
    assert response.status_code == 401
    row = await db_post(api, created["id"])
    assert row is not None and row["title"] == "Mine"


async def test_patch_missing_post_is_404(api: Api) -> None:
    _, headers = await api.user()
    response = await api.client.patch("/posts/999999", json={"title": "x"}, headers=headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Post not found"}


@pytest.mark.parametrize(
    "body",
    [
        {"title": None},
        {"content": None},
        {"title": None, "content": "fine"},
        {"title": ""},
        {"title": "x" * 201},
        {"content": ""},
        {"content": "x" * 100_001},
    ],
    ids=[
        "title-null",
        "content-null",
        "title-null-with-content",
        "title-empty",
        "title-201",
        "content-empty",
        "content-100001",
    ],
)
async def test_patch_invalid_body_is_422(api: Api, body: dict[str, Any]) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers, "Keep", "Keep this")
    response = await api.client.patch(f"/posts/{created['id']}", json=body, headers=headers)
    assert response.status_code == 422, response.text
    row = await db_post(api, created["id"])
    assert row is not None
    assert (row["title"], row["content"]) == ("Keep", "Keep this")


# ---------------------------------------------------------------------------- DELETE


async def test_delete_by_author_is_204(api: Api) -> None:
    _, headers = await api.user()
    keep = await create_post(api, headers, "keep")
    gone = await create_post(api, headers, "gone")
    response = await api.client.delete(f"/posts/{gone['id']}", headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert [row["id"] for row in await db_posts(api)] == [keep["id"]]


async def test_delete_by_admin_is_204(api: Api) -> None:
    _, author_h = await api.user()
    _, admin_h = await api.admin()
    created = await create_post(api, author_h)
    response = await api.client.delete(f"/posts/{created['id']}", headers=admin_h)
    assert response.status_code == 204
    assert await db_posts(api) == []


async def test_delete_by_another_user_is_403(api: Api) -> None:
    _, author_h = await api.user()
    _, other_h = await api.user()
    created = await create_post(api, author_h)
    response = await api.client.delete(f"/posts/{created['id']}", headers=other_h)
    assert response.status_code == 403
    assert isinstance(response.json()["detail"], str)
    assert [row["id"] for row in await db_posts(api)] == [created["id"]]


async def test_delete_anonymous_is_401(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers)
    response = await api.client.delete(f"/posts/{created['id']}")
    assert response.status_code == 401
    assert [row["id"] for row in await db_posts(api)] == [created["id"]]


async def test_delete_missing_post_is_404(api: Api) -> None:
    _, headers = await api.user()
    _, admin_h = await api.admin()
    for who in (headers, admin_h):
        response = await api.client.delete("/posts/999999", headers=who)
        assert response.status_code == 404
        assert response.json() == {"detail": "Post not found"}


async def test_delete_twice_is_404_the_second_time(api: Api) -> None:
    _, headers = await api.user()
    created = await create_post(api, headers)
    assert (await api.client.delete(f"/posts/{created['id']}", headers=headers)).status_code == 204
    response = await api.client.delete(f"/posts/{created['id']}", headers=headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Post not found"}


async def test_deleting_a_user_deletes_their_posts(api: Api) -> None:
    user, headers = await api.user()
    _, other_h = await api.user()
    await create_post(api, headers, "mine 1")
    await create_post(api, headers, "mine 2")
    theirs = await create_post(api, other_h, "theirs")
    response = await api.client.delete(f"/users/{user['id']}", headers=headers)
    assert response.status_code == 204
    assert [row["id"] for row in await db_posts(api)] == [theirs["id"]]
    assert [p["id"] for p in (await api.client.get("/posts")).json()] == [theirs["id"]]
