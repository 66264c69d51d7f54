"""Users."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_, select

from asyncblog.models import User
from asyncblog.repositories.base import Repository


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
