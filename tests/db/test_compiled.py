"""The data path's statements are compiled once per dialect (`db.statements.Statement`): a
request that was served before compiles nothing and computes no SQLAlchemy cache key, on every
backend. Counted at SQLAlchemy itself: every compiler (`Compiled.__init__`, which any compilation,
cached by the engine or not, goes through) and every cache key (`HasCacheKey`)."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.sql.cache_key import CacheKey, HasCacheKey
from sqlalchemy.sql.compiler import Compiled

from asyncblog.db.statements import Statement
from tests.fixtures.app import Api


@dataclass
class Counts:
    compilations: int = 0
    cache_keys: int = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    """SQLAlchemy's compilations and cache keys, counted for the rest of the test."""
    counts = Counts()
    compiled_init = Compiled.__init__
    generate = HasCacheKey._generate_cache_key

    def counting_init(self: Compiled, *args: Any, **kwargs: Any) -> None:
        counts.compilations += 1
        compiled_init(self, *args, **kwargs)

    def counting_generate(self: HasCacheKey) -> CacheKey | None:
        counts.cache_keys += 1
        return generate(self)

    monkeypatch.setattr(Compiled, "__init__", counting_init)
    monkeypatch.setattr(HasCacheKey, "_generate_cache_key", counting_generate)
    return counts


def forget_compiled_statements() -> int:
    """Empty every `Statement`'s per-dialect cache (they compile again on their next use), so
    that the first request is seen compiling; how many statements there are. Frozen objects
    (`gc.freeze()` of an app started earlier in this process) are unfrozen to be found."""
    gc.unfreeze()
    found = [o for o in gc.get_objects() if isinstance(o, Statement)]
    for statement in found:
        statement._compiled.clear()
    return len(found)


async def test_a_request_served_before_compiles_nothing(api: Api, counts: Counts) -> None:
    """Two identical rounds of data-path requests (the hot reads, a read for a caller, a
    write): the first compiles its statements, the second compiles nothing and makes no cache
    key, and both answer the same. An ORM request does make cache keys (the counter works)."""
    user, auth = await api.user()
    created = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=auth)
    post_id = created.json()["id"]
    requests: list[Callable[[], Awaitable[httpx.Response]]] = [
        lambda: api.client.get(f"/posts/{post_id}"),
        lambda: api.client.get(f"/users/{user['id']}"),
        lambda: api.client.get("/users/me", headers=auth),
        lambda: api.client.get("/transfers", headers=auth),
        lambda: api.client.post("/posts", json={"title": "u", "content": "c"}, headers=auth),
    ]
    assert forget_compiled_statements() > 10

    async def round_of_requests() -> tuple[Counts, list[int]]:
        before = Counts(counts.compilations, counts.cache_keys)
        statuses = [(await request()).status_code for request in requests]
        spent = Counts(
            counts.compilations - before.compilations, counts.cache_keys - before.cache_keys
        )
        return spent, statuses

    first, statuses = await round_of_requests()
    assert statuses == [200, 200, 200, 200, 201]
    assert first.compilations >= len(requests)  # the counter sees the data path compile
    second, statuses = await round_of_requests()
    assert statuses == [200, 200, 200, 200, 201]
    assert second == Counts(compilations=0, cache_keys=0)

    # By contrast, the ORM (the admin's bulk routes) makes a cache key per execution: the
    # counter sees them.
    _, admin = await api.admin()
    body = {"ids": [user["id"]], "values": {"is_active": True}}
    before = counts.cache_keys
    assert (await api.client.patch("/users/bulk", json=body, headers=admin)).status_code == 200
    assert counts.cache_keys > before
