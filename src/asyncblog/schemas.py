"""Request bodies and response views (pydantic v2). Field bounds are the contract's."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from asyncblog.db.types import CONTENT_MAX, EMAIL_MAX, MAX_ID, TITLE_MAX, USERNAME_MAX

MAX_AMOUNT = Decimal("1000000000.00")
BULK_MAX = 1000

USERNAME_PATTERN = rf"[A-Za-z0-9_.\-]{{3,{USERNAME_MAX}}}"
Username = Annotated[
    str,
    StringConstraints(min_length=3, max_length=USERNAME_MAX, pattern=rf"^{USERNAME_PATTERN}$"),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
Email = Annotated[
    EmailStr, Field(max_length=EMAIL_MAX), AfterValidator(lambda value: value.lower())
]


def _no_nul(value: str) -> str:
    # PostgreSQL's text cannot hold U+0000; refuse it everywhere alike rather than per backend.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


Title = Annotated[
    str, StringConstraints(min_length=1, max_length=TITLE_MAX), AfterValidator(_no_nul)
]
Content = Annotated[
    str, StringConstraints(min_length=1, max_length=CONTENT_MAX), AfterValidator(_no_nul)
]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# Every time in a response: UTC, microseconds, "Z" (PostgreSQL renders the same text in
# asyncblog.repositories.documents).
UTC_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
Timestamp = Annotated[
    dt.datetime,
    PlainSerializer(
        lambda value: value.astimezone(dt.UTC).strftime(UTC_FORMAT),
        return_type=str,
        when_used="json",
    ),
]
Amount = Annotated[
    Decimal,
    Field(gt=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2, allow_inf_nan=False),
    AfterValidator(lambda value: value.quantize(Decimal("0.01"))),
]


class _NoNulls(BaseModel):
    """A partial update: fields may be left out, but an explicit null is refused."""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [
                key for key, value in data.items() if value is None and key in cls.model_fields
            ]
            if nulls:
                raise ValueError(f"{', '.join(sorted(nulls))} may not be null")
        return data


# --------------------------------------------------------------------------- users


class UserCreate(BaseModel):
    username: Username
    email: Email
    password: Password


class UserUpdate(_NoNulls):
    username: Username | None = None
    email: Email | None = None
    password: Password | None = None
    is_active: bool | None = None
    # Required when users change their own password or email (checked by the service, which
    # knows who is asking); never stored.
    current_password: Annotated[str, StringConstraints(max_length=128)] | None = None


class ORMView(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserPublic(ORMView):
    id: int
    username: str
    is_active: bool
    created_at: Timestamp


class UserPrivate(UserPublic):
    email: str
    balance: Decimal
    is_admin: bool
    version: int


class PostView(ORMView):
    id: int
    title: str
    content: str
    author_id: int
    created_at: Timestamp
    updated_at: Timestamp
    version: int


# GET /users/{id} embeds the user's first posts, so its answer stays bounded however many the
# user writes; the rest come from GET /posts?author_id=...&after_id=...
EMBEDDED_POSTS = 100


class UserPublicWithPosts(UserPublic):
    posts: list[PostView]
    posts_total: int


class UserPrivateWithPosts(UserPrivate):
    posts: list[PostView]
    posts_total: int


class Versioned(NamedTuple):
    """One row's view as the JSON bytes of the answer, with the row's version (its ETag)."""

    body: bytes
    version: int


class Count(BaseModel):
    count: int


# --------------------------------------------------------------------------- bulk


class BulkUserCreate(BaseModel):
    users: Annotated[list[UserCreate], Field(min_length=1, max_length=BULK_MAX)]
    on_conflict: Literal["abort", "skip"] = "abort"


class BulkCreated(BaseModel):
    created: list[UserPrivate]
    skipped: list[int]


class BulkConflict(BaseModel):
    detail: str
    conflicts: list[int]


class BulkUserValues(BaseModel):
    model_config = ConfigDict(extra="forbid")
    is_active: bool


class BulkUserUpdate(BaseModel):
    ids: Annotated[list[Id], Field(min_length=1, max_length=BULK_MAX)]
    values: BulkUserValues


class BulkUserDelete(BaseModel):
    ids: Annotated[list[Id], Field(min_length=1, max_length=BULK_MAX)]


class BulkUpdated(BaseModel):
    updated: int


class BulkDeleted(BaseModel):
    deleted: int
    refused: list[int]  # ids of users that hold money: not deleted


# --------------------------------------------------------------------------- posts


class PostCreate(BaseModel):
    title: Title
    content: Content


class PostUpdate(_NoNulls):
    title: Title | None = None
    content: Content | None = None


class PostWithAuthor(PostView):
    author: UserPublic


# --------------------------------------------------------------------------- money


class TransferCreate(BaseModel):
    to_user_id: Id
    amount: Amount


class Deposit(BaseModel):
    amount: Amount


class TransferView(ORMView):
    id: int
    from_user_id: int | None
    to_user_id: int
    amount: Decimal
    created_at: Timestamp


# --------------------------------------------------------------------------- auth and operations


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int  # seconds the access token is valid
    refresh_token: str


RefreshTokenText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class RefreshRequest(BaseModel):
    refresh_token: RefreshTokenText


class LogoutRequest(BaseModel):
    refresh_token: RefreshTokenText | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> LogoutRequest:
        if self.refresh_token is None and not self.all:
            raise ValueError("send the refresh_token of the login to end, or all: true")
        return self


class Detail(BaseModel):
    detail: str


class ErrorDetail(BaseModel):
    """An error: a sentence, or (422 for a malformed request) FastAPI's list of problems."""

    detail: str | list[dict[str, Any]]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    # with read replicas: "host:port" -> "ok" | "lagging" | "down" (never a reason for 503)
    replicas: dict[str, str] | None = None
