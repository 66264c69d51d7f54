"""Registration, profile changes, deletion and the admin's bulk operations on users."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.db.database import Database
from asyncblog.db.errors import translated
from asyncblog.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PreconditionFailed,
    TooManyRequests,
    Unauthorized,
    UniqueViolation,
)
from asyncblog.models import User
from asyncblog.repositories import UserRepository
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.users import (
    LOGIN,
    delete_user,
    me,
    password_hash,
    private_view,
    register,
    taken,
    update_user,
    user_count,
    user_document,
    user_page,
)
from asyncblog.schemas import BulkUserCreate, UserCreate, UserUpdate, Versioned
from asyncblog.security import AccessClaims, PasswordHasher
from asyncblog.services.auth import INVALID_TOKEN, Caller
from asyncblog.throttle import Throttle, retry_after

USER_NOT_FOUND = "User not found"
NOT_EMPTY = "Balance must be zero to delete the account"


TAKEN = {"username": "Username already registered", "email": "Email already registered"}


def conflict_message(exc: UniqueViolation) -> str:
    """Which unique field a failed INSERT/UPDATE on users collided with."""
    name = exc.constraint
    if name in ("uq_users_username", "users.username"):
        return TAKEN["username"]
    if name in ("uq_users_email", "users.email"):
        return TAKEN["email"]
    return "Username or email already registered"


@dataclass
class BulkOutcome:
    created: list[User] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


class BulkUsers:
    """The admin's bulk operations: the one part still written with an ORM session (bulk
    create relies on SQLAlchemy's insertmanyvalues; see the README)."""

    def __init__(self, session: AsyncSession, hasher: PasswordHasher) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.hasher = hasher

    # ------------------------------------------------------------------ bulk (admin)

    async def bulk_create(self, data: BulkUserCreate) -> BulkOutcome:
        """Create many users at once.

        `abort`: all or nothing; any taken or repeated username/email raises Conflict with the
        indexes. `skip`: create the others and report the skipped indexes. Conflicts are found
        with one query, passwords are hashed with no connection held, and the rows go in with one
        set-based INSERT. A row that a concurrent request took in between makes that INSERT fail;
        then `skip` retries row by row, each in its own savepoint.
        """
        conflicts = await self._conflicts(data.users)
        await self.session.commit()  # do not hold a connection while hashing
        if conflicts and data.on_conflict == "abort":
            raise Conflict("Username or email already registered", conflicts=conflicts)
        # Rows go in sorted by username and email: concurrent imports then take the unique
        # indexes' locks in the same order and wait for each other instead of deadlocking.
        todo = sorted(
            (i for i in range(len(data.users)) if i not in set(conflicts)),
            key=lambda i: (data.users[i].username.lower(), data.users[i].email),
        )
        hashes = await self.hasher.hash_many([data.users[i].password for i in todo])
        rows = [
            {
                "username": data.users[i].username,
                "email": data.users[i].email,
                "hashed_password": hashed,
            }
            for i, hashed in zip(todo, hashes, strict=True)
        ]
        outcome = BulkOutcome(skipped=list(conflicts))
        created: dict[int, User] = {}
        try:
            async with translated(), self.session.begin_nested():
                created = dict(zip(todo, await self.users.bulk_create(rows), strict=True))
        except UniqueViolation:
            if data.on_conflict == "abort":
                await self.session.rollback()
                raced = await self._conflicts(data.users)
                await self.session.rollback()
                raise Conflict(
                    "Username or email already registered", conflicts=raced or sorted(todo)
                ) from None
            for index, row in zip(todo, rows, strict=True):
                try:
                    async with translated(), self.session.begin_nested():
                        created[index] = (await self.users.bulk_create([row]))[0]
                except UniqueViolation:
                    outcome.skipped.append(index)
            outcome.skipped.sort()
        outcome.created = [created[i] for i in sorted(created)]  # in the request's order
        await self.session.commit()
        return outcome

    async def _conflicts(self, users: Sequence[UserCreate]) -> list[int]:
        """Indexes whose username or email is taken in the database or by an earlier entry."""
        taken_names, taken_mails = await self.users.taken(
            (u.username for u in users), (u.email for u in users)
        )
        seen_names: set[str] = set()
        seen_mails: set[str] = set()
        conflicts = []
        for index, user in enumerate(users):
            name = user.username.lower()
            if (
                name in taken_names
                or name in seen_names
                or user.email in taken_mails
                or user.email in seen_mails
            ):
                conflicts.append(index)
            seen_names.add(name)
            seen_mails.add(user.email)
        return conflicts

    async def bulk_set_active(self, ids: Sequence[int], is_active: bool) -> int:
        values = {"is_active": is_active, "version": User.version + 1}
        if not is_active:  # a deactivation ends every token (reactivation does not restore)
            values["token_version"] = User.token_version + 1
        updated = await self.users.bulk_update(ids, values)
        await self.session.commit()
        return updated

    async def bulk_delete(self, ids: Sequence[int]) -> tuple[int, list[int]]:
        """Delete the users that hold no money; (how many went, the ids refused)."""
        deleted, refused = await self.users.delete_empty(ids)
        await self.session.commit()
        return deleted, refused


