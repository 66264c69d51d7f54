"""What the app holds for its lifetime: the database and the security helpers."""

from __future__ import annotations

from dataclasses import dataclass

from asyncblog.config import Settings
from asyncblog.db.database import Database
from asyncblog.security import PasswordHasher, TokenCodec
from asyncblog.throttle import Throttle


@dataclass
class AppState:
    settings: Settings
    db: Database
    hasher: PasswordHasher
    tokens: TokenCodec
    throttle: Throttle

    @classmethod
    def build(cls, settings: Settings, db: Database | None = None) -> AppState:
        db = db or Database.from_settings(settings)
        return cls(
            settings=settings,
            db=db,
            hasher=PasswordHasher(settings),
            tokens=TokenCodec.from_settings(settings),
            throttle=Throttle.from_settings(settings, db),
        )
