"""The HTTP layer: app factory, dependencies, and one router per resource."""

from asyncblog.api.app import create_app

__all__ = ["create_app"]
