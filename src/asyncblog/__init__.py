"""asyncblog: users, posts and money transfers over FastAPI and async SQLAlchemy."""

__version__ = "0.1.0"
