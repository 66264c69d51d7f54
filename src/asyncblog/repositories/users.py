"""Users."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql import FromClause

from asyncblog.db.database import Reader, Writer
from asyncblog.db.json import json_list, json_text, json_view
from asyncblog.db.statements import Statement
from asyncblog.models import Post, User
from asyncblog.repositories.base import (
    Repository,
    changes_of,
    touched,
    valid_id,
    version_matches,
)
from asyncblog.repositories.views import (
    Columns,
    ViewQuery,
    as_dicts,
    columns_of,
    dump,
    renders_json,
    versioned,
    versioned_columns,
)
from asyncblog.schemas import (
    EMBEDDED_POSTS,
    PostView,
    UserPrivate,
    UserPrivateWithPosts,
    UserPublic,
    UserPublicWithPosts,
    Versioned,
)


class UserRepository(Repository[User]):
    model = User

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

    async def delete_empty(self, ids: Iterable[int]) -> tuple[int, list[int]]:
        """Delete the users among `ids` whose balance is 0.00; the others (holding money) are
        refused. Their rows are locked first, in id order as a transfer locks them, so no
        transfer can pay into a user between the check and the DELETE. Returns (how many were
        deleted, the refused ids)."""
        wanted = sorted({i for i in ids if valid_id(i)})
        if not wanted:
            return 0, []
        rows = await self.session.execute(
            select(User.id, User.balance)
            .where(User.id.in_(wanted))
            .order_by(User.id)
            .with_for_update()
        )
        empty: list[int] = []
        refused: list[int] = []
        for user_id, balance in rows:
            (refused if balance != 0 else empty).append(user_id)
        if not empty:
            return 0, refused
        result = cast(
            CursorResult[Any],
            await self.session.execute(
                delete(User).where(User.id.in_(empty), User.balance == 0),
                execution_options={"synchronize_session": False},
            ),
        )
        return int(result.rowcount), refused


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


async def user_document(link: Reader, user_id: int, *, private: bool) -> bytes | None:
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
    lambda: select(_users.c.is_active, _users.c.is_admin, _users.c.token_version).where(
        _users.c.id == bindparam("user_id", type_=Integer)
    )
)


def holds_token(users: FromClause) -> ColumnElement[bool]:
    """The access token's user is active and the token still holds: the token version it
    carries (`:token_version`) is the user's. Statements that act for the caller check it in
    the same statement."""
    return and_(
        users.c.is_active == true(),
        users.c.token_version == bindparam("token_version", type_=Integer),
    )


async def user_page(
    link: Reader, *, skip: int, limit: int, after_id: int | None, private: bool
) -> bytes:
    page = await _PAGES[private].fetch(link, after_id=after_id or 0, skip=skip, limit=limit)
    assert page is not None
    return page


async def user_count(link: Reader) -> int:
    return int(await link.value(_COUNT) or 0)


# --------------------------------------------------------------------------- writes


def _private_columns(as_json: bool) -> list[Any]:
    return versioned_columns(UserPrivate, _users, as_json)


def _private_returning(stmt: Any, as_json: bool) -> Any:
    return stmt.returning(*_private_columns(as_json))


def _register(as_json: bool) -> Statement:
    def build() -> Any:
        stmt = insert(_users).values(
            username=bindparam("username", type_=String),
            email=bindparam("email", type_=String),
            hashed_password=bindparam("hashed_password", type_=String),
            is_admin=bindparam("is_admin", type_=Boolean),
        )
        return _private_returning(stmt, as_json)

    return Statement(build)


_REGISTER = {True: _register(as_json=True), False: _register(as_json=False)}


def _private_view(row: tuple[Any, ...] | None, as_json: bool) -> Versioned | None:
    return versioned(UserPrivate, row, as_json)


async def register(
    link: Writer, *, username: str, email: str, hashed_password: str, is_admin: bool
) -> Versioned:
    """INSERT the user and return its private view; a taken name is UniqueViolation."""
    as_json = renders_json(link)
    row = await link.row(
        _REGISTER[as_json],
        username=username,
        email=email,
        hashed_password=hashed_password,
        is_admin=is_admin,
    )
    view = _private_view(row, as_json)
    assert view is not None
    return view


_TAKEN = Statement(
    lambda: select(_users.c.username, _users.c.email).where(
        or_(
            _users.c.username == bindparam("username", type_=String),
            _users.c.email == bindparam("email", type_=String),
        )
    )
)


async def taken(link: Reader, *, username: str, email: str) -> str | None:
    """Which of this username (case-insensitively) and email someone already has: "username",
    "email", or None. What is visible now; the unique constraints still decide a race."""
    rows = await link.rows(_TAKEN, username=username, email=email)
    if any(row[0].lower() == username.lower() for row in rows):
        return "username"
    return "email" if rows else None


LOGIN = Statement(
    lambda: select(
        _users.c.id, _users.c.hashed_password, _users.c.is_active, _users.c.token_version
    ).where(
        # the column's collation makes this comparison case-insensitive on every backend
        _users.c.username == bindparam("username", type_=String)
    )
)


def _me(as_json: bool) -> Statement:
    """The private view of the token's user while it is active and the token's stamp holds."""

    def build() -> Any:
        return select(*_private_columns(as_json)).where(
            _users.c.id == bindparam("user_id", type_=Integer), holds_token(_users)
        )

    return Statement(build)


_ME = {True: _me(as_json=True), False: _me(as_json=False)}


async def me(link: Reader, *, user_id: int, token_version: int) -> Versioned | None:
    as_json = renders_json(link)
    row = await link.row(_ME[as_json], user_id=user_id, token_version=token_version)
    return _private_view(row, as_json)


def _private_by_id(as_json: bool) -> Statement:
    def build() -> Any:
        return select(*_private_columns(as_json)).where(
            _users.c.id == bindparam("user_id", type_=Integer)
        )

    return Statement(build)


_PRIVATE = {True: _private_by_id(as_json=True), False: _private_by_id(as_json=False)}


def _update() -> Any:
    """Every changeable field at once: a NULL parameter keeps the column as it is. With an
    `expected` version (If-Match) the row changes only while it still has that version: the
    check and the write are one statement."""
    values, changed = changes_of(
        _users,
        {"username": String, "email": String, "hashed_password": String, "is_active": Boolean},
    )
    return (
        update(_users)
        .where(_users.c.id == bindparam("user_id", type_=Integer), version_matches(_users))
        .ordered_values(
            *touched(_users, changed).items(), ("token_version", _ends_tokens()), *values.items()
        )
    )


def _ends_tokens() -> ColumnElement[int]:
    """A new password or a deactivation ends every token issued before (the user's token
    version moves; reactivating does not move it back)."""
    new_password = bindparam("hashed_password", type_=String).is_not(None)
    deactivated = and_(
        bindparam("is_active", type_=Boolean) == false(), _users.c.is_active == true()
    )
    return _users.c.token_version + case((or_(new_password, deactivated), 1), else_=0)


_UPDATE = Statement(_update)
_UPDATE_RETURNING = Statement(lambda: _private_returning(_update(), as_json=True))
# Only an empty account goes: money never leaves the system by a deletion. The balance is
# checked by the DELETE itself, on the row it locks, so a transfer that holds the lock first
# (and pays in) makes it delete nothing.
_DELETE = Statement(
    lambda: delete(_users).where(
        _users.c.id == bindparam("user_id", type_=Integer), _users.c.balance == 0
    )
)
_BALANCE = Statement(
    lambda: select(_users.c.balance).where(_users.c.id == bindparam("user_id", type_=Integer))
)


_REHASH = Statement(
    lambda: (
        update(_users)
        .where(
            _users.c.id == bindparam("user_id", type_=Integer),
            _users.c.hashed_password == bindparam("old", type_=String),
        )
        .values(hashed_password=bindparam("new", type_=String), **touched(_users))
    )
)


async def rehash(link: Writer, *, user_id: int, old: str, new: str) -> None:
    """Store a hash of the same password made with the current Argon2 parameters, unless the
    password changed meanwhile. Tokens stay valid: they carry the token version, not the hash."""
    await link.count(_REHASH, user_id=user_id, old=old, new=new)


_PASSWORD_HASH = Statement(
    lambda: select(_users.c.hashed_password).where(
        _users.c.id == bindparam("user_id", type_=Integer)
    )
)


async def password_hash(link: Reader, user_id: int) -> str | None:
    if not valid_id(user_id):
        return None
    hashed: str | None = await link.value(_PASSWORD_HASH, user_id=user_id)
    return hashed


async def private_view(link: Reader, user_id: int) -> Versioned | None:
    if not valid_id(user_id):
        return None
    as_json = renders_json(link)
    return _private_view(await link.row(_PRIVATE[as_json], user_id=user_id), as_json)


async def update_user(
    link: Writer, user_id: int, changes: dict[str, Any], *, expected: int | None = None
) -> Versioned | None:
    """Apply `changes` (username, email, hashed_password, is_active) in one UPDATE, if the row
    still has the `expected` version (None: any), and return the private view (MariaDB, without
    UPDATE ... RETURNING: a SELECT after it); None: no such user, or another version."""
    if not valid_id(user_id):
        return None
    params = {name: changes.get(name) for name in ("username", "email", "hashed_password")}
    params["is_active"] = changes.get("is_active")
    params["expected"] = expected
    if renders_json(link):
        return _private_view(await link.row(_UPDATE_RETURNING, user_id=user_id, **params), True)
    async with link.transaction():
        if await link.count(_UPDATE, user_id=user_id, **params) == 0:
            return None
        return await private_view(link, user_id)


async def delete_user(link: Writer, user_id: int) -> bool | None:
    """Delete an empty account: True; False: it holds money; None: no such user. (Why nothing
    was deleted is read after the DELETE: it only names the answer.)"""
    if not valid_id(user_id):
        return None
    if await link.count(_DELETE, user_id=user_id) == 1:
        return True
    return False if await link.value(_BALANCE, user_id=user_id) is not None else None