class Users:
    """One user at a time over the data path, answered as the views' JSON bytes."""

    def __init__(self, db: Database, hasher: PasswordHasher, throttle: Throttle | None = None):
        self.db = db
        self.hasher = hasher
        self.throttle = throttle

    async def register(
        self, data: UserCreate, *, is_admin: bool = False, client: str | None = None
    ) -> Versioned:
        """Create a user. Registrations are counted per client address (429 past the limit),
        and a username or email visibly taken is refused before any hashing (Argon2 costs
        64 MiB and tens of ms: a flood of taken names must not cost that each). Uniqueness is
        still the database's: a concurrent twin gets a 409, not a row. The password is hashed
        before the unit of work: no connection waits on Argon2."""
        if self.throttle is not None and client is not None:
            wait = await self.throttle.registration(client)
            if wait:
                raise TooManyRequests(
                    "Too many registrations; try again later", headers=retry_after(wait)
                )
        async with self.db.reader() as link:
            clash = await taken(link, username=data.username, email=data.email)
        if clash is not None:
            raise Conflict(TAKEN[clash])
        hashed = await self.hasher.hash(data.password)
        try:
            async with self.db.writer() as link:
                return await register(
                    link,
                    username=data.username,
                    email=data.email,
                    hashed_password=hashed,
                    is_admin=is_admin,
                )
        except UniqueViolation as exc:
            raise Conflict(conflict_message(exc)) from None

    async def ensure_admin(self, username: str, email: str, password: str) -> Versioned | None:
        """Create an admin unless the username is taken (then: None). Safe to race."""
        async with self.db.reader() as link:
            if await link.row(LOGIN, username=username) is not None:
                return None
        try:
            return await self.register(
                UserCreate(username=username, email=email, password=password), is_admin=True
            )
        except Conflict:
            return None

    async def me(self, claims: AccessClaims | None) -> Versioned:
        if claims is None or not valid_id(claims.user_id):
            raise Unauthorized(INVALID_TOKEN)
        async with self.db.reader() as link:
            view = await me(
                link,
                user_id=claims.user_id,
                token_version=claims.token_version,
            )
        if view is None:
            raise Unauthorized(INVALID_TOKEN)
        return view

    async def update(
        self, caller: Caller, user_id: int, data: UserUpdate, *, expected: int | None = None
    ) -> Versioned:
        """Change a user; with `expected` (If-Match) only while the row still has that version:
        of two changes sent with the same version exactly one is made, the other gets 412."""
        if caller.id != user_id and not caller.is_admin:
            raise Forbidden("Not allowed to change another user")
        changes = data.model_dump(exclude_unset=True)
        current = changes.pop("current_password", None)
        if "is_active" in changes and not caller.is_admin:
            raise Forbidden("Only an admin may change is_active")
        if caller.id == user_id and ("password" in changes or "email" in changes):
            # a stolen access token alone must not take the account for good
            await self._check_current_password(user_id, current)
        if "password" in changes:  # before the unit of work: no connection waits on Argon2
            changes["hashed_password"] = await self.hasher.hash(changes.pop("password"))
        try:
            async with self.db.writer() as link:
                view = None
                if changes:
                    view = await update_user(link, user_id, changes, expected=expected)
                if view is None:  # nothing to change, or nothing changed: why?
                    view = await private_view(link, user_id)
                    if (
                        view is not None
                        and expected is not None
                        and (changes or view.version != expected)
                    ):
                        raise PreconditionFailed()
        except UniqueViolation as exc:
            raise Conflict(conflict_message(exc)) from None
        if view is None:
            raise NotFound(USER_NOT_FOUND)
        return view

    async def _check_current_password(self, user_id: int, current: str | None) -> None:
        if current is None:
            raise Invalid("current_password is required to change the password or email")
        async with self.db.reader() as link:
            hashed = await password_hash(link, user_id)
        if hashed is None:
            raise NotFound(USER_NOT_FOUND)
        if not await self.hasher.verify(current, hashed):
            raise Forbidden("Current password is incorrect")

    async def delete(self, caller: Caller, user_id: int) -> None:
        """Delete an account whose balance is 0.00 (409 otherwise: money never leaves the
        system by a deletion); its posts go with it, its transfers stay in the ledger."""
        if caller.id != user_id and not caller.is_admin:
            raise Forbidden("Not allowed to delete another user")
        async with self.db.writer() as link:
            deleted = await delete_user(link, user_id)
        if deleted is None:
            raise NotFound(USER_NOT_FOUND)
        if not deleted:
            raise Conflict(NOT_EMPTY)

    async def document(self, user_id: int, caller: Caller | None) -> bytes:
        """The user with its first posts: the private view for that user or an admin."""
        private = caller is not None and (caller.id == user_id or caller.is_admin)
        async with self.db.reader() as link:
            document = await user_document(link, user_id, private=private)
        if document is None:
            raise NotFound(USER_NOT_FOUND)
        return document

    async def page(
        self, *, skip: int, limit: int, after_id: int | None, caller: Caller | None
    ) -> bytes:
        """Public views; private ones for an admin."""
        private = caller is not None and caller.is_admin
        async with self.db.reader() as link:
            return await user_page(link, skip=skip, limit=limit, after_id=after_id, private=private)

    async def count(self) -> int:
        async with self.db.reader() as link:
            return await user_count(link)
