"""Posts: the data path's statements for reading and writing them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Select,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.sql import FromClause

from asyncblog.db.database import Reader, Writer
from asyncblog.db.json import json_view
from asyncblog.db.statements import Statement
from asyncblog.models import Post, User
from asyncblog.repositories.base import changes_of, touched, valid_id, version_matches
from asyncblog.repositories.users import holds_token
from asyncblog.repositories.views import (
    Columns,
    ViewQuery,
    columns_of,
    dump,
    renders_json,
    versioned,
    versioned_columns,
)
from asyncblog.schemas import PostView, PostWithAuthor, UserPublic, Versioned

_users = cast(Table, User.__table__)
_posts = cast(Table, Post.__table__)


_POST_FIELDS = list(PostView.model_fields)
_AUTHOR_FIELDS = list(UserPublic.model_fields)


def _view_columns(as_json: bool) -> list[Any]:
    return versioned_columns(PostView, _posts, as_json)


def _versioned(row: tuple[Any, ...] | None, as_json: bool) -> Versioned | None:
    return versioned(PostView, row, as_json)


def _with_author() -> tuple[Select[Any], Callable[[FromClause], Columns]]:
    inner = (
        select(
            *[_posts.c[name] for name in _POST_FIELDS],
            *[_users.c[name].label(f"au_{name}") for name in _AUTHOR_FIELDS],
        )
        .join_from(_posts, _users, _posts.c.author_id == _users.c.id)
        .where(_posts.c.id == bindparam("post_id", type_=Integer))
    )

    def columns(sub: FromClause) -> Columns:
        author = {name: sub.c[f"au_{name}"] for name in _AUTHOR_FIELDS}
        return {**columns_of(PostView, sub), "author": json_view(UserPublic, author)}

    return inner, columns


class _WithAuthor(ViewQuery):
    """MariaDB renders the nested author in Python from the flat row."""

    async def rendered(self, link: Reader, params: dict[str, Any]) -> bytes | None:
        row = await link.row(_WITH_AUTHOR_ROW, **params)
        if row is None:
            return None
        values = dict(zip(_POST_FIELDS, row, strict=False))
        values["author"] = dict(zip(_AUTHOR_FIELDS, row[len(_POST_FIELDS) :], strict=True))
        return dump(PostWithAuthor, values)


_WITH_AUTHOR = _WithAuthor(PostWithAuthor, _with_author, many=False)
_WITH_AUTHOR_ROW = Statement(lambda: _with_author()[0])


def _page(by_author: bool) -> ViewQuery:
    def source() -> tuple[Select[Any], Callable[[FromClause], Columns]]:
        inner = (
            select(*[_posts.c[name] for name in _POST_FIELDS])
            .where(_posts.c.id > bindparam("after_id", type_=Integer))
            .order_by(_posts.c.id)
            .limit(bindparam("limit", type_=Integer))
            .offset(bindparam("skip", type_=Integer))
        )
        if by_author:
            inner = inner.where(_posts.c.author_id == bindparam("author_id", type_=Integer))
        return inner, lambda sub: columns_of(PostView, sub)

    return ViewQuery(PostView, source, many=True)


_PAGES = {False: _page(by_author=False), True: _page(by_author=True)}


def _create(as_json: bool) -> Statement:
    """INSERT ... SELECT from the caller's row, only while the caller is active and its token's
    password stamp still matches: the caller's check, the write and the view in one statement.
    No row back: the caller is not (or no longer) allowed."""

    def build() -> Any:
        author = select(
            bindparam("title", type_=String),
            bindparam("content", type_=String),
            _users.c.id,
        ).where(_users.c.id == bindparam("author_id", type_=Integer), holds_token(_users))
        stmt = insert(_posts).from_select(["title", "content", "author_id"], author)
        return stmt.returning(*_view_columns(as_json))

    return Statement(build)


_CREATE = {True: _create(as_json=True), False: _create(as_json=False)}


async def post_with_author(link: Reader, post_id: int) -> bytes | None:
    if not valid_id(post_id):
        return None
    return await _WITH_AUTHOR.fetch(link, post_id=post_id)


async def post_page(
    link: Reader, *, author_id: int | None, skip: int, limit: int, after_id: int | None
) -> bytes:
    params: dict[str, Any] = {"after_id": after_id or 0, "skip": skip, "limit": limit}
    if author_id is not None:
        params["author_id"] = author_id
    page = await _PAGES[author_id is not None].fetch(link, **params)
    assert page is not None
    return page


async def create_post(
    link: Writer,
    *,
    author_id: int,
    token_version: int,
    title: str,
    content: str,
) -> Versioned | None:
    """The new post's view, or None when the author may not write (see `_create`)."""
    as_json = renders_json(link)
    row = await link.row(
        _CREATE[as_json],
        author_id=author_id,
        token_version=token_version,
        title=title,
        content=content,
    )
    return _versioned(row, as_json)


_AUTHOR_OF = Statement(
    lambda: select(_posts.c.author_id).where(_posts.c.id == bindparam("post_id", type_=Integer))
)


def _edit() -> Any:
    """Change a post of this author (a NULL parameter keeps the column), only while it has the
    `expected` version when one is given (If-Match): the check and the write in one statement."""
    values, changed = changes_of(_posts, {"title": String, "content": String})
    return (
        update(_posts)
        .where(
            _posts.c.id == bindparam("post_id", type_=Integer),
            _posts.c.author_id == bindparam("author_id", type_=Integer),
            version_matches(_posts),
        )
        .ordered_values(*touched(_posts, changed).items(), *values.items())
    )


_EDIT = Statement(_edit)
_EDIT_RETURNING = Statement(lambda: _edit().returning(*_view_columns(as_json=True)))


def _by_id(as_json: bool) -> Statement:
    return Statement(
        lambda: select(*_view_columns(as_json)).where(
            _posts.c.id == bindparam("post_id", type_=Integer)
        )
    )


_POST_ROW = {True: _by_id(as_json=True), False: _by_id(as_json=False)}
_DELETE = Statement(
    lambda: delete(_posts).where(_posts.c.id == bindparam("post_id", type_=Integer))
)


async def author_of(link: Reader, post_id: int) -> int | None:
    if not valid_id(post_id):
        return None
    author: int | None = await link.value(_AUTHOR_OF, post_id=post_id)
    return author


async def post_view(link: Reader, post_id: int) -> Versioned | None:
    as_json = renders_json(link)
    return _versioned(await link.row(_POST_ROW[as_json], post_id=post_id), as_json)


async def edit_post(
    link: Writer,
    *,
    post_id: int,
    author_id: int,
    title: str | None,
    content: str | None,
    expected: int | None = None,
) -> Versioned | None:
    """The changed post's view; None when it is not this author's post (or not there), or
    not at the `expected` version."""
    if not valid_id(post_id):
        return None
    params = {
        "post_id": post_id,
        "author_id": author_id,
        "title": title,
        "content": content,
        "expected": expected,
    }
    if renders_json(link):
        return _versioned(await link.row(_EDIT_RETURNING, **params), True)
    async with link.transaction():
        if await link.count(_EDIT, **params) == 0:
            return None
        return await post_view(link, post_id)


async def delete_post(link: Writer, post_id: int) -> bool:
    return valid_id(post_id) and await link.count(_DELETE, post_id=post_id) == 1
