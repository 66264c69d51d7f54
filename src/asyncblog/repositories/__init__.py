"""Data access: the data path's statements per aggregate (users, posts, transfers, views),
and the ORM repository of the admin's bulk operations."""

from asyncblog.repositories.base import Repository
from asyncblog.repositories.users import UserRepository

__all__ = ["Repository", "UserRepository"]
