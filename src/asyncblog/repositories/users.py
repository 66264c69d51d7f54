"""Users."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from sqlalchemy import Integer, Select, Table, bindparam, func, or_, select
from sqlalchemy.sql import FromClause

from asyncblog.db.database import Link
from asyncblog.db.json import json_list, json_text, json_view
from asyncblog.db.statements import Statement
from asyncblog.models import Post, User
from asyncblog.repositories.base import Repository, valid_id
from asyncblog.repositories.views import (
    Columns,
    ViewQuery,
    as_dicts,
    columns_of,
    dump,
    renders_json,
)
from asyncblog.schemas import (
    EMBEDDED_POSTS,
    PostView,
    UserPrivate,
    UserPrivateWithPosts,
    UserPublic,
    UserPublicWithPosts,
)


class UserRepository(Repository[User]):
    model = User

    async def get_by_username(self, username: str) -> User | None:
        # The column's collation makes this comparison case-insensitive on every backend.
        return await self.session.scalar(select(User).where(User.username == username))

    async def taken(
        self, usernames: Iterable[str], emails: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """Which of these usernames (lower-cased) and emails already belong to someone."""
        names, mails = list(set(usernames)), list(set(emails))
        if not names and not mails:
            return set(), set()
        rows = await self.session.execute(
            select(User.username, User.email).where(
                or_(User.username.in_(names), User.email.in_(mails))
            )
        )
        taken_names: set[str] = set()
        taken_mails: set[str] = set()
        for username, email in rows:
            taken_names.add(username.lower())
            taken_mails.add(email)
        return taken_names, taken_mails


# --------------------------------------------------------------------------- the data path

_users = cast(Table, User.__table__)
_posts = cast(Table, Post.__table__)


def _user_document(view: type[UserPublic]) -> Statement:
    def build() -> Select[Any]:
        uid = bindparam("user_id", type_=Integer)
        first = (
            select(*[_posts.c[name] for name in PostView.model_fields])
            .where(_posts.c.author_id == uid)
            .order_by(_posts.c.id)
            .limit(EMBEDDED_POSTS)
            .subquery("p")
        )
        posts = select(
            json_list(json_view(PostView, columns_of(PostView, first)), first.c.id)
        ).scalar_subquery()
        total = (
            select(func.count()).select_from(_posts).where(_posts.c.author_id == uid)
        ).scalar_subquery()
        base = {name: _users.c[name] for name in view.model_fields if name in _users.c}
        document = json_view(view, {**base, "posts": posts, "posts_total": total})
        return select(json_text(document)).where(_users.c.id == uid)

    return Statement(build)


def _user_row(view: type[UserPublic]) -> Statement:
    def build() -> Select[Any]:
        uid = bindparam("user_id", type_=Integer)
        total = (
            select(func.count()).select_from(_posts).where(_posts.c.author_id == uid)
        ).scalar_subquery()
        names = [n for n in view.model_fields if n in _users.c]
        return select(*[_users.c[n] for n in names], total.label("posts_total")).where(
            _users.c.id == uid
        )

    return Statement(build)


_FIRST_POSTS = Statement(
    lambda: (
        select(*[_posts.c[name] for name in PostView.model_fields])
        .where(_posts.c.author_id == bindparam("user_id", type_=Integer))
        .order_by(_posts.c.id)
        .limit(EMBEDDED_POSTS)
    )
)
_DOCUMENTS = {
    False: (_user_document(UserPublicWithPosts), _user_row(UserPublicWithPosts)),
    True: (_user_document(UserPrivateWithPosts), _user_row(UserPrivateWithPosts)),
}


async def user_document(link: Link, user_id: int, *, private: bool) -> bytes | None:
    """The user's public (or private) view with its first posts and how many it has."""
    if not valid_id(user_id):
        return None
    as_json, as_row = _DOCUMENTS[private]
    if renders_json(link):
        text: str | None = await link.value(as_json, user_id=user_id)
        return text.encode() if text is not None else None
    row = await link.row(as_row, user_id=user_id)
    if row is None:
        return None
    view = UserPrivateWithPosts if private else UserPublicWithPosts
    names = [n for n in view.model_fields if n in _users.c]
    values = dict(zip([*names, "posts_total"], row, strict=True))
    posts = await link.rows(_FIRST_POSTS, user_id=user_id)
    values["posts"] = as_dicts(list(PostView.model_fields), posts)
    return dump(view, values)


def _page(view: type[UserPublic]) -> ViewQuery:
    def source() -> tuple[Select[Any], Callable[[FromClause], Columns]]:
        inner = (
            select(*[_users.c[name] for name in view.model_fields])
            .where(_users.c.id > bindparam("after_id", type_=Integer))
            .order_by(_users.c.id)
            .limit(bindparam("limit", type_=Integer))
            .offset(bindparam("skip", type_=Integer))
        )
        return inner, lambda sub: columns_of(view, sub)

    return ViewQuery(view, source, many=True)


_PAGES = {False: _page(UserPublic), True: _page(UserPrivate)}
_COUNT = Statement(lambda: select(func.count()).select_from(_users))
CALLER = Statement(
    lambda: select(_users.c.is_active, _users.c.is_admin, _users.c.hashed_password).where(
        _users.c.id == bindparam("user_id", type_=Integer)
    )
)


async def user_page(
    link: Link, *, skip: int, limit: int, after_id: int | None, private: bool
) -> bytes:
    page = await _PAGES[private].fetch(link, after_id=after_id or 0, skip=skip, limit=limit)
    assert page is not None
    return page


async def user_count(link: Link) -> int:
    return int(await link.value(_COUNT) or 0)
