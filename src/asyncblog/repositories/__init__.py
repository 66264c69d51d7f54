"""Data access: a generic async repository and one repository per aggregate."""

from asyncblog.repositories.base import Repository
from asyncblog.repositories.posts import PostRepository
from asyncblog.repositories.users import UserRepository

__all__ = ["PostRepository", "Repository", "UserRepository"]
