"""Refresh tokens in families (one family per login), over the data path.

A refresh spends the token it was given with one conditional UPDATE on the row it locked, so of
concurrent refreshes with one token at most one wins; a spent token presented again ends its
family, in a transaction that commits (the 401 is raised after it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    delete,
    false,
    insert,
    select,
    true,
    update,
)

from asyncblog.db.database import Writer
from asyncblog.db.statements import Statement
from asyncblog.db.types import UTCDateTime
from asyncblog.models import RefreshToken, User
from asyncblog.repositories.base import param, touched, valid_id
from asyncblog.security import new_family, new_refresh_token

_tokens = cast(Table, RefreshToken.__table__)
_users = cast(Table, User.__table__)


_ISSUE = Statement(
    lambda: insert(_tokens).values(
        user_id=param("user_id", Integer),
        family=param("family", String),
        digest=param("digest", String),
        token_version=param("token_version", Integer),
        expires_at=param("expires_at", UTCDateTime()),
    )
)
_FIND = Statement(
    lambda: (
        select(
            _tokens.c.id,
            _tokens.c.user_id,
            _tokens.c.family,
            _tokens.c.token_version,
            _tokens.c.spent,
            _tokens.c.expires_at,
        )
        .where(_tokens.c.digest == param("digest", String))
        .with_for_update()
    )
)
_SPEND = Statement(
    lambda: (
        update(_tokens)
        .where(_tokens.c.id == param("id", Integer), _tokens.c.spent == false())
        .values(spent=true())
    )
)
_HOLDER = Statement(
    lambda: select(_users.c.is_active, _users.c.hashed_password, _users.c.token_version).where(
        _users.c.id == param("user_id", Integer)
    )
)
_END_FAMILY = Statement(lambda: delete(_tokens).where(_tokens.c.family == param("family", String)))
_FAMILY_OF = Statement(
    lambda: select(_tokens.c.family).where(
        _tokens.c.digest == param("digest", String), _tokens.c.user_id == param("user_id", Integer)
    )
)
_END_EVERY_LOGIN = Statement(
    lambda: (
        update(_users)
        .where(_users.c.id == param("user_id", Integer))
        .values(token_version=_users.c.token_version + 1, **touched(_users))
    )
)
_FORGET_ALL = Statement(
    lambda: delete(_tokens).where(_tokens.c.user_id == param("user_id", Integer))
)


@dataclass(frozen=True, slots=True)
class Renewed:
    """A refresh that won: the user's state for the new access token, and the next refresh
    token of the family."""

    user_id: int
    hashed_password: str
    token_version: int
    refresh_token: str


async def start_family(
    link: Writer, *, user_id: int, token_version: int, lifetime: dt.timedelta
) -> str:
    """A new login: a new family and its first refresh token (returned; only its digest is
    stored)."""
    return await _issue(link, new_family(), user_id, token_version, lifetime)


async def _issue(
    link: Writer, family: str, user_id: int, token_version: int, lifetime: dt.timedelta
) -> str:
    token, digest = new_refresh_token()
    await link.count(
        _ISSUE,
        user_id=user_id,
        family=family,
        digest=digest,
        token_version=token_version,
        expires_at=dt.datetime.now(dt.UTC) + lifetime,
    )
    return token


async def renew(link: Writer, *, digest: str, lifetime: dt.timedelta) -> Renewed | None:
    """Spend the refresh token with this digest and issue the next of its family. None: the
    token is unknown, expired, ended (the user's token version moved, the user is inactive or
    gone), or was spent already: then its whole family ends, committed."""
    async with link.transaction():
        found = await link.row(_FIND, digest=digest)
        if found is None:
            return None
        token_id, user_id, family, token_version, spent, expires_at = found
        if spent:  # presented again: stolen, or a race lost; either way the login ends
            await link.count(_END_FAMILY, family=family)
            return None
        if expires_at <= dt.datetime.now(dt.UTC):
            return None
        if await link.count(_SPEND, id=token_id) != 1:
            return None
        holder = await link.row(_HOLDER, user_id=user_id)
        if holder is None or not holder[0] or holder[2] != token_version:
            return None
        token = await _issue(link, family, user_id, token_version, lifetime)
        return Renewed(user_id, holder[1], token_version, token)


async def end_login(link: Writer, *, user_id: int, digest: str) -> None:
    """End the login (the family) this refresh token of the user belongs to, if it does."""
    async with link.transaction():
        family = await link.value(_FAMILY_OF, digest=digest, user_id=user_id)
        if family is not None:
            await link.count(_END_FAMILY, family=family)


async def end_every_login(link: Writer, *, user_id: int) -> None:
    """End every token of the user: its token version moves (every access token and family
    issued before stops holding) and its refresh tokens are forgotten."""
    if not valid_id(user_id):
        return
    async with link.transaction():
        await link.count(_END_EVERY_LOGIN, user_id=user_id)
        await link.count(_FORGET_ALL, user_id=user_id)
